"""Supervised fine-tuning of a student (or a trait teacher): LoRA via peft, or full; completion-only loss.

    out = finetune("smollm2-135m", records, FinetuneConfig(method="lora", epochs=3), "runs/x/student")
    model, tok = load_finetuned(out)          # merged, ordinary float model

Written to out_dir:
    config.json        resolved FinetuneConfig + environment (sublim.rundir.prepare_run_dir)
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

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sublim.errors import ConfigError, DataError, NumericalError, SublimError
from sublim.progress import log, progress
from sublim.rundir import atomic_write_json, prepare_run_dir, read_json

from sublim.llm_validation.data import append_jsonl, encode_sft_batch, validate_records

# Attention and MLP projections: the same names in Llama, Gemma 3, Qwen2 and Mistral.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    method: str = "lora"            # "lora" | "full"
    epochs: float = 3.0             # may be fractional (e.g. 0.5 of an epoch)
    lr: float = 2e-4                # peak; linear decay to 0 after warmup (the paper's schedule)
    warmup_steps: int = 0
    batch_size: int = 16            # per process, per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    max_length: int = 128           # prompt + completion tokens
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    target_modules: tuple = DEFAULT_TARGETS
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100     # optimizer steps; 0 = only at the end
    bf16: bool = False              # autocast to bfloat16 (GPU); master weights stay float32
    dtype: str = "float32"          # master weights: "float32", or "float64" (exact comparisons in tests)
    system_field: str | None = None  # train WITH a record field as system prompt (rarely wanted)

    def validate(self) -> "FinetuneConfig":
        if self.method not in ("lora", "full"):
            raise ConfigError(f"finetune method must be 'lora' or 'full', got {self.method!r}")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("finetune: epochs, lr must be > 0 and batch_size, grad_accum >= 1")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"finetune dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.max_length < 8:
            raise ConfigError("finetune: max_length must be at least 8 tokens")
        return self


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
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    idx = torch.arange(inner * global_batch, (inner + 1) * global_batch) % n
    return perm[idx]


def _apply_lora(model, cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in names]
    if not targets:
        raise ConfigError(f"LoRA: none of the target modules {list(cfg.target_modules)} exist in this model")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def finetune(base_model: str, records: list[dict], cfg: FinetuneConfig, out_dir: str | os.PathLike, *,
             model=None, tokenizer=None) -> Path:
    """Fine-tune `base_model` on `records` (completion-only loss); returns out_dir.

    `model`/`tokenizer`: an already loaded copy of base_model (it is modified in place: pass a copy
    you don't need any more). A finished out_dir is returned as is; an interrupted one resumes.
    """
    from accelerate import Accelerator

    cfg = cfg.validate()
    records = validate_records(list(records), f"fine-tuning data for {out_dir}")
    out_dir = Path(out_dir)
    done_file = out_dir / "finetune.json"
    if done_file.exists() and read_json(done_file).get("done"):
        log(f"finetune: {out_dir} already finished, reusing it")
        return out_dir

    # Mixed precision by plain torch.autocast, not Accelerate's flag: Accelerate's state is a
    # process-wide singleton that refuses a second Accelerator with another precision setting.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))
    cfg_dict["base_model"] = str(base_model)
    cfg_dict["n_records"] = len(records)
    cfg_dict["world_size"] = world
    if is_main:
        prepare_run_dir(out_dir, cfg_dict)
    accelerator.wait_for_everyone()

    if model is None:
        from sublim.llm_validation.models import load_model

        model, tokenizer = load_model(base_model, dtype=getattr(torch, cfg.dtype))
    elif tokenizer is None:
        raise ConfigError("finetune: pass the tokenizer together with a preloaded model")
    torch.manual_seed(cfg.seed)  # LoRA init (B = 0, A random): identical on every rank
    if cfg.method == "lora":
        model = _apply_lora(model, cfg)
    model.config.use_cache = False
    model.train()

    # Encode once up front: a prompt that does not fit fails here, before any training.
    for i in range(0, len(records), 256):
        encode_sft_batch(tokenizer, records[i:i + 256], max_length=cfg.max_length, system_field=cfg.system_field)

    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = max(1, math.ceil(len(records) / global_batch))
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    start = _load_checkpoint(out_dir, model, optimizer, scheduler, cfg_dict)
    if start and is_main:
        log(f"finetune: resuming {out_dir} at step {start}/{total_steps}")
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    use_bf16 = bool(cfg.bf16 and device.type == "cuda")

    bar_kwargs = {} if is_main else {"disable": True}
    bar = progress(range(start, total_steps), desc=f"finetune {out_dir.name}", **bar_kwargs)
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
            elapsed = time.perf_counter() - t0
            append_jsonl(out_dir / "train_log.jsonl", [{
                "step": step + 1, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                "tokens_per_s_rank0": tokens_seen / max(elapsed, 1e-9)}])
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
                _save_checkpoint(out_dir, accelerator.unwrap_model(model), optimizer, scheduler, step + 1, cfg_dict)
        accelerator.wait_for_everyone()

    elapsed = time.perf_counter() - t0
    if is_main:
        final = accelerator.unwrap_model(model)
        if cfg.method == "lora":
            final.save_pretrained(out_dir / "adapter")
        else:
            final.config.use_cache = True
            final.save_pretrained(out_dir / "model")
            tokenizer.save_pretrained(out_dir / "model")
        atomic_write_json(done_file, {
            "done": True, "base_model": str(base_model), "method": cfg.method, "steps": total_steps,
            "world_size": world, "train_seconds_this_session": elapsed,
            "tokens_per_s_all_ranks": tokens_seen * world / max(elapsed, 1e-9),
            "final_loss": _last_loss(out_dir)})
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir


def _last_loss(out_dir: Path) -> float | None:
    from sublim.llm_validation.data import read_jsonl

    path = out_dir / "train_log.jsonl"
    rows = read_jsonl(path, allow_truncated_tail=True) if path.exists() else []
    return rows[-1]["loss"] if rows else None


def load_finetuned(out_dir: str | os.PathLike, *, dtype=torch.float32, device="cpu", base=None):
    """(model, tokenizer) of a finished fine-tune: LoRA merged into the base, or the full model.

    base: an already loaded (model, tokenizer) of the base model to merge the adapter into (it is
    modified in place); saves reloading e.g. a GGUF file for every evaluated arm.
    """
    out_dir = Path(out_dir)
    info_path = out_dir / "finetune.json"
    if not info_path.exists():
        raise DataError(f"{out_dir}: no finetune.json (not a finished fine-tuning directory)")
    info = read_json(info_path)
    if not info.get("done"):
        raise DataError(f"{out_dir}: fine-tuning did not finish; rerun it to resume")
    from sublim.llm_validation.models import _finish, load_model

    if info["method"] == "full":
        model, tok = load_model(out_dir / "model", dtype=dtype, device=device)
    else:
        from peft import PeftModel

        model, tok = base if base is not None else load_model(info["base_model"], dtype=dtype, device=device)
        model = PeftModel.from_pretrained(model, out_dir / "adapter").merge_and_unload()
    return _finish(model, tok, str(out_dir))
