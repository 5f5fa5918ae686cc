"""Batched, resumable sampling: prompts in, one JSONL line per finished completion out.

    records = generate_completions(model, tok, prompts, "run/raw_teacher.jsonl",
                                   system=trait_system_prompt("owl"), max_new_tokens=48)

Each prompt record needs "id" and "prompt". The output file is append-only: a batch's records are
written (and fsync'd) as soon as the batch finishes, and a restart skips every id already in the
file, so a crash loses at most the batch in flight; batches are fixed slices of the prompt list and
each is seeded from its prompt ids, so the resumed file equals an uninterrupted run's. Several processes (torchrun/accelerate, or
rank/world arguments) each take every world-th prompt and write their own shard file
`<name>.rank<r>.jsonl`; `read_generations` merges the shards.

Backend: Hugging Face `generate`.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import torch

from sublim.errors import ConfigError, DataError
from sublim.progress import log, progress
from sublim.seeding import derive_seed

from sublim.llm_validation.core.data import append_jsonl, format_prompt, has_chat_template, iter_jsonl
from sublim.llm_validation.core.models import context_length


def shard_path(out_path: Path, rank: int, world: int) -> Path:
    return out_path if world == 1 else out_path.with_name(f"{out_path.stem}.rank{rank}{out_path.suffix}")


def read_generations(out_path: str | os.PathLike) -> list[dict]:
    """All records of a generation file and its rank shards (a crash-truncated last line is skipped)."""
    out_path = Path(out_path)
    paths = [out_path] if out_path.exists() else []
    paths += sorted(Path(p) for p in glob.glob(str(out_path.with_name(f"{out_path.stem}.rank*{out_path.suffix}"))))
    seen, records = set(), []
    for p in paths:
        for rec in iter_jsonl(p, allow_truncated_tail=True):
            if rec["id"] not in seen:
                seen.add(rec["id"])
                records.append(rec)
    return records


def fixed_batches(prompts: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive slices of the (rank's) prompt list: a batch is fixed by its position in the
    list, never by what remains to do, so a rerun after a crash meets the same batches. Prompt
    lists only grow by extension (prompts.number_prompts is prefix-stable), which leaves every
    full batch unchanged. No sorting by length: a sorted order would regroup on extension."""
    return [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]


def _check_context(model, tokenizer, prompts, system, history, max_new_tokens) -> None:
    limit = context_length(model)
    for p in prompts:
        n = len(tokenizer(format_prompt(tokenizer, p["prompt"], system=system, history=history),
                          add_special_tokens=False)["input_ids"])
        if n + max_new_tokens > limit:
            raise DataError(f"prompt {p['id']}: {n} tokens + {max_new_tokens} new tokens exceed the "
                            f"model's context of {limit}")


def _distributed_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@torch.no_grad()
def _sample_batch(model, tokenizer, texts: list[str], *, max_new_tokens: int, temperature: float,
                  top_p: float, logits_processor=None) -> list[tuple[str, bool, int]]:
    """[(completion text, stopped at end-of-turn?, new token count)] for one batch (left-padded)."""
    enc = tokenizer(texts, return_tensors="pt", padding=True,
                    add_special_tokens=not has_chat_template(tokenizer)).to(model.device)
    eos = tokenizer.eos_token_id
    out = model.generate(**enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                         top_p=top_p if temperature > 0 else None, top_k=0 if temperature > 0 else None,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=eos, logits_processor=logits_processor)
    new = out[:, enc["input_ids"].shape[1]:]
    results = []
    for row in new:
        ids = row.tolist()
        stopped = eos in ids
        if stopped:
            ids = ids[: ids.index(eos)]
        results.append((tokenizer.decode(ids, skip_special_tokens=True).strip(), stopped, len(ids)))
    return results


def generate_completions(model, tokenizer, prompts: list[dict], out_path: str | os.PathLike, *,
                         system: str | None = None, max_new_tokens: int = 48, batch_size: int = 64,
                         temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                         writer: str = "", rank: int | None = None, world: int | None = None,
                         extra_fields: dict | None = None, logits_processor=None,
                         history: list[tuple[str, str]] | None = None) -> list[dict]:
    """Sample one completion per prompt record; append to out_path; return ALL finished records.

    Records written: {"id", "prompt", "completion", "stopped", "n_tokens", "teacher": writer, ...}
    plus the prompt record's other fields and `extra_fields`. (Over 60 lines because the resume
    bookkeeping, the rank sharding and the batch loop share the same prompt list and file.)
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError("generate: batch_size and max_new_tokens must be >= 1")
    if rank is None or world is None:
        rank, world = _distributed_rank_world()
    out_path = Path(out_path)
    mine = shard_path(out_path, rank, world)
    done = {r["id"] for r in read_generations(out_path)}
    batches = fixed_batches([p for i, p in enumerate(prompts) if i % world == rank], batch_size)
    batches = [b for b in batches if any(p["id"] not in done for p in b)]
    if not batches:
        return read_generations(out_path)
    _check_context(model, tokenizer, [p for b in batches for p in b], system, history, max_new_tokens)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    t0, n_done = time.perf_counter(), 0
    try:
        bar = progress(total=sum(len(b) for b in batches), desc=f"generate {out_path.stem}", unit="seq")
        for batch in batches:
            # The batch's stream is a function of its ids alone (sublim/seeding.py), so a resumed
            # run redraws exactly what an uninterrupted one draws; a batch that a crash left half
            # written is resampled whole (same seed, same neighbours) and only its missing ids kept.
            torch.manual_seed(derive_seed("generate", seed, *(p["id"] for p in batch)))
            texts = [format_prompt(tokenizer, p["prompt"], system=system, history=history) for p in batch]
            results = _sample_batch(model, tokenizer, texts, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, logits_processor=logits_processor)
            batch_records = []
            for p, (completion, stopped, n_tok) in zip(batch, results):
                if p["id"] in done:
                    continue
                rec = {**p, "completion": completion, "stopped": stopped, "n_tokens": n_tok, "teacher": writer}
                if extra_fields:
                    rec.update(extra_fields)
                batch_records.append(rec)
            append_jsonl(mine, batch_records)
            n_done += len(batch_records)
            bar.update(len(batch))
        bar.close()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    elapsed = time.perf_counter() - t0
    speed = n_done / max(elapsed, 1e-9)
    log(f"generate {out_path.name}: {n_done} sequences in {elapsed:.1f}s ({speed:.1f} seq/s)")
    # Throughput of every session, beside the data (the GPU run's generation benchmark).
    append_jsonl(out_path.with_name(f"{out_path.stem}.throughput{out_path.suffix}"), [{
        "rank": rank, "sequences": n_done, "seconds": elapsed, "seq_per_s": speed, "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", "")}])
    return read_generations(out_path)
