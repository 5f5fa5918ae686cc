"""The `sublim llm distill` student step on CPU, float32 vs bf16 matmuls, as ratios to the matmul rate.

    python benchmarks/bench_llm_step.py                 # SmolLM2-135M, the laptop preset's contexts
    python benchmarks/bench_llm_step.py --tiny --out /tmp/s.json     # tiny-llama smoke (the test)

In ONE process: the float32 and bf16 rates of a 2048^2 matmul, then the distill student step
(students.py's code path: right-padded decoder pass, restricted head over the number vocabulary,
KL to a teacher's cached distributions, Adam on every weight) in both precisions. The machine may
be shared (record: os.getloadavg()), so the measurements are INTERLEAVED: each repeat measures the
float32 matmul rate, a float32 step, the bf16 matmul rate and a bf16 step, in that order, and the
ratio of each step is taken to the matmul rate measured next to it; medians over repeats.

Per step the breakdown times: the batch build (token lists -> tensors), the decoder forward, the
head + loss forward, the head + loss backward (until the gradient reaches the hidden states, via a
hook), the decoder backward, Adam + zero_grad; plus a checkpoint save (students.py's _save), its
cost per step at the preset's checkpoint_every, and the padding waste of the preset's batches with
and without length bucketing (sublim/batching.py). FLOPs are counted from the model's own Linear
shapes (useful work: each context at its own length, no padding): forward 2 * in * out per token
per Linear + attention 4 * L^2 * d_attn per layer (the full L x L score matrix, as SDPA computes it
under a padding mask), backward twice the forward, head 3 x 2 * d * |V| per completion position.
A real `train_student` run of a few steps is timed at the end as a check that the breakdown's
parts add up to the real step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LAPTOP_CONTEXTS = "llm_validation/results/llm_gpu_2026-11-27_h200/base.filtered.jsonl.gz"


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul in dtype (bf16: fp32 accumulation by oneDNN), median of reps."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def machine() -> dict:
    from sublim.precision import cpu_bf16_units, cpu_flags

    flags = cpu_flags() or set()
    name = platform.processor() or "cpu"
    try:
        name = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
            "bf16_units": cpu_bf16_units(), "loadavg_start": os.getloadavg()}


# ---- the step and its FLOPs -------------------------------------------------------------------

def step_flops(model, batch, n_vocab: int) -> dict:
    """Useful training FLOPs of one step on `batch` (list of Encoded), and the padded count."""
    from sublim.llm_validation.distill.forward import decoder_and_head

    decoder, head = decoder_and_head(model)
    linear = sum(m.in_features * m.out_features for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in batch]
    positions = sum(len(e.completion_ids) for e in batch)

    def fwd(ls):
        return sum(2 * linear * L + 4 * cfg.num_hidden_layers * L * L * d_attn for L in ls)

    head_f = 3 * 2 * head.weight.shape[1] * n_vocab * positions
    width = max(lengths)
    return {"useful": 3 * fwd(lengths) + head_f, "computed_padded": 3 * fwd([width] * len(batch)) + head_f,
            "tokens": sum(lengths), "padded_tokens": width * len(batch), "positions": positions}


def timed_step(model, batch, teacher_logp, vocab, optimizer, fast_matmul: str) -> dict:
    """One student step (students.train_student's body), with its parts timed."""
    from sublim.llm_validation.distill.forward import completion_hidden, decoder_and_head
    from sublim.llm_validation.distill.forward import restricted_kl, restricted_log_probs
    from sublim.precision import matmul_autocast

    t = {}
    t0 = time.perf_counter()
    with matmul_autocast(fast_matmul, "cpu"):
        hidden = completion_hidden(model, batch, "cpu")  # includes building the padded id tensors
    hidden = hidden.float() if hidden.dtype == torch.bfloat16 else hidden
    t1 = time.perf_counter()
    _, head = decoder_and_head(model)
    loss = restricted_kl(teacher_logp, restricted_log_probs(hidden, head.weight, vocab)).mean()
    loss.item()
    t2 = time.perf_counter()
    reached = {}
    hidden.register_hook(lambda g: reached.update(t=time.perf_counter()))  # fires once, returns None
    loss.backward()
    t3 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    t["decoder_forward_s"] = t1 - t0
    t["head_loss_forward_s"] = t2 - t1
    t["head_loss_backward_s"] = reached["t"] - t2
    t["decoder_backward_s"] = t3 - reached["t"]
    t["optimizer_s"] = t4 - t3
    t["step_s"] = t4 - t0
    return t


def batch_build_seconds(batch, reps: int = 20) -> float:
    """The token-list -> padded tensor part of completion_hidden alone (it runs inside the forward)."""
    t0 = time.perf_counter()
    for _ in range(reps):
        inputs = [e.prompt_ids + e.completion_ids[:-1] for e in batch]
        width = max(len(x) for x in inputs)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for i, x in enumerate(inputs):
            ids[i, :len(x)] = torch.tensor(x)
    return (time.perf_counter() - t0) / reps


# ---- setup ----------------------------------------------------------------------------------

def setup(args):
    from sublim.llm_validation.core.models import load_model
    from sublim.llm_validation.distill.contexts import encode_contexts, load_context_records
    from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids
    from sublim.llm_validation.core.prompts import synthetic_number_records

    model, tok = load_model(args.model, dtype=torch.float32, device="cpu")
    if args.tiny:
        records = synthetic_number_records(args.n_contexts, 0)
    else:
        records = load_context_records("file", str(ROOT / LAPTOP_CONTEXTS), args.n_contexts, 0)
    t0 = time.perf_counter()
    encoded = encode_contexts(tok, records, end_of_turn_id(tok), args.max_length)
    tokenize_s = time.perf_counter() - t0
    vocab = number_token_ids(tok)
    model.config.use_cache = False
    model.train()
    return model, tok, encoded, vocab, tokenize_s


def teacher_logp(n_positions: int, n_vocab: int, seed: int) -> torch.Tensor:
    """Stand-in teacher distributions (the step's arithmetic does not depend on their values)."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n_positions, n_vocab, generator=g), -1)


def padding_report(encoded, batch_size: int, seeds, epochs: int, windows) -> dict:
    from sublim.batching import length_bucketed_batches, padding_waste

    lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in encoded]
    out = {"lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}}
    for w in windows:
        batches = [b for s in seeds for ep in range(epochs)
                   for b in length_bucketed_batches(lengths, batch_size, w, ("distill-order", s, ep))]
        out[f"waste_window_{w}"] = padding_waste(lengths, batches)
    return out


def checkpoint_seconds(model, optimizer, reps: int = 2) -> float:
    from sublim.llm_validation.core.training import save_checkpoint

    times = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(reps):
            t0 = time.perf_counter()
            save_checkpoint(Path(d) / "checkpoint.pt", model, optimizer, None, 1, [0.0])
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def real_train_seconds(model, encoded, vocab, args, fast_matmul: str) -> float:
    """students.train_student itself on `args.real_steps` batches: wall seconds per step."""
    from sublim.llm_validation.distill.cache import TeacherCache
    from sublim.llm_validation.distill.config import DistillConfig
    from sublim.llm_validation.distill.students import StudentSpec, train_student

    enc = encoded[:args.batch_size * args.real_steps]
    offsets = [0]
    for e in enc:
        offsets.append(offsets[-1] + len(e.completion_ids))
    cache = TeacherCache(teacher_logp(offsets[-1], len(vocab), 1), offsets)
    cfg = DistillConfig(model=args.model, batch_size=args.batch_size, epochs=1, lr=1e-5,
                        checkpoint_every=0, fast_matmul=fast_matmul)
    with tempfile.TemporaryDirectory() as d:
        log = train_student(model, enc, cache, vocab, cfg, StudentSpec("bench"), Path(d), "cpu")
    return log["train_seconds_this_session"] / log["steps"]


def summarize(rows: list[dict], keys) -> dict:
    return {k: {"median": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows),
                "max": max(r[k] for r in rows)} for k in keys}


def measure(args) -> dict:
    from sublim.llm_validation.distill.students import _batches

    model, tok, encoded, vocab, tokenize_s = setup(args)
    lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in encoded]
    batch = [encoded[int(i)] for i in _batches(lengths, args.batch_size, 0, 1)[0]]
    flops = step_flops(model, batch, len(vocab))
    t_logp = teacher_logp(flops["positions"], len(vocab), 0)
    params = [p for p in model.parameters() if p.requires_grad]
    # as students.train_student builds them: the float32 default keeps the for-loop Adam the
    # committed runs used; fast_matmul=bf16 also fuses Adam
    optimizers = {"off": torch.optim.Adam(params, lr=1e-5), "bf16": torch.optim.Adam(params, lr=1e-5, fused=True)}
    modes = {"float32": ("off", torch.float32), "bf16": ("bf16", torch.bfloat16)}
    for mode, _ in modes.values():  # warm-up: Adam state, oneDNN kernels of both precisions
        timed_step(model, batch, t_logp, vocab, optimizers[mode], mode)
    rows = {name: [] for name in modes}
    for rep in range(args.repeats):
        for name, (mode, dtype) in modes.items():
            rate = matmul_rate(dtype)
            row = timed_step(model, batch, t_logp, vocab, optimizers[mode], mode)
            row["matmul_gflops"] = rate
            row["achieved_gflops"] = flops["useful"] / row["step_s"] / 1e9
            row["ratio_to_matmul"] = row["achieved_gflops"] / rate
            dec = flops["useful"] - 3 * 2 * model.get_output_embeddings().weight.shape[1] * len(vocab) * flops["positions"]
            row["decoder_ratio_to_matmul"] = dec / (row["decoder_forward_s"] + row["decoder_backward_s"]) / 1e9 / rate
            row["loadavg_1min"] = os.getloadavg()[0]
            row["repeat"] = rep
            rows[name].append(row)
            print(f"[{rep}] {name}: step {row['step_s']:.2f}s, {row['achieved_gflops']:.0f} GFLOP/s "
                  f"= {row['ratio_to_matmul']:.2f} of the {rate:.0f} GFLOP/s matmul", flush=True)
    keys = ("step_s", "decoder_forward_s", "head_loss_forward_s", "head_loss_backward_s", "decoder_backward_s",
            "optimizer_s", "matmul_gflops", "achieved_gflops", "ratio_to_matmul", "decoder_ratio_to_matmul")
    out = {"rows": rows, "summary": {name: summarize(r, keys) for name, r in rows.items()}}
    s = out["summary"]
    out["bf16_vs_float32_step_speedup"] = s["float32"]["step_s"]["median"] / s["bf16"]["step_s"]["median"]
    out["matmul_bf16_vs_float32"] = s["bf16"]["matmul_gflops"]["median"] / s["float32"]["matmul_gflops"]["median"]
    del optimizers["bf16"]  # 1 GB of Adam state: one optimizer is enough for the checkpoint timing
    ckpt = checkpoint_seconds(model, optimizers["off"])
    out["overheads"] = {
        "batch_build_s": batch_build_seconds(batch), "tokenize_all_contexts_s": tokenize_s,
        "checkpoint_save_s": ckpt, "checkpoint_every": args.checkpoint_every,
        "checkpoint_per_step_s": ckpt / args.checkpoint_every,
        "padding": padding_report(encoded, args.batch_size, (0, 1, 2), 2, (0, 2, 3, 6)),
        "batch_padding_waste": 1 - flops["tokens"] / flops["padded_tokens"]}
    out["flops"] = flops
    out["real_train_student_s_per_step"] = {name: real_train_seconds(model, encoded, vocab, args, mode)
                                            for name, (mode, _) in modes.items()}
    return out


def refused_rates(reason: str, repeats: int) -> dict:
    """On a CPU without bf16 units: the float32 and bf16 2048^2 matmul rates, interleaved as in
    measure() (the machine may be shared), and the refusal the distill knob gives here."""
    rows = {"float32": [], "bf16": []}
    for _ in range(max(repeats, 1)):
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
            rows[name].append({"matmul_gflops": matmul_rate(dtype), "loadavg_1min": os.getloadavg()[0]})
    summary = {name: summarize(r, ("matmul_gflops",)) for name, r in rows.items()}
    ratio = summary["bf16"]["matmul_gflops"]["median"] / summary["float32"]["matmul_gflops"]["median"]
    return {"step_refused": reason, "rows": rows, "summary": summary, "matmul_bf16_vs_float32": ratio}


def write_refused(result: dict, out: Path) -> int:
    from sublim.rundir import atomic_write_json

    result["machine"]["loadavg_end"] = os.getloadavg()
    atomic_write_json(out, result)
    s = result["summary"]
    print(f"matmul float32 {s['float32']['matmul_gflops']['median']:.3g} GFLOP/s, bf16 (software) "
          f"{s['bf16']['matmul_gflops']['median']:.3g} GFLOP/s = {result['matmul_bf16_vs_float32']:.3g}x; "
          f"the student step was not measured (refused); wrote {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tiny", action="store_true", help="tiny-llama, synthetic contexts, 1 repeat (the smoke test)")
    p.add_argument("--n-contexts", type=int, default=96, help="the laptop preset's 96")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--checkpoint-every", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--real-steps", type=int, default=2, help="steps of the real train_student check")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_step_cpu.json"))
    args = p.parse_args()
    if args.tiny:
        args.model, args.n_contexts, args.batch_size, args.repeats, args.real_steps = "tiny-llama", 8, 4, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("SUBLIM_QUIET", "1")
    from sublim.errors import SublimError
    from sublim.precision import check_fast_matmul

    result = {"benchmark": "llm_step", "model": args.model, "batch_size": args.batch_size,
              "n_contexts": args.n_contexts, "repeats": args.repeats, "machine": machine(),
              "note": "2-core AMD EPYC shared with other agents' jobs: see loadavg; ratios are to the "
                      "matmul rate measured next to each step"}
    try:
        check_fast_matmul("bf16", "cpu")
    except SublimError as e:
        # The knob's refusal is itself a claim ("software bf16 is slower than float32"): record the
        # two matmul rates that back it, instead of leaving the machine unmeasured.
        print(f"bench_llm_step: {e}; measuring the float32 and (software) bf16 matmul rates only", file=sys.stderr)
        result.update(refused_rates(str(e), args.repeats))
        return write_refused(result, Path(args.out))
    result.update(measure(args))
    result["machine"]["loadavg_end"] = os.getloadavg()
    from sublim.rundir import atomic_write_json

    atomic_write_json(Path(args.out), result)
    s = result["summary"]
    for name in ("float32", "bf16"):
        r = s[name]
        print(f"{name}: step {r['step_s']['median']:.2f}s = {r['ratio_to_matmul']['median']:.2f} of its matmul rate "
              f"({r['matmul_gflops']['median']:.0f} GFLOP/s); decoder alone {r['decoder_ratio_to_matmul']['median']:.2f}")
    print(f"bf16 step speed-up {result['bf16_vs_float32_step_speedup']:.2f}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
