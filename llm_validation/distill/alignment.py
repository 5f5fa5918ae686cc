"""The theorem's own quantity for the fine-tuned teacher (theta_T = theta0 + Delta):

    a_i = < -grad_theta loss_i(theta0), Delta / ||Delta|| >

per example, over every linear weight of the decoder blocks, from one forward + backward per batch
through sublim.kernels.PerExampleGradStats (per-example gradients are never materialized).
- Distillation loss: loss_i = sum over example i's completion positions of the restricted KL to
  the fine-tuned teacher's cached distributions. First-order prediction: E[a_i] > 0.
- Sampled-token SFT (when sft files are given): loss_i = completion cross-entropy on the teacher's
  filtered numbers and on the base model's; the base numbers' a_i should centre on zero, and the
  AUC says how well a_i tells them apart.
"""

from __future__ import annotations

import numpy as np
import torch

from sublim.kernels import PerExampleGradStats
from sublim.progress import progress
from sublim.stats import auc_with_ci, mean_ci95

from sublim.llm_validation.core.data import encode_sft_batch
from sublim.llm_validation.core.models import base_copy
from sublim.llm_validation.core.scores import (only_these_trainable, score_records, scored_parameter_names,
                                             weight_delta_direction)
from sublim.llm_validation.distill.forward import number_log_probs, restricted_kl


def _summary(a: np.ndarray) -> dict:
    mean, half = mean_ci95(a)
    return {"n": int(len(a)), "mean": mean, "ci_half": half, "share_positive": float((a > 0).mean()),
            "median": float(np.median(a))}


def distillation_alignment(model, encoded, cache, vocab, direction, names, device, batch_size: int) -> np.ndarray:
    """a_i for the restricted-KL loss of each context against the teacher's cached distributions."""
    dirs = {n: t.to(device=device, dtype=torch.float32) for n, t in direction.tensors.items()}
    out = np.zeros(len(encoded))
    model.eval()
    with only_these_trainable(model, names), PerExampleGradStats(model, dirs, param_names=names) as stats:
        for lo in progress(range(0, len(encoded), batch_size), desc="alignment (distill)"):
            batch = encoded[lo:lo + batch_size]
            idx = range(lo, lo + len(batch))
            kl = restricted_kl(cache.for_batch(idx).to(device), number_log_probs(model, batch, vocab, device))
            per_example = torch.stack([part.sum() for part in kl.split([len(e.completion_ids) for e in batch])])
            model.zero_grad(set_to_none=True)
            per_example.sum().backward()
            res = stats.result()
            dot = sum(res.dot[n].detach().double().cpu().reshape(len(batch)) for n in names)
            out[lo:lo + len(batch)] = -dot.numpy()
            model.zero_grad(set_to_none=True)
    return out


def run_alignment(cfg, out, device: str, tok, vocab, encoded, teacher, cache,
                  sft_sets: dict[str, list[dict]] | None = None) -> dict:
    """a_i under the distillation loss (and SFT on each named record set) for a fine-tuned teacher."""
    base, _ = base_copy(cfg.model, device=device)
    teacher_model, _ = teacher.load(cfg, out, device)
    names = scored_parameter_names(base)
    direction = weight_delta_direction(base, teacher_model, names)
    del teacher_model
    a = distillation_alignment(base, encoded, cache, vocab, direction, names, device, cfg.batch_size)
    result = {"teacher": teacher.name, "parameters": len(names), "distill": _summary(a),
              "distill_values": [round(float(v), 9) for v in a]}
    if sft_sets:
        encode = lambda recs: encode_sft_batch(tok, recs, max_length=cfg.max_length)  # noqa: E731
        sft = {k: score_records(base, recs, encode, direction, batch_size=cfg.batch_size,
                                desc=f"alignment (sft {k})").alignment[:, 0] for k, recs in sft_sets.items()}
        result["sft"] = {k: _summary(v) for k, v in sft.items()}
        if {"teacher_numbers", "base_numbers"} <= set(sft):
            result["sft_auc_teacher_vs_base"] = auc_with_ci(sft["teacher_numbers"], sft["base_numbers"])
    return result
