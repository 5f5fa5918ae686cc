"""Benchmark of the toy-model engine: throughput, achieved GFLOP/s vs a plain matmul, peak memory.

For each model count (default 10 and 100) a FRESH subprocess trains one teacher epoch and one
distillation epoch (all four student arms) on `--examples` examples per epoch, and reports:
  - model-epochs per second (one model-epoch = one network seeing 60,000 examples once),
  - achieved GFLOP/s of the useful training arithmetic (forward + weight/input gradients of
    every model, plus the teachers' forward on the distillation batches; of the last layer only
    the logits each loss reads: see useful_flops),
  - the same machine's fp32 matmul rate, measured in the same child just before
    ((1024 x 784) @ (784 x 1024), the shape of one first layer), and the ratio,
  - peak resident memory (ru_maxrss of that child: includes torch, MNIST and everything),
    and peak CUDA memory on a GPU.
With --paper (default on CUDA) it also runs the full paper experiment (100 models, 5 + 5
epochs, all six arms), records per-arm accuracy with 95% CIs and the wall time, and checks
each arm against the public script's 100-model CIs (docs/reference.md section 2).

    python benchmarks/bench_toy.py                              # CPU, writes benchmarks/results/toy_cpu.json
    python benchmarks/bench_toy.py --device cuda --models 10,100   # the GPU entry (+ paper run)
    python benchmarks/bench_toy.py --fast-matmul bf16 --out benchmarks/results/toy_cpu_bf16.json
                                    # the CPU bf16 engine (HandMLPBf16), also read against the bf16 matmul rate
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _ensure_importable() -> None:
    """Let `sublim.toymodels` import from a bare checkout too (e.g. a GPU box without `pip install -e .`):
    the areas live in top-level folders that pyproject maps under the `sublim` namespace."""
    try:
        import sublim.toymodels  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
        import sublim

        if str(ROOT) not in sublim.__path__:
            sublim.__path__.append(str(ROOT))


_ensure_importable()
# The public script, 100 models on one H200 (mean %, 95% half-width %); docs/reference.md section 2.
PUBLIC_100 = {"reference": (10.0, 0.5), "teacher": (94.3, 0.04), "student_aux": (53.8, 2.2),
              "student_all": (91.3, 0.2), "cross_aux": (10.6, 1.1), "cross_all": (74.2, 1.0)}
PUBLIC_100_WALL_S = 24.9


def matmul_rate(device: torch.device, tf32: bool = False, reps: int = 30, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a plain (1024x784)@(784x1024) matmul in dtype (fp32, or bf16 for the bf16 engine), median of `reps`."""
    a = torch.randn(1024, 784, device=device).to(dtype)
    b = torch.randn(784, 1024, device=device).to(dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    inner = 1 if device.type == "cpu" else 50
    times = []
    try:
        for r in range(reps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(inner):
                a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= 3:
                times.append((time.perf_counter() - t0) / inner)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    times.sort()
    return 2 * 1024 * 784 * 1024 / times[len(times) // 2] / 1e9


def train_flops_per_example(spec, used_logits: int | None = None) -> int:
    """Forward + backward of one model on one example: forward 2*i*o per layer, weight gradient
    2*i*o per layer, input gradient 2*i*o for every layer but the first (its input is data).
    used_logits: how many outputs the model's loss reads (default all); the last layer's other
    rows are computed by the batched engine but are not useful work (a teacher's CE reads the 10
    digit logits, an aux-only student's KL the m aux logits)."""
    dims = list(spec.layer_dims)
    if used_logits is not None:
        dims[-1] = (dims[-1][0], used_logits)
    fwd = sum(2 * i * o for i, o in dims)
    return fwd + fwd + (fwd - 2 * dims[0][0] * dims[0][1])


def useful_flops(cfg) -> int:
    """Useful arithmetic of one teacher epoch + one distillation epoch of cfg (all its models)."""
    from sublim.toymodels.config import AUX_ARMS

    spec, n, e = cfg.spec, cfg.n_models, cfg.max_examples_per_epoch
    used = {a: spec.n_aux if a in AUX_ARMS else spec.d_out for a in cfg.student_arms}
    per_example = train_flops_per_example(spec, spec.n_classes)  # teacher training
    per_example += sum(train_flops_per_example(spec, u) for u in used.values())  # every student arm
    t_dims = spec.layer_dims[:-1] + [(spec.width, max(used.values()))]  # teachers' logits on the distillation batches
    per_example += sum(2 * i * o for i, o in t_dims)
    return n * e * per_example


def child(args) -> dict:
    """One measurement in this (fresh) process."""
    from sublim.toymodels.config import ToyConfig
    from sublim.toymodels.mnist import load_mnist
    from sublim.toymodels.train import run_experiment

    dev = torch.device(args.device)
    fast = args.fast_matmul
    rate = matmul_rate(dev)
    rate_tf32 = matmul_rate(dev, tf32=True) if dev.type == "cuda" else None
    bf16 = fast == "bf16"  # the bf16 engine is read against the bf16 matmul rate
    rate_bf16 = matmul_rate(dev, dtype=torch.bfloat16) if bf16 else None
    data = load_mnist(device=dev)
    cfg = ToyConfig(n_models=args.n, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=args.examples,
                    max_test_examples=1000, device=args.device, fast_matmul=fast, chunk_models=args.chunk)
    # warm-up (CUDA context, cuBLAS handles, allocator, oneDNN kernels) on a tiny ensemble
    run_experiment(ToyConfig(n_models=2, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=2048,
                             max_test_examples=1000, device=args.device, fast_matmul=fast), data)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = run_experiment(cfg, data, desc=f"bench {args.n}")
    # the machine may be shared: take the better of the matmul rates before and after the run
    rate = max(rate, matmul_rate(dev))
    rate_bf16 = max(rate_bf16, matmul_rate(dev, dtype=torch.bfloat16)) if bf16 else None
    t_train = res.phase_s["teacher"] + res.phase_s["student"]
    n, e, k = cfg.n_models, cfg.max_examples_per_epoch, len(cfg.student_arms)
    flops = useful_flops(cfg)
    model_epochs = n * (1 + k) * e / 60000
    out = {
        "n_models": n, "examples_per_epoch": e, "chunk_models": args.chunk or "auto",
        "fast_matmul": fast, "threads": torch.get_num_threads(),
        "teacher_s": res.phase_s["teacher"], "student_s": res.phase_s["student"],
        "model_epochs_per_s": model_epochs / t_train,
        "achieved_gflops": flops / t_train / 1e9,
        "matmul_fp32_gflops": rate,
        "ratio_to_fp32_matmul": flops / t_train / 1e9 / rate,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if rate_bf16:
        out["matmul_bf16_gflops"] = rate_bf16
        out["ratio_to_bf16_matmul"] = out["achieved_gflops"] / rate_bf16
    out["loadavg"] = os.getloadavg()
    if rate_tf32:
        out["matmul_tf32_gflops"] = rate_tf32
        out["ratio_to_tf32_matmul"] = out["achieved_gflops"] / rate_tf32
    if dev.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def paper_run(args, mode: str) -> dict:
    """The full paper configuration at 100 models (5 + 5 epochs, all six arms), timed.

    mode: a fast_matmul value, optionally "+resample" (fresh noise every distillation epoch
    instead of the paper's fixed set; an ablation, not the paper configuration)."""
    fast, _, extra = mode.partition("+")
    resample = extra == "resample"
    from sublim.stats import mean_ci95
    from sublim.toymodels.config import ToyConfig
    from sublim.toymodels.mnist import load_mnist
    from sublim.toymodels.train import run_experiment

    dev = torch.device(args.device)
    data = load_mnist(device=dev)
    run_experiment(ToyConfig(n_models=2, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=2048,
                             max_test_examples=1000, device=args.device, fast_matmul=fast), data)  # warm-up
    cfg = ToyConfig(n_models=args.paper_models, device=args.device, fast_matmul=fast, distill_resample=resample,
                    max_examples_per_epoch=args.paper_examples)  # paper_examples=0: the full 60,000
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = run_experiment(cfg, data, desc=f"paper {fast}")
    wall = time.perf_counter() - t0
    arms = {}
    for arm, acc in res.accuracy.items():
        mean, half = mean_ci95(acc)
        pub_mean, pub_half = PUBLIC_100[arm]
        arms[arm] = {"mean_pct": 100 * mean, "ci95_pct": 100 * half,
                     "public_mean_pct": pub_mean, "public_ci95_pct": pub_half,
                     "mean_inside_public_ci": abs(100 * mean - pub_mean) <= pub_half,
                     "cis_overlap": abs(100 * mean - pub_mean) <= pub_half + 100 * half}
    return {"mode": mode, "fast_matmul": fast, "distill_resample": resample, "n_models": cfg.n_models, "wall_s": wall, "phase_s": res.phase_s,
            "target_s": 5.0, "public_script_s": PUBLIC_100_WALL_S, "arms": arms}


def summarize_repeats(runs: list[dict], counts: list[int]) -> dict:
    """Median and range over the repeats of each model count (a shared machine's runs scatter)."""
    out = {}
    for n in counts:
        ok = [r for r in runs if r.get("n_models") == n and "error" not in r]
        if not ok:
            continue
        entry = {"repeats": len(ok)}
        for key in ("ratio_to_fp32_matmul", "achieved_gflops", "matmul_fp32_gflops", "teacher_s", "student_s",
                    "ratio_to_bf16_matmul", "matmul_bf16_gflops"):
            if key not in ok[0]:
                continue
            vals = sorted(r[key] for r in ok)
            mid = len(vals) // 2
            median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
            entry[key] = {"median": median, "min": vals[0], "max": vals[-1]}
        entry["peak_rss_gb_max"] = max(r["peak_rss_gb"] for r in ok)
        out[str(n)] = entry
    return out


def device_tag(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return "cpu"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="10,100", help="model counts, comma-separated")
    p.add_argument("--examples", type=int, default=None,
                   help="examples per epoch in the throughput runs (default: 32768 on CPU, 60000 on CUDA)")
    p.add_argument("--fast-matmul", default=None, help="off | tf32 | bf16 (default: off on CPU, tf32 on CUDA)")
    p.add_argument("--chunk", type=int, default=0, help="chunk_models (0 = auto)")
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh-process runs per model count; with more than one, a 'summary' gives the median and range")
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the full 100-model paper experiment (default: on CUDA only)")
    p.add_argument("--paper-models", type=int, default=100)
    p.add_argument("--paper-examples", type=int, default=0, help="examples per epoch of the paper run (0 = all; smoke tests)")
    p.add_argument("--paper-modes", default=None, help="fast_matmul modes for the paper run, '+resample' for the fresh-noise ablation "
                        "(default on CUDA: tf32,off,tf32+resample)")
    p.add_argument("--out", default=None, help="default benchmarks/results/toy_<cpu|gpu-name>.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-paper", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("SUBLIM_QUIET", "1")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("bench_toy: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    args.fast_matmul = args.fast_matmul or ("tf32" if cuda else "off")
    # CPU: 32 steps per phase. The paper configuration runs 59 steps per epoch for 10 epochs; with
    # 8 steps (the earlier default) the one-time first-step setup (first touch of the reused buffers,
    # Adam state) weighed ~2% of the measured time, ~0.05% of a real run.
    args.examples = args.examples or (60000 if cuda else 32768)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return 0
    if args.child_paper:
        print("RESULT " + json.dumps(paper_run(args, args.child_paper)))
        return 0

    def spawn(extra: list[str]) -> dict:
        cmd = [sys.executable, __file__, "--device", args.device, "--fast-matmul", args.fast_matmul,
               "--examples", str(args.examples), "--chunk", str(args.chunk),
               "--paper-models", str(args.paper_models), "--paper-examples", str(args.paper_examples), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "cmd": " ".join(cmd)}
        return json.loads(lines[-1][len("RESULT "):])

    results = {"device": args.device, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "runs": [], "paper": []}
    counts = [int(v) for v in args.models.split(",") if v.strip()]
    for rep in range(args.repeats):  # model counts interleaved, so a noisy minute hits all of them
        for n in counts:
            r = spawn(["--child", "--n", str(n)])
            if args.repeats > 1:
                r["repeat"] = rep
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
    if args.repeats > 1:
        results["summary"] = summarize_repeats(results["runs"], counts)
    if args.paper if args.paper is not None else cuda:
        modes = (args.paper_modes or ("tf32,off,tf32+resample" if cuda else "off")).split(",")
        for mode in modes:
            r = spawn(["--child-paper", mode])
            results["paper"].append(r)
            print(json.dumps(r), flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"toy_{device_tag(args.device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
