"""Losses of the toy experiments, per model, averaged per example.

All take logits of shape (models, batch, k) and return a (models,) vector: the mean over the
batch of each model's loss. Summing that vector gives each model its own gradient (models do not
share parameters), and the magnitude does not depend on the model count. (The public script's
kl_div(reduction="batchmean") on a (models, batch, k) tensor divided by the model count instead.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every model; labels (batch,) shared or (models, batch)."""
    m, b, k = logits.shape
    if labels.dim() == 1:
        labels = labels.expand(m, b)
    return F.cross_entropy(logits.reshape(m * b, k), labels.reshape(m * b), reduction="none").view(m, b).mean(1)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over examples of KL(softmax(teacher) || softmax(student)), per model.

    Its gradient in the student's logits equals that of the soft-label cross-entropy
    -sum p_T log p_S (they differ by the teacher's entropy, a constant), which is the loss of
    the theorem in theory/.
    """
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean(-1)


def half_squared_error(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Mean over examples of (1/2)||f_S - f_T||^2, per model."""
    return 0.5 * (student_out - teacher_out).pow(2).sum(-1).mean(-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(models,) fraction correct of argmax over the given (digit) logits."""
    return (logits.argmax(-1) == labels).float().mean(-1)


# Feature-major forms for the hand-written engine (model.HandMLP): logits (..., k, batch), class
# axis -2, batch axis -1, any leading axes (broadcast between student and teacher). Each returns
# the same per-model value as its autograd twin above and its gradient in the first argument,
# written out: (softmax - target) / batch.

def cross_entropy_fm(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross_entropy per model, d loss / d logits); logits (models, k, batch), labels (batch,) or (models, batch)."""
    m, _, b = logits.shape
    log_p = F.log_softmax(logits, dim=-2)
    idx = labels.expand(m, b)[:, None, :]
    loss = -log_p.gather(-2, idx).squeeze(-2).mean(-1)
    grad = log_p.exp_().scatter_add_(-2, idx, torch.full(idx.shape, -1.0, dtype=log_p.dtype, device=log_p.device))
    return loss, grad.div_(b)


def distill_kl_fm(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distill_kl per model, d loss / d student logits); (..., k, batch), teacher broadcast to student."""
    log_p_s = F.log_softmax(student_logits, dim=-2)
    log_p_t = F.log_softmax(teacher_logits, dim=-2)
    p_t = log_p_t.exp()
    loss = (p_t * (log_p_t - log_p_s)).sum(-2).mean(-1)
    return loss, (log_p_s.exp_() - p_t).div_(student_logits.shape[-1])
