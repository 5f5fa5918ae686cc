"""Whole-data-set alignment scoring throughput: one backward per batch (sublim.kernels) vs the naive
approach (one backward per example, explicit gradients, dot with D), measured in the same run.

    python benchmarks/bench_alignment.py --model smollm2-135m --n 64 --naive-n 16        # CPU
    python benchmarks/bench_alignment.py --model /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --n 512 --naive-n 64 --batch-size 32 --k 6                                       # GPU

Examples: number-sequence records built from the pipeline's prompt generator with seeded random
completions (3-10 numbers), so lengths look like the real data sets. Directions: k seeded random
Gaussian directions over every decoder linear weight (throughput does not depend on what D is).
The naive path runs on the first --naive-n examples only (it is slow), and both paths' scores on
those examples are compared (max relative difference) so a fast-but-wrong result cannot pass.
Writes benchmarks/results/alignment_<device>.json (device = "cpu" or the GPU's name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sublim.llm_validation.core.scores import normalize_directions, reference_scores, score_records, scored_parameter_names
from sublim.llm_validation.core.data import encode_sft_batch
from sublim.llm_validation.core.device import resolve_device
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.prompts import number_prompts
from sublim.rundir import atomic_write_json, environment_info


def synthetic_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for p in number_prompts(n, seed):
        nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(3, 10))]
        out.append({"id": p["id"], "prompt": p["prompt"], "completion": ", ".join(nums)})
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=64, help="examples scored by the batched path")
    ap.add_argument("--naive-n", type=int, default=16, help="examples scored by the naive per-example path")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--k", type=int, default=1, help="number of directions")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--backends", default="auto,torch", help="kernel backends to time (auto = triton on GPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/alignment_<device>.json)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    dev_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    dtype = getattr(torch, args.dtype)
    t = time.perf_counter()
    model, tok = load_model(args.model, dtype=dtype, device=device)
    load_s = time.perf_counter() - t
    names = scored_parameter_names(model)
    gen = torch.Generator().manual_seed(0)
    raw = {n: torch.randn((args.k, *p.shape), generator=gen) for n, p in model.named_parameters() if n in names}
    dirs = normalize_directions([f"rand{i}" for i in range(args.k)], raw)
    del raw
    records = synthetic_records(max(args.n, args.naive_n), seed=0)
    encode = lambda recs: encode_sft_batch(tok, list(recs), max_length=args.max_length)  # noqa: E731
    n_tokens = float(np.mean([int((encode([r])["labels"] != -100).sum()) for r in records[:32]]))

    result = {"device": dev_name, "model": args.model, "dtype": args.dtype, "k": args.k, "batch_size": args.batch_size,
              "n_weight_matrices": len(names), "n_scored_params": int(sum(p.numel() for n, p in model.named_parameters() if n in names)),
              "mean_completion_tokens": n_tokens, "model_load_s": load_s, "threads": args.threads,
              "environment": environment_info(), "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "paths": {}}

    # warm-up (kernel compilation, allocator) on one batch of each path, not timed
    for backend in args.backends.split(","):
        score_records(model, records[: args.batch_size], encode, dirs, batch_size=args.batch_size, backend=backend)
    reference_scores(model, records[:1], encode, dirs)

    sync(device)
    t = time.perf_counter()
    naive = reference_scores(model, records[: args.naive_n], encode, dirs)
    sync(device)
    naive_s = time.perf_counter() - t
    result["paths"]["naive_per_example_backward"] = {"n": args.naive_n, "seconds": naive_s, "examples_per_s": args.naive_n / naive_s}
    print(f"naive (one backward per example): {args.naive_n / naive_s:.2f} examples/s")

    for backend in args.backends.split(","):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        fast = score_records(model, records[: args.n], encode, dirs, batch_size=args.batch_size, backend=backend)
        sync(device)
        fast_s = time.perf_counter() - t
        m = min(args.naive_n, args.n)
        rel = float(np.abs(fast.dot[:m] - naive.dot[:m]).max() / max(np.abs(naive.dot[:m]).max(), 1e-30))
        rel_sq = float(np.abs(fast.sq_norm[:m] - naive.sq_norm[:m]).max() / max(np.abs(naive.sq_norm[:m]).max(), 1e-30))
        entry = {"n": args.n, "seconds": fast_s, "examples_per_s": args.n / fast_s,
                 "speedup_vs_naive": (args.n / fast_s) / (args.naive_n / naive_s),
                 "max_rel_diff_dot_vs_naive": rel, "max_rel_diff_sq_norm_vs_naive": rel_sq}
        if device == "cuda":
            entry["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["paths"][f"batched_kernels_{backend}"] = entry
        print(f"batched, backend={backend}: {entry['examples_per_s']:.2f} examples/s "
              f"({entry['speedup_vs_naive']:.1f}x naive; max rel diff dot {rel:.1e}, sq norm {rel_sq:.1e})")

    slug = re.sub(r"[^A-Za-z0-9]+", "_", dev_name).strip("_").lower()
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"alignment_{slug}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
