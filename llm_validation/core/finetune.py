"""Supervised fine-tuning of a student (or a trait teacher): LoRA via peft, or full; completion-only loss.

    out = finetune("smollm2-135m", records, FinetuneConfig(method="lora", epochs=3), "runs/x/student")
    model, tok = load_finetuned(out)          # core/models.py: merged, ordinary float model

Written to out_dir:
    config.json        FinetuneConfig + base model + world size + a hash of the data, written once
                       (sublim/rundir.py: claim_run_dir); another config or other data -> refused
    train_log.jsonl    one line per optimizer step (loss, lr, tokens) - append-only
    checkpoint.pt      trainable weights + optimizer + scheduler + step + losses; replaced atomically
                       every `checkpoint_every` steps, so a crash loses at most that many steps
                       (core/training.py: the loop and checkpoint format distill's students share)
    adapter/ or model/ the result (peft adapter, or a full HF model directory)
    finetune.json      {"base_model", "method", "done": true, ...}: what load_finetuned() needs

Several processes: launch the same call under `accelerate launch` or `torchrun`; Accelerate wraps
the model in DDP (gloo on CPU, NCCL on GPU) and each rank takes its slice of every global batch.
Only rank 0 writes files. The data order is a function of (seed, epoch), so resume is exact.
What is fine-tuning's own: the order (full global batches, sublim/batching.py: full_batches), the
completion-only loss of each micro-batch, the linear schedule and train_log.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from sublim.batching import full_batches, steps_of_epochs
from sublim.errors import ConfigError
from sublim.progress import log
from sublim.rundir import atomic_write_json, check_run_config, claim_run_dir, read_json
from sublim.seeding import derive_seed

from sublim.llm_validation.core.data import append_jsonl, encode_sft_batch, read_jsonl, validate_records
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.training import apply_lora, train_loop


def finetune(base_model: str, records: list[dict], cfg: FinetuneConfig, out_dir: str | os.PathLike, *,
             model=None, tokenizer=None) -> Path:
    """Fine-tune `base_model` on `records` (completion-only loss); returns out_dir.

    `model`/`tokenizer`: an already loaded copy of base_model (it is modified in place: pass a copy
    you don't need any more). A finished out_dir is returned as is; an interrupted one resumes.
    """
    from accelerate import Accelerator

    records = validate_records(list(records), f"fine-tuning data for {out_dir}")
    out_dir = Path(out_dir)
    # Mixed precision by plain torch.autocast, not Accelerate's flag: Accelerate's state is a
    # process-wide singleton that refuses a second Accelerator with another precision setting.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    cfg_dict = _identity(base_model, records, cfg, accelerator.num_processes)
    check_run_config(out_dir, cfg_dict)  # another config or other data: refused, nothing touched
    done_file = out_dir / "finetune.json"
    if done_file.exists() and read_json(done_file).get("done"):
        log(f"finetune: {out_dir} already finished, reusing it")
        return out_dir
    with contextlib.ExitStack() as claim:
        if accelerator.is_main_process:  # rank 0 owns the directory (lock, config.json)
            claim.enter_context(claim_run_dir(out_dir, cfg_dict))
        accelerator.wait_for_everyone()
        _train(base_model, records, cfg, out_dir, accelerator, model, tokenizer)
    return out_dir


def _identity(base_model, records: list[dict], cfg: FinetuneConfig, world: int) -> dict:
    """What a fine-tuning directory is: its config, base model, world size and a hash of its data
    (a rerun on other records must not resume, nor reuse, a directory trained on these)."""
    data = json.dumps([[r["id"], r["prompt"], r["completion"]] for r in records], ensure_ascii=False)
    return {**json.loads(json.dumps(dataclasses.asdict(cfg))), "base_model": str(base_model),
            "n_records": len(records), "data_sha256": hashlib.sha256(data.encode()).hexdigest()[:16],
            "world_size": world}


def _prepare(base_model, records, cfg: FinetuneConfig, model, tokenizer):
    """(model with LoRA or all weights trainable, tokenizer); every record encoded once up front, so
    a prompt that does not fit fails here, before any training."""
    if model is None:
        model, tokenizer = load_model(base_model, dtype=getattr(torch, cfg.dtype))
    elif tokenizer is None:
        raise ConfigError("finetune: pass the tokenizer together with a preloaded model")
    torch.manual_seed(derive_seed("lora-init", cfg.seed))  # LoRA init (B = 0, A random): identical on every rank
    if cfg.method == "lora":
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.target_modules)
    model.config.use_cache = False
    model.train()
    for i in range(0, len(records), 256):
        encode_sft_batch(tokenizer, records[i:i + 256], max_length=cfg.max_length, system_field=cfg.system_field)
    return model, tokenizer


def _optimizer(model, cfg: FinetuneConfig, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def _train(base_model, records, cfg: FinetuneConfig, out_dir: Path, accelerator,
           model=None, tokenizer=None) -> None:
    world = accelerator.num_processes
    model, tokenizer = _prepare(base_model, records, cfg, model, tokenizer)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    batches = steps_of_epochs(lambda epoch: full_batches(len(records), global_batch, ("finetune-order", cfg.seed, epoch)),
                              cfg.epochs)
    optimizer, scheduler = _optimizer(model, cfg, len(batches))
    model, optimizer = accelerator.prepare(model, optimizer)
    stats = {"t0": time.perf_counter(), "tokens": 0}  # this session's tokens/s, rank 0's own micro-batches

    def log_step(done: int, loss: float) -> None:
        append_jsonl(out_dir / "train_log.jsonl", [{
            "step": done, "loss": loss, "lr": scheduler.get_last_lr()[0],
            "tokens_per_s_rank0": stats["tokens"] / max(time.perf_counter() - stats["t0"], 1e-9)}])

    trained = train_loop(accelerator.unwrap_model(model), optimizer, batches,
                         _sft_losses(model, tokenizer, records, cfg, accelerator, stats), checkpoint=out_dir / "checkpoint.pt",
                         checkpoint_every=cfg.checkpoint_every, name=f"finetune {out_dir}", scheduler=scheduler,
                         max_grad_norm=cfg.max_grad_norm, accelerator=accelerator, on_step=log_step)
    if accelerator.is_main_process:
        _save_result(out_dir, accelerator.unwrap_model(model), tokenizer, cfg, base_model, trained.steps, world,
                     time.perf_counter() - stats["t0"], stats["tokens"])
    accelerator.wait_for_everyone()


def _sft_losses(model, tokenizer, records, cfg: FinetuneConfig, accelerator, stats: dict):
    """batch_losses for train_loop: this rank's grad_accum micro-batches of the global batch `idx`
    (micro-batch m of rank r is slice m * world + r), each one's completion-only loss / grad_accum."""
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    use_bf16 = bool(cfg.bf16 and device.type == "cuda")

    def batch_losses(step: int, idx: torch.Tensor):
        for micro in range(cfg.grad_accum):
            lo = (micro * world + rank) * cfg.batch_size
            batch = encode_sft_batch(tokenizer, [records[int(i)] for i in idx[lo:lo + cfg.batch_size]],
                                     max_length=cfg.max_length, system_field=cfg.system_field)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**batch).loss / cfg.grad_accum
            yield loss  # train_loop checks and backpropagates it before asking for the next
            stats["tokens"] += int(batch["attention_mask"].sum())

    return batch_losses


def _save_result(out_dir: Path, final, tokenizer, cfg: FinetuneConfig, base_model, total_steps: int, world: int,
                 elapsed: float, tokens_seen: int) -> None:
    if cfg.method == "lora":
        final.save_pretrained(out_dir / "adapter")
    else:
        final.config.use_cache = True
        final.save_pretrained(out_dir / "model")
        tokenizer.save_pretrained(out_dir / "model")
    atomic_write_json(out_dir / "finetune.json", {
        "done": True, "base_model": str(base_model), "method": cfg.method, "steps": total_steps,
        "world_size": world, "train_seconds_this_session": elapsed,
        "tokens_per_s_all_ranks": tokens_seen * world / max(elapsed, 1e-9),
        "final_loss": _last_loss(out_dir)})
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)


def _last_loss(out_dir: Path) -> float | None:
    path = out_dir / "train_log.jsonl"
    rows = read_jsonl(path, allow_truncated_tail=True) if path.exists() else []
    return rows[-1]["loss"] if rows else None
