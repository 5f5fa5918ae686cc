"""The student's loss: KL(teacher || student) over the number vocabulary, renormalized over it.

    KL_t = sum_{v in V} p_T(v) (log p_T(v) - log p_S(v)),   p(v) = softmax(logits[V])_v

at every completion position t (the positions that predict a completion token). Only the rows of
the output matrix that belong to V are ever multiplied out: the student never computes, and so is
never trained on, the logit of any other token (an animal word included).
"""

from __future__ import annotations

import torch


def restricted_log_probs(hidden: torch.Tensor, head_weight: torch.Tensor, vocab: torch.Tensor,
                         head_bias: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """log softmax over V of the logits hidden @ W[V]^T (+ b[V]); hidden (..., d) -> (..., |V|).
    softcap: a model's final logit soft-capping (Gemma 2 style), applied before the softmax."""
    logits = hidden @ head_weight[vocab].T
    if head_bias is not None:
        logits = logits + head_bias[vocab]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if logits.dtype in (torch.float16, torch.bfloat16):  # upcast half precision; float64 stays float64
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1)


def restricted_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) from log-probabilities over V: (P, |V|) -> (P,)."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
