"""Students: an init (shared, or perturbed by sigma), full or LoRA, trained on the restricted KL.

Training is resumable: every `checkpoint_every` optimizer steps the trainable weights, the Adam
state and the step are written atomically to `checkpoint.pt`; the data order is a pure function of
(seed, epoch) and the LoRA init of the seed (sublim.seeding), so a run killed at any point and
rerun takes exactly the steps an uninterrupted one would. When training ends the student's
preference profile is written to `profile.json` and the checkpoint is deleted (a 135M-parameter
student is 0.5 GB; its numbers, not its weights, are the result).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from sublim.batching import length_bucketed_batches
from sublim.errors import NumericalError
from sublim.progress import progress
from sublim.seeding import derive_seed, torch_generator

from sublim.llm_validation.core.config import DEFAULT_TARGETS
from sublim.llm_validation.core.finetune import apply_lora
from sublim.llm_validation.distill.arms import StudentSpec

from sublim.llm_validation.distill.forward import number_log_probs, restricted_kl
from sublim.llm_validation.distill.methods import lora_rank, make_optimizer, kept_mean
from sublim.llm_validation.distill.parts import part_parameter_names


@torch.no_grad()
def perturb_(model, sigma: float, seed: int, part: str = "all") -> None:
    """theta <- theta + N(0, (sigma * std(theta))^2) per tensor of `part` (parts.py; the others untouched);
    sigma = 0 leaves theta untouched. A tensor's noise depends on (seed, name) only, so a part's
    perturbation is exactly the all-weights one restricted to that part."""
    if sigma == 0:
        return
    chosen = part_parameter_names(model, part)
    for name, p in ((n, p) for n, p in model.named_parameters() if n in chosen):
        g = torch_generator("distill-init", seed, name)
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
        p.add_(noise * (sigma * p.float().std().item()))


def make_student(base_model, spec: StudentSpec, cfg):
    """A student model ready to train (its init is the base, perturbed by spec.sigma)."""
    model = copy.deepcopy(base_model)
    perturb_(model, spec.sigma, spec.seed, spec.part)
    lora = lora_rank(spec.method, cfg)
    if lora:
        torch.manual_seed(derive_seed("distill-lora-init", spec.seed))
        model = apply_lora(model, r=lora[0], alpha=lora[1], dropout=0.0, target_modules=DEFAULT_TARGETS)
    model.config.use_cache = False
    return model


def _batches(lengths: list[int], batch_size: int, seed: int, epochs: int, window: int = 0) -> list[torch.Tensor]:
    """Every step's context indices; window = cfg.length_buckets (0: the plain seeded shuffle)."""
    return [b for epoch in range(epochs)
            for b in length_bucketed_batches(lengths, batch_size, window, ("distill-order", seed, epoch))]


def _save(path: Path, model, optimizer, step: int, losses: list[float]) -> None:
    """Atomically (temp file, fsync, rename). torch.save streams into the file: a full student's
    weights + Adam state are 1.6 GB, which an in-memory buffer would copy once more (time and RAM)."""
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"trainable": trainable, "optimizer": optimizer.state_dict(), "step": step, "losses": losses}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _restore(path: Path, model, optimizer) -> tuple[int, list[float]]:
    if not path.exists():
        return 0, []
    blob = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in blob["trainable"].items():
            params[n].copy_(v)
    optimizer.load_state_dict(blob["optimizer"])
    return int(blob["step"]), list(blob["losses"])


def train_student(model, encoded, cache, vocab, cfg, spec: StudentSpec, out_dir: Path, device, on_step=None,
                  keep: torch.Tensor | None = None) -> dict:
    """Distill `model` in place on the teacher's cached distributions; returns the training log.
    on_step(step, model), if given, runs after each optimizer step but the last (step = steps done;
    along.AlongTraining measures there), before that step's checkpoint is written. keep: a bool per
    cached position (None = all), the KL's mask for the mask_* methods (methods.py)."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    fast = cfg.fast_matmul != "off"  # the fast path also fuses Adam (one pass, not ~10)
    optimizer = make_optimizer(spec.method, params, cfg, fused=fast)
    lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in encoded]  # decoder input lengths
    batches = _batches(lengths, cfg.batch_size, spec.seed, cfg.epochs, cfg.length_buckets)
    ckpt = out_dir / "checkpoint.pt"
    start, losses = _restore(ckpt, model, optimizer)
    t0 = time.perf_counter()
    for step in progress(range(start, len(batches)), desc=f"student {spec.name}", initial=start, total=len(batches)):
        idx = batches[step]
        student = number_log_probs(model, [encoded[int(i)] for i in idx], vocab, device, cfg.fast_matmul)
        kl = restricted_kl(cache.for_batch(idx).to(device), student)
        loss = kept_mean(kl, None if keep is None else cache.for_batch(idx, keep).to(device))
        if not math.isfinite(loss.item()):
            raise NumericalError(f"student {spec.name}: loss is {loss.item()} at step {step}")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 8))
        if on_step is not None and step + 1 < len(batches):
            on_step(step + 1, model)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(batches):
            _save(ckpt, model, optimizer, step + 1, losses)
    model.eval()
    return {"steps": len(batches), "losses": losses, "train_seconds_this_session": time.perf_counter() - t0}
