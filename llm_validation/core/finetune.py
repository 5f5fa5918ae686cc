"""Supervised fine-tuning of a student (or a trait teacher): LoRA via peft, or full; completion-only loss.

    out = finetune("smollm2-135m", records, FinetuneConfig(method="lora", epochs=3), "runs/x/student")
    model, tok = load_finetuned(out)          # core/models.py: merged, ordinary float model

Written to out_dir:
    config.json        FinetuneConfig + base model + world size + a hash of the data, written once
                       (sublim/rundir.py: claim_run_dir); another config or other data -> refused
    train_log.jsonl    one line per optimizer step (loss, lr, tokens) - append-only
    checkpoint/        trainable weights + optimizer + scheduler + step; replaced atomically every
                       `checkpoint_every` steps, so a crash loses at most that many steps
    adapter/ or model/ the result (peft adapter, or a full HF model directory)
    finetune.json      {"base_model", "method", "done": true, ...}: what load_finetuned() needs

Several processes: launch the same call under `accelerate launch` or `torchrun`; Accelerate wraps
the model in DDP (gloo on CPU, NCCL on GPU) and each rank takes its slice of every global batch.
Only rank 0 writes files. The data order is a function of (seed, epoch), so resume is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from sublim.errors import ConfigError, DataError, NumericalError, SublimError
from sublim.progress import log, progress
from sublim.rundir import atomic_write_json, check_run_config, claim_run_dir, read_json
from sublim.seeding import derive_seed, torch_generator

from sublim.llm_validation.core.data import append_jsonl, encode_sft_batch, read_jsonl, validate_records
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.config import DEFAULT_TARGETS, FinetuneConfig

def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(out_dir: Path, model, optimizer, scheduler, step: int, cfg_dict: dict) -> None:
    """Write checkpoint.tmp/ fully, then swap it in: a crash leaves the old or the new one."""
    tmp = out_dir / "checkpoint.tmp"
    final = out_dir / "checkpoint"
    old = out_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(_trainable_state(model), tmp / "trainable.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    atomic_write_json(tmp / "state.json", {"step": step, "config": cfg_dict})
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out_dir: Path, model, optimizer, scheduler, cfg_dict: dict) -> int:
    ckpt = out_dir / "checkpoint"
    if not ckpt.exists() and (out_dir / "checkpoint.old").exists():
        ckpt = out_dir / "checkpoint.old"  # crashed between the two renames
    if not (ckpt / "state.json").exists():
        return 0
    state = read_json(ckpt / "state.json")
    if state.get("config") != cfg_dict:
        raise SublimError(f"{out_dir}: a checkpoint from a different fine-tuning config exists; "
                          "use another output directory or delete it")
    trainable = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    opt = torch.load(ckpt / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return int(state["step"])


def _batch_indices(n: int, global_batch: int, step: int, steps_per_epoch: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at `step`: a seeded permutation per epoch, wrapped to fill."""
    epoch, inner = divmod(step, steps_per_epoch)
    gen = torch_generator("finetune-order", seed, epoch)
    perm = torch.randperm(n, generator=gen)
    idx = torch.arange(inner * global_batch, (inner + 1) * global_batch) % n
    return perm[idx]


def apply_lora(model, *, r: int, alpha: int, dropout: float = 0.0, target_modules=DEFAULT_TARGETS):
    """The lab's one LoRA application: `model` wrapped by peft with adapters on the target modules
    it has (a family without e.g. gate_proj keeps the rest); none present is a one-line error."""
    from peft import LoraConfig, get_peft_model  # peft costs ~1 s to import; full fine-tunes never need it

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in target_modules if t in names]
    if not targets:
        raise ConfigError(f"LoRA: none of the target modules {list(target_modules)} exist in this model")
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _apply_lora(model, cfg: FinetuneConfig):
    return apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules)


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
        _train(base_model, records, cfg, cfg_dict, out_dir, accelerator, model, tokenizer)
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
        model = _apply_lora(model, cfg)
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

    return params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def _train(base_model, records, cfg: FinetuneConfig, cfg_dict: dict, out_dir: Path, accelerator,
           model=None, tokenizer=None) -> None:
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    model, tokenizer = _prepare(base_model, records, cfg, model, tokenizer)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = max(1, math.ceil(len(records) / global_batch))
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    params, optimizer, scheduler = _optimizer(model, cfg, total_steps)
    start = _load_checkpoint(out_dir, model, optimizer, scheduler, cfg_dict)
    if start and is_main:
        log(f"finetune: resuming {out_dir} at step {start}/{total_steps}")
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    use_bf16 = bool(cfg.bf16 and device.type == "cuda")

    bar = progress(range(start, total_steps), desc=f"finetune {out_dir.name}", **({} if is_main else {"disable": True}))
    t0, tokens_seen = time.perf_counter(), 0
    for step in bar:
        idx = _batch_indices(len(records), global_batch, step, steps_per_epoch, cfg.seed)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            lo = (micro * world + rank) * cfg.batch_size
            batch = encode_sft_batch(tokenizer, [records[int(i)] for i in idx[lo:lo + cfg.batch_size]],
                                     max_length=cfg.max_length, system_field=cfg.system_field)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**batch).loss / cfg.grad_accum
            if not torch.isfinite(loss):
                raise NumericalError(f"finetune {out_dir}: loss is {loss.item()} at step {step}")
            accelerator.backward(loss)
            loss_sum += loss.item()
            tokens_seen += int(batch["attention_mask"].sum())
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if is_main:
            append_jsonl(out_dir / "train_log.jsonl", [{
                "step": step + 1, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                "tokens_per_s_rank0": tokens_seen / max(time.perf_counter() - t0, 1e-9)}])
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
                _save_checkpoint(out_dir, accelerator.unwrap_model(model), optimizer, scheduler, step + 1, cfg_dict)
        accelerator.wait_for_everyone()
    if is_main:
        _save_result(out_dir, accelerator.unwrap_model(model), tokenizer, cfg, base_model, total_steps, world,
                     time.perf_counter() - t0, tokens_seen)
    accelerator.wait_for_everyone()


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
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)


def _last_loss(out_dir: Path) -> float | None:
    path = out_dir / "train_log.jsonl"
    rows = read_jsonl(path, allow_truncated_tail=True) if path.exists() else []
    return rows[-1]["loss"] if rows else None
