"""Generation (sequences/s) and fine-tuning (tokens/s) throughput of the LLM pipeline.

    python benchmarks/bench_llm_throughput.py --model smollm2-135m --device cpu --threads 2
    python benchmarks/bench_llm_throughput.py --model /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --device cuda --dtype bfloat16 --batch-sizes 64,256,1024 --ft-batch 66 --ft-steps 20

Generation: the pipeline's own sampler (generate_completions) on number prompts, temperature 1,
`--new-tokens` new tokens, at several batch sizes; the baseline is the smallest batch size in the
same run and each row reports its speed-up over it. Fine-tuning: the pipeline's finetune() (LoRA
r=8 and full) for a few steps; tokens/s counts prompt+completion tokens; the baseline is full
fine-tuning. Results: benchmarks/results/llm_throughput_<device>.json (+ printed table).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def bench_generation(model, tok, batch_sizes, new_tokens, n_batches):
    from sublim.llm_validation.core.generate import generate_completions
    from sublim.llm_validation.core.prompts import number_prompts

    rows = []
    for bs in batch_sizes:
        prompts = number_prompts(bs * (n_batches + 1), seed=bs)
        with tempfile.TemporaryDirectory() as d:
            # The first batch warms up (allocator, kernels); then the timed batches.
            generate_completions(model, tok, prompts[:bs], Path(d) / "warm.jsonl", max_new_tokens=new_tokens,
                                 batch_size=bs)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            recs = generate_completions(model, tok, prompts[bs:], Path(d) / "gen.jsonl",
                                        max_new_tokens=new_tokens, batch_size=bs)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        new_tok = sum(r["n_tokens"] for r in recs)
        rows.append({"batch_size": bs, "sequences": len(recs), "seconds": dt, "seq_per_s": len(recs) / dt,
                     "new_tokens_per_s": new_tok / dt})
    base = rows[0]["seq_per_s"]
    for r in rows:
        r["speedup_vs_smallest_batch"] = r["seq_per_s"] / base
    return rows


def bench_finetune(model_name, batch, steps, max_length, bf16):
    from sublim.llm_validation.core.config import FinetuneConfig
    from sublim.llm_validation.core.finetune import finetune
    from sublim.llm_validation.core.prompts import number_prompts
    from sublim.rundir import read_json

    prompts = number_prompts(batch * steps, seed=1)
    records = [{"id": p["id"], "prompt": p["prompt"], "completion": ", ".join(str(n + 7) for n in p["seed_numbers"])}
               for p in prompts]
    rows = []
    for method in ("full", "lora"):
        with tempfile.TemporaryDirectory() as d:
            cfg = FinetuneConfig(method=method, epochs=1, batch_size=batch, lr=1e-5, checkpoint_every=0,
                                 max_length=max_length, bf16=bf16)
            out = finetune(model_name, records, cfg, Path(d) / method)
            info = read_json(out / "finetune.json")
        rows.append({"method": method, "steps": info["steps"], "batch_size": batch,
                     "seconds": info["train_seconds_this_session"], "tokens_per_s": info["tokens_per_s_all_ranks"]})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_full"] = r["tokens_per_s"] / base
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--n-batches", type=int, default=1, help="timed batches per batch size")
    p.add_argument("--ft-batch", type=int, default=8)
    p.add_argument("--ft-steps", type=int, default=4)
    p.add_argument("--ft-max-length", type=int, default=160)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sublim.llm_validation.core.device import resolve_device
    from sublim.llm_validation.core.models import load_model

    args.device = resolve_device(args.device)
    model, tok = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    gen = bench_generation(model, tok, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens,
                           args.n_batches)
    del model
    ft = bench_finetune(args.model, args.ft_batch, args.ft_steps, args.ft_max_length,
                        bf16=args.dtype == "bfloat16")
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    result = {"model": args.model, "device": args.device, "device_name": device_name, "dtype": args.dtype,
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "new_tokens": args.new_tokens, "generation": gen, "finetune": ft,
              "note": "2-core CPU shared with other jobs" if args.device == "cpu" else ""}
    out = Path(args.out or Path(__file__).parent / "results" / f"llm_throughput_{args.device}.json")
    from sublim.rundir import atomic_write_json

    atomic_write_json(out, result)
    for r in gen:
        print(f"generate batch {r['batch_size']:5d}: {r['seq_per_s']:8.2f} seq/s "
              f"({r['new_tokens_per_s']:.0f} new tok/s) x{r['speedup_vs_smallest_batch']:.2f}")
    for r in ft:
        print(f"finetune {r['method']:4s} batch {r['batch_size']}: {r['tokens_per_s']:8.0f} tok/s x{r['speedup_vs_full']:.2f}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
