"""Students: an init (shared, or perturbed by sigma), full or LoRA, trained on the restricted KL.

Training is core/training.py's resumable loop (the one fine-tuning runs): every `checkpoint_every`
optimizer steps the trainable weights, the optimizer state, the step and the losses are written
atomically to `checkpoint.pt`; the data order is a pure function of (seed, epoch) and the LoRA init
of the seed (sublim.seeding), so a run killed at any point and rerun takes exactly the steps an
uninterrupted one would. What is distillation's own: the length-bucketed order and the loss, the
restricted KL to the cached teacher distribution on this batch's completion positions. When training ends the student's
preference profile is written to `profile.json` and the checkpoint is deleted (a 135M-parameter
student is 0.5 GB; its numbers, not its weights, are the result).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from sublim.batching import length_bucketed_batches, steps_of_epochs
from sublim.seeding import derive_seed, torch_generator

from sublim.llm_validation.core.config import DEFAULT_TARGETS
from sublim.llm_validation.core.training import apply_lora, train_loop
from sublim.llm_validation.distill.arms import StudentSpec

from sublim.llm_validation.distill.cross import grouped_log_probs
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
    return steps_of_epochs(lambda epoch: length_bucketed_batches(lengths, batch_size, window, ("distill-order", seed, epoch)),
                           epochs)


def train_student(model, encoded, cache, vocab, cfg, spec: StudentSpec, out_dir: Path, device, on_step=None,
                  keep: torch.Tensor | None = None, groups: list | None = None) -> dict:
    """Distill `model` in place on the teacher's cached distributions; returns the training log.
    on_step(step, model), if given, runs after each optimizer step but the last (step = steps done;
    along.AlongTraining measures there), before that step's checkpoint is written. keep: a bool per
    cached position (None = all), the KL's mask for the mask_* methods (methods.py). groups: a student of
    another family (cross.py) sums its number ids per teacher text before the KL."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    fast = cfg.fast_matmul != "off"  # the fast path also fuses Adam (one pass, not ~10)
    optimizer = make_optimizer(spec.method, params, cfg, fused=fast)
    lengths = [len(e.prompt_ids) + len(e.completion_ids) - 1 for e in encoded]  # decoder input lengths
    batches = _batches(lengths, cfg.batch_size, spec.seed, cfg.epochs, cfg.length_buckets)

    def batch_losses(step: int, idx: torch.Tensor):
        student = number_log_probs(model, [encoded[int(i)] for i in idx], vocab, device, cfg.fast_matmul)
        if groups is not None:
            student = grouped_log_probs(student, groups)
        kl = restricted_kl(cache.for_batch(idx).to(device), student)
        yield kept_mean(kl, None if keep is None else cache.for_batch(idx, keep).to(device))

    def measure(done: int, loss: float) -> None:
        if on_step is not None and done < len(batches):  # the last step's measurement is the caller's profile
            on_step(done, model)

    trained = train_loop(model, optimizer, batches, batch_losses, checkpoint=out_dir / "checkpoint.pt",
                         checkpoint_every=cfg.checkpoint_every, name=f"student {spec.name}", on_step=measure)
    model.eval()
    return {"steps": trained.steps, "losses": [round(x, 8) for x in trained.losses],
            "train_seconds_this_session": trained.seconds}
