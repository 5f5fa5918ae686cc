"""Benchmark: per-example gradient statistics kernels vs PyTorch formulations, and model overhead.

    python benchmarks/bench_kernels.py            # GPU: full shapes; CPU: small shapes, torch only
    python benchmarks/bench_kernels.py --quick    # fewer shapes (a smoke run)

For every shape (docs/reference.md section 3, and linear layers of 135M / 1B / 7B models at batch
32 x 128 tokens) and every method it records: median time, the roofline floor
max(bytes / bandwidth, matmul FLOPs / matmul rate) with both ceilings measured in this run (a large
copy and a large bf16 matmul), peak extra memory (max_memory_allocated delta), and the error
against a float64 reference (norms: |err| / ref; dots: |err| / (||G_i|| ||D_k||)). Then the
model-level overhead of per-example statistics over all Linear/Embedding weights of a randomly
initialised SmolLM2-135M (LlamaConfig, no download) at batch 32 x 128 vs a plain forward+backward.

Writes benchmarks/results/kernels_<device>.csv and kernels_<device>.json (config, environment,
ceilings). All timings on one device in one run; ratios compare numbers from the same run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sublim.kernels import PerExampleGradStats, linear_grad_stats, supported_param_names
from sublim.kernels import torch_backend
from sublim.rundir import atomic_write_json, atomic_write_text, environment_info

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    warmup: int = 2
    reps: int = 10
    k: int = 16  # directions for the dot benchmarks (the contract's maximum)
    quick: bool = False
    model: bool = True
    model_batch: int = 32
    model_seq: int = 128
    profile_model: bool = False
    out: str = ""


def gpu_shapes(quick: bool):
    # name, B, T, d_in, d_out
    shapes = [
        ("ref5 1024x1024", 32, 256, 1024, 1024),
        ("ref5 4096x4096", 64, 64, 4096, 4096),
        ("135M mlp up 576->1536", 32, 128, 576, 1536),
        ("135M mlp down 1536->576", 32, 128, 1536, 576),
        ("135M head 576->49152", 32, 128, 576, 49152),
        ("1B attn 2048->2048", 32, 128, 2048, 2048),
        ("1B mlp up 2048->8192", 32, 128, 2048, 8192),
        ("7B attn 4096->4096", 32, 128, 4096, 4096),
        ("7B mlp up 4096->11008", 32, 128, 4096, 11008),
        ("7B mlp down 11008->4096", 32, 128, 11008, 4096),
    ]
    return shapes[:3] if quick else shapes


def interpreter_shapes():
    # Triton's CPU interpreter runs every program in numpy: a smoke test of the Triton rows only
    return [("interpreter tiny", 2, 5, 20, 12)]


def cpu_shapes(quick: bool):
    shapes = [("cpu small 128x128", 8, 32, 128, 128), ("cpu seq 256x64", 4, 64, 256, 64), ("cpu 2d 256x256", 16, 1, 256, 256)]
    return shapes[:1] if quick else shapes


# ---- timing / memory ---------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


_FLUSH = {}


def median_time(fn, device, warmup, reps) -> float:
    """Median time in ms of fn(). On CUDA: device time between CUDA events, with the L2 cache
    flushed (a 256 MiB memset) before every call, as triton.testing.do_bench does, so host launch
    overhead is hidden and memory-bound kernels do not read warm caches. On CPU: wall time."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        flush = _FLUSH.setdefault(device, torch.empty(256 * 2**20, dtype=torch.int8, device=device))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda.synchronize()
        for i in range(reps):
            flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wall_time(fn, device, warmup, reps) -> float:
    """Median wall time in ms (synchronised), host overhead included: for whole training steps."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def paired_wall_times(plain, with_stats, st, device, warmup, reps) -> tuple[list[float], list[float]]:
    """Wall times in ms of `plain` and of `with_stats` inside `with st:`, alternating step by step."""
    def timed(fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        plain()
        with st:
            with_stats()
    a, b = [], []
    for _ in range(reps):
        a.append(timed(plain))
        with st:
            b.append(timed(with_stats))
    return a, b


def peak_extra_mib(fn, device) -> float:
    if device.type != "cuda":
        return float("nan")
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def measure_ceilings(device, quick):
    """Bandwidth from a large copy (read + write), matmul rate from a large bf16 (CPU: fp32) matmul."""
    n = (1 << 28) if device.type == "cuda" else (1 << 23)  # 512 MiB of bf16 / 32 MiB of fp32
    src = torch.empty(n, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, 2, 5)
    bandwidth = 2 * src.numel() * src.element_size() / (t * 1e-3)
    del src, dst
    m = 8192 if device.type == "cuda" else 512
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(m, m, device=device, dtype=dt)
    b = torch.randn(m, m, device=device, dtype=dt)
    t = median_time(lambda: a @ b, device, 2, 5)
    rate = 2 * m**3 / (t * 1e-3)
    return bandwidth, rate


# ---- PyTorch formulations (native dtype, the way a user would write them) ---------------------
def pt_ghost_native(x, g):
    """Gram matrices in the input dtype (bf16 output), reduced in fp32."""
    return (torch.bmm(x, x.transpose(1, 2)).float() * torch.bmm(g, g.transpose(1, 2)).float()).sum((1, 2))


def pt_materialize_native(x, g, D=None):
    """All B gradients at once in the input dtype: memory B * d_in * d_out."""
    G = torch.einsum("bto,bti->boi", g, x)
    sq = G.float().pow(2).sum((1, 2))
    if D is None:
        return sq
    return sq, (G.reshape(G.shape[0], -1) @ D.reshape(D.shape[0], -1).T).float()


def pt_vmap_grad(x, g):
    from torch.func import grad, vmap

    W = torch.zeros(g.shape[2], x.shape[2], dtype=x.dtype, device=x.device)
    G = vmap(grad(lambda W, xi, gi: (gi * (xi @ W.T)).float().sum()), in_dims=(None, 0, 0))(W, x, g)
    return G.float().pow(2).sum((1, 2))


def pt_gd_native(x, g, D):
    """<G_i, D_k> = sum_t (g_t^T D_k) . x_t, matmul in the input dtype, one direction at a time."""
    return torch.stack([((g @ D[j]).float() * x.float()).sum((1, 2)) for j in range(D.shape[0])], 1)


def _tuned(x, g, D, algorithm, options):
    """One (algorithm, launch options) candidate of the auto-tuner, run directly."""
    from sublim.kernels.linear_stats import compute_checked

    return compute_checked(x, g, D, None, "triton", algorithm, tuning=options)


def _plan(algorithm, options):
    return " ".join([algorithm] + [f"{k}={'plan' if v is None else v}" for k, v in options.items()])


def _label(algorithm, options):
    return f"triton {_plan(algorithm, options)}"


# ---- one shape ---------------------------------------------------------------------------------
def bench_shape(name, B, T, d_in, d_out, cfg, device, bandwidth, rate, use_triton):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, d_in, device=device, dtype=dtype, generator=gen)
    g = torch.randn(B, T, d_out, device=device, dtype=dtype, generator=gen)
    es = x.element_size()
    ref_sq = torch_backend.ghost_sq_norm(x.double(), g.double())[0].double()
    ref_norm = ref_sq.sqrt()

    def err_sq(sq):
        return ((sq.double() - ref_sq).abs() / ref_sq).max().item()

    io_xg = (B * T * (d_in + d_out)) * es
    ghost_flops = B * T * T * (d_in + d_out)  # symmetric half of the two Gram matrices, 2 flops/MAC
    mat_flops = 2 * B * T * d_in * d_out
    floors = {"norm": max(io_xg / bandwidth, min(ghost_flops, mat_flops) / rate) * 1e3}

    methods = []  # (stat, method, kind, fn, err_fn)
    if use_triton:
        from sublim.kernels.linear_stats import tuning_candidates

        # "auto" times the candidates below once per shape (its first call) and keeps the fastest;
        # each candidate also gets its own row, so the CSV shows what the tuner chose between.
        methods += [("norm", "triton auto", "kernel", lambda: linear_grad_stats(x, g, backend="triton").sq_norm, err_sq)]
        # every plan, experimental ones included: this is where they are validated and measured
        methods += [("norm", _label(a, o), "kernel", lambda a=a, o=o: _tuned(x, g, None, a, o).sq_norm, err_sq)
                    for a, o in tuning_candidates(0, experimental=True)]
    methods += [
        ("norm", "torch backend auto (fp32)", "pytorch", lambda: linear_grad_stats(x, g, backend="torch").sq_norm, err_sq),
        ("norm", "pytorch ghost native", "pytorch", lambda: pt_ghost_native(x, g), err_sq),
        ("norm", "pytorch einsum materialize", "pytorch", lambda: pt_materialize_native(x, g), err_sq),
        ("norm", "pytorch vmap(grad)", "pytorch", lambda: pt_vmap_grad(x, g), err_sq),
    ]
    D_by_stat = {}
    for k in sorted({1, cfg.k}):
        D = torch.randn(k, d_out, d_in, device=device, dtype=dtype, generator=gen)
        D_by_stat[f"norm+dot k={k}"] = D
        # float64 reference for the dots: per-example materialization, chunked
        ref_dot = torch_backend.materialize_stats(x.double(), g.double(), D.double())[1].double()
        d_norm = D.double().reshape(k, -1).norm(dim=1)

        def err_dot(dot, ref_dot=ref_dot, d_norm=d_norm):
            return ((dot.double() - ref_dot).abs() / (ref_norm[:, None] * d_norm[None, :])).max().item()

        stat = f"norm+dot k={k}"
        floors[stat] = max((io_xg + k * d_in * d_out * es) / bandwidth, mat_flops / rate) * 1e3
        if use_triton:
            methods += [(stat, "triton auto", "kernel", lambda D=D: linear_grad_stats(x, g, D, backend="triton").dot, err_dot)]
            methods += [(stat, _label(a, o), "kernel", lambda D=D, a=a, o=o: _tuned(x, g, D, a, o).dot, err_dot)
                        for a, o in tuning_candidates(k, experimental=True)]
        methods += [
            (stat, "torch backend auto (fp32)", "pytorch", lambda D=D: linear_grad_stats(x, g, D, backend="torch").dot, err_dot),
            (stat, "pytorch einsum materialize", "pytorch", lambda D=D: pt_materialize_native(x, g, D)[1], err_dot),
            (stat, "pytorch g-times-D native", "pytorch", lambda D=D: (pt_ghost_native(x, g), pt_gd_native(x, g, D))[1], err_dot),
        ]
        del D
    rows = []
    for stat, method, kind, fn, err_fn in methods:
        try:
            err = err_fn(fn())
            ms = median_time(fn, device, cfg.warmup, cfg.reps)
            mem = peak_extra_mib(fn, device)
            status = "ok"
        except torch.cuda.OutOfMemoryError:
            err, ms, mem, status = float("nan"), float("nan"), float("nan"), "out of memory"
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - a kernel that fails to compile is a row, not a crash
            err, ms, mem, status = float("nan"), float("nan"), float("nan"), f"error: {type(e).__name__}: {str(e)[:200]}"
        floor = floors[stat]
        if method == "triton auto" and status == "ok":  # record what the tuner picked
            from sublim.kernels.linear_stats import tuned_choice

            picked = tuned_choice(x, g, D_by_stat.get(stat))
            method = f"triton auto ({_plan(*picked)})" if picked else method
        rows.append(dict(shape=name, B=B, T=T, d_in=d_in, d_out=d_out, dtype=str(dtype).replace("torch.", ""),
                         stat=stat, method=method, kind=kind, median_ms=ms, floor_ms=floor, x_floor=ms / floor,
                         peak_extra_mib=mem, max_rel_err=err, correct=bool(err <= 1e-3), status=status))
        print(f"  {stat:14s} {method:30s} {ms:9.3f} ms  floor {floor:8.3f}  x{ms / floor:6.2f}  "
              f"mem {mem:9.1f} MiB  err {err:.2e}", flush=True)
    # speedup of each kernel over the fastest correct PyTorch formulation of the same statistic
    for stat in {r["stat"] for r in rows}:
        pt = [r["median_ms"] for r in rows if r["stat"] == stat and r["kind"] == "pytorch" and r["correct"]]
        best = min(pt) if pt else float("nan")
        for r in rows:
            if r["stat"] == stat:
                r["best_pytorch_ms"] = best
                r["speedup_vs_best_pytorch"] = best / r["median_ms"]
    del x, g, methods, D_by_stat
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ---- model level -------------------------------------------------------------------------------
def smollm2_135m(device, dtype, layers=30):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        max_position_embeddings=2048, rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    return model


def bench_model(cfg, device, use_triton):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    B, T = (cfg.model_batch, cfg.model_seq) if device.type == "cuda" else (2, 16)
    # CPU (debugging only): 2 of the 30 layers, so that it finishes on a shared 2-core machine
    model = smollm2_135m(device, dtype, layers=30 if device.type == "cuda" else 2)
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=device)

    def per_example_loss():
        logits = model(input_ids=ids).logits.float()
        # classes on the last axis: cross_entropy over a (B, V, T) transpose runs PyTorch's "spatial"
        # softmax kernel, which took 82 of the step's 110 ms of GPU time on an H200 (2026-11-27 run)
        # and so made every overhead look small
        V = logits.shape[-1]
        lo = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none")
        return lo.view(B, T - 1).mean(1)

    def plain():
        model.zero_grad(set_to_none=True)
        per_example_loss().sum().backward()

    names = supported_param_names(model)
    params = dict(model.named_parameters())
    dirs = {n: torch.randn(1, *params[n].shape, device=device, dtype=dtype) for n in names}
    rows = []
    t_plain = wall_time(plain, device, cfg.warmup, cfg.reps)
    m_plain = peak_extra_mib(plain, device)
    print(f"  model plain fwd+bwd {t_plain:.2f} ms  peak {m_plain:.0f} MiB", flush=True)
    rows.append(dict(shape=f"SmolLM2-135M model B={B} T={T}", B=B, T=T, stat="fwd+bwd", method="plain", kind="model",
                     median_ms=t_plain, peak_extra_mib=m_plain, overhead=0.0, status="ok"))
    results = {}
    backends = ["torch"] + (["triton"] if use_triton else [])
    for backend in backends:
        blocks = [n for n in names if ".layers." in n]  # without the tied embedding / head
        for label, d, tracked in (("norm", None, names), ("norm+dot k=1", dirs, names),
                                  ("norm, decoder linears only", None, blocks)):
            st = PerExampleGradStats(model, d, param_names=tracked, backend=backend)

            def with_stats():
                plain()
                return st.result()

            with st:  # first step: compiles and tunes; its result is kept for the backend comparison
                r = with_stats()
                results[(backend, label)] = r
                m = peak_extra_mib(with_stats, device)
            # Plain and with-statistics steps ALTERNATE, so that drift of the (host-bound) step time
            # on a shared machine hits both alike; the hooks are attached outside the timed region.
            tp, ts = paired_wall_times(plain, with_stats, st, device, cfg.warmup, cfg.reps)
            hook_ms = st.hook_host_seconds * 1e3  # host time inside our hooks, last step
            t, t_base = statistics.median(ts), statistics.median(tp)
            print(f"  model {backend:6s} {label:12s} {t:.2f} ms (range {min(ts):.1f}-{max(ts):.1f}) vs plain "
                  f"{t_base:.2f} ms (range {min(tp):.1f}-{max(tp):.1f}): overhead {t / t_base - 1:+.1%}  "
                  f"hooks' host time {hook_ms:.2f} ms  peak {m:.0f} MiB", flush=True)
            rows.append(dict(shape=f"SmolLM2-135M model B={B} T={T}", B=B, T=T, stat=label, method=f"stats {backend}",
                             kind="model", median_ms=t, peak_extra_mib=m, overhead=t / t_base - 1,
                             plain_ms=t_base, range_ms=f"{min(ts):.2f}-{max(ts):.2f}",
                             plain_range_ms=f"{min(tp):.2f}-{max(tp):.2f}", hook_host_ms=hook_ms, status="ok"))
    if cfg.profile_model:
        _profile_model(plain, model, dirs, names, "triton" if use_triton else "torch", device, cfg)
    if use_triton:  # the two backends must agree (fp32 accumulation both)
        for label in ("norm", "norm+dot k=1"):
            a, b = results[("torch", label)], results[("triton", label)]
            e = ((a.total_sq_norm - b.total_sq_norm).abs() / a.total_sq_norm).max().item()
            if label != "norm":  # dots relative to their Cauchy-Schwarz bound ||G_i|| ||D||
                d_norm = math.sqrt(sum(v.float().pow(2).sum().item() for v in dirs.values()))
                e = max(e, ((a.total_dot - b.total_dot).abs() / (a.total_sq_norm.sqrt()[:, None] * d_norm)).max().item())
            for r in rows:
                if r["method"] == "stats triton" and r["stat"] == label:
                    r["max_rel_err"] = e
                    r["correct"] = bool(e <= 1e-3)
            print(f"  model triton vs torch backend ({label}): max rel diff {e:.2e}")
    del model
    return rows


def _profile_model(plain, model, dirs, names, backend, device, cfg):
    """torch.profiler tables of one plain step and one step with norms + 1 direction: where the
    model-level overhead goes (host vs device, which kernels). Written next to the CSV."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    st = PerExampleGradStats(model, dirs, param_names=names, backend=backend)
    for label, ctx in (("plain fwd+bwd", None), ("fwd+bwd with norm+dot k=1", st)):
        def step():
            if ctx is None:
                plain()
            else:
                with ctx:
                    plain()
                    ctx.result()
        step()  # warm (compiles, tunes)
        sync(device)
        with profile(activities=acts) as prof:
            step()
            sync(device)
        for key in (sort, "cpu_time_total"):
            parts.append(f"==== {label}, sorted by {key} ====\n" + prof.key_averages().table(sort_by=key, row_limit=25))
    path = Path(cfg.out).with_suffix(".profile.txt")
    atomic_write_text(path, "\n\n".join(parts))
    print(f"  wrote {path}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=Config.warmup)
    p.add_argument("--reps", type=int, default=Config.reps)
    p.add_argument("--k", type=int, default=Config.k)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-model", dest="model", action="store_false")
    p.add_argument("--shapes", default="", help="comma-separated substrings: only shapes whose name contains one")
    p.add_argument("--profile-model", action="store_true",
                   help="also write torch.profiler tables of one model step (plain / with statistics)")
    p.add_argument("--triton-interpret", action="store_true",
                   help="CPU only: also run the Triton rows in Triton's interpreter (TRITON_INTERPRET=1 must be "
                        "set before triton is imported) on one tiny shape; a smoke test, not a measurement")
    p.add_argument("--out", default="", help="CSV path (default benchmarks/results/kernels_<device>.csv)")
    args = p.parse_args(argv)
    cfg = Config(warmup=args.warmup, reps=args.reps, k=args.k, quick=args.quick, model=args.model,
                 profile_model=args.profile_model, out=args.out)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_triton = device.type == "cuda" or args.triton_interpret
    if use_triton and device.type == "cpu":
        from sublim.kernels.linear_stats import triton_available

        if not triton_available(device):
            p.error("--triton-interpret needs TRITON_INTERPRET=1 in the environment")
    if device.type == "cpu":
        torch.set_num_threads(2)
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "_", dev_name).strip("_").lower()
    out = Path(cfg.out) if cfg.out else RESULTS / f"kernels_{slug}.csv"
    cfg.out = str(out)  # resolved, so that config.json and the profile name the real file

    t_start = time.time()
    bandwidth, rate = measure_ceilings(device, cfg.quick)
    print(f"device {dev_name}: copy bandwidth {bandwidth / 1e9:.1f} GB/s, matmul {rate / 1e12:.3f} TFLOP/s", flush=True)
    rows = []
    if device.type == "cuda":
        shapes = gpu_shapes(cfg.quick)
    else:
        shapes = interpreter_shapes() if use_triton else cpu_shapes(cfg.quick)
    if args.shapes:
        wanted = [w.strip() for w in args.shapes.split(",") if w.strip()]
        shapes = [sh for sh in shapes if any(w in sh[0] for w in wanted)]
    for name, B, T, d_in, d_out in shapes:
        print(f"{name}: B={B} T={T} d_in={d_in} d_out={d_out}", flush=True)
        rows += bench_shape(name, B, T, d_in, d_out, cfg, device, bandwidth, rate, use_triton)
    if cfg.model:
        print("SmolLM2-135M (random weights) model-level overhead", flush=True)
        rows += bench_model(cfg, device, use_triton)

    fields = ["device", "shape", "B", "T", "d_in", "d_out", "dtype", "stat", "method", "kind", "median_ms",
              "floor_ms", "x_floor", "best_pytorch_ms", "speedup_vs_best_pytorch", "peak_extra_mib",
              "max_rel_err", "correct", "overhead", "plain_ms", "range_ms", "plain_range_ms", "hook_host_ms", "status"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({"device": dev_name, **r})
    atomic_write_text(out, buf.getvalue())
    atomic_write_json(out.with_suffix(".json"), {
        "config": asdict(cfg), "environment": environment_info(), "device": dev_name,
        "copy_bandwidth_GBps": bandwidth / 1e9, "matmul_TFLOPs": rate / 1e12,
        "wall_s": time.time() - t_start, "command": " ".join([sys.executable] + sys.argv),
    })
    print(f"wrote {out} ({len(rows)} rows) in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
