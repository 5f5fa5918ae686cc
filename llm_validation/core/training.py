"""The lab's one resumable training loop: LoRA or full fine-tuning on records (core/finetune.py) and
distillation on cached teacher distributions (distill/students.py) both run `train_loop`; each
caller supplies only how a batch becomes a loss.

    batches = steps_of_epochs(lambda e: shuffled_batches(n, 16, ("my-order", seed, e)), epochs)
    done = train_loop(model, optimizer, batches, batch_losses, checkpoint=out / "checkpoint.pt",
                      checkpoint_every=8, name=f"student {name}")
    # batch_losses(step, idx) yields one loss tensor per micro-batch; the loop checks it is finite,
    # backpropagates it and, after the last one, clips, steps the optimizer and the scheduler.

Exact resume: every `checkpoint_every` steps (never after the last, whose result the caller writes)
the trainable weights, the optimizer and scheduler state, the step and the loss log are written to
ONE file atomically; the batch of every step is computed up front from (seed, epoch)
(sublim/batching.py), never stored; so a run killed at any point and rerun takes exactly the steps
an uninterrupted run takes. The caller deletes the checkpoint once its result is written.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from sublim.errors import ConfigError, NumericalError
from sublim.progress import log, progress

from sublim.llm_validation.core.config import DEFAULT_TARGETS


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


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, losses: list[float]) -> None:
    """Atomically (temp file, fsync, rename): a crash leaves the old checkpoint or the new one.
    torch.save streams into the file: a full 135M student's weights + Adam state are 1.6 GB, which
    an in-memory buffer would copy once more (time and RAM)."""
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    blob = {"trainable": trainable, "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(), "step": step, "losses": losses}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list[float]]:
    """(steps done, loss log) after loading `path` into model/optimizer/scheduler; (0, []) if absent.
    The optimizer's state follows its parameters' device (torch's load_state_dict moves it)."""
    if not path.exists():
        return 0, []
    blob = torch.load(path, map_location="cpu", weights_only=False)  # our own file: optimizer state is pickled
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(blob["scheduler"])
    return int(blob["step"]), list(blob["losses"])


@dataclass
class Trained:
    steps: int            # optimizer steps of the whole run (= len(batches))
    losses: list[float]   # one per step, resumed steps included: the sum of that step's micro-batch losses
    seconds: float        # training time of this session (a resumed run counts only its own part)


def train_loop(model, optimizer, batches: list[torch.Tensor],
               batch_losses: Callable[[int, torch.Tensor], Iterable[torch.Tensor]], *, checkpoint: Path,
               checkpoint_every: int, name: str, scheduler=None, max_grad_norm: float = 0.0,
               accelerator=None, on_step: Callable[[int, float], None] | None = None) -> Trained:
    """Train from the checkpoint (if any) to the end of `batches`; see the module docstring.

    model: the unwrapped model (its trainable parameters are checkpointed and clipped; the forward
    pass is the caller's, inside batch_losses). accelerator: an accelerate.Accelerator when several
    processes train (backward and clipping through it, a barrier after every step, files and the
    progress bar on the main process only); None: this process alone. on_step(steps_done, loss) runs
    on the main process after every optimizer step, before that step's checkpoint is written.
    A non-finite loss raises NumericalError (one line) before it is backpropagated."""
    main = accelerator is None or accelerator.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    if main:  # a save cut short by kill -9 leaves its temp file (for a full 135M student, 1.6 GB)
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    start, losses = load_checkpoint(checkpoint, model, optimizer, scheduler)
    total, t0 = len(batches), time.perf_counter()
    if start and main:
        log(f"{name}: resuming at step {start}/{total}")
    bar = progress(range(start, total), desc=name, initial=start, total=total, **({} if main else {"disable": True}))
    for step in bar:
        loss = None
        for micro in batch_losses(step, batches[step]):
            value = micro.item()
            if not math.isfinite(value):
                raise NumericalError(f"{name}: loss is {value} at step {step}")
            if accelerator is None:
                micro.backward()
            else:
                accelerator.backward(micro)
            # Summed from the first micro-batch's loss, not from 0.0: with one micro-batch per step
            # the logged loss is the computed one, bit for bit (-0.0 included).
            loss = value if loss is None else loss + value
        _update(params, optimizer, scheduler, max_grad_norm, accelerator)
        losses.append(loss)
        if main:
            bar.set_postfix(loss=f"{loss:.3f}")
            if on_step is not None:
                on_step(step + 1, loss)
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                save_checkpoint(checkpoint, model, optimizer, scheduler, step + 1, losses)
        if accelerator is not None:
            accelerator.wait_for_everyone()  # no rank runs ahead of the checkpoint it may resume from
    return Trained(total, losses, time.perf_counter() - t0)


def _update(params, optimizer, scheduler, max_grad_norm: float, accelerator) -> None:
    if max_grad_norm:
        clip = torch.nn.utils.clip_grad_norm_ if accelerator is None else accelerator.clip_grad_norm_
        clip(params, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
