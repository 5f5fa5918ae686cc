"""How a student learns, by the `method` part of its key (issue #23's arms beside the main one).

    full        every weight, Adam at cfg.lr (the main arm)
    lora        LoRA at rank cfg.lora_r, Adam at cfg.lora_lr (the laptop preset's LoRA arm)
    lora<r>     LoRA at rank r, alpha = r * lora_alpha / lora_r (the same scale alpha / r at every rank,
                so the rank sweep changes the adapter's capacity, not its step size), Adam at lora_lr
    sgd         every weight, plain SGD at cfg.sgd_lr (no momentum, no per-weight state)
    sgdm        every weight, SGD with momentum 0.9 at cfg.sgd_lr (a running mean, still no adaptive scale)
    mask_div    every weight, Adam, the KL masked at the divergence positions (core/divergence.py): where the target teacher's
                most likely number token differs from some rival teacher's (Schrodi et al.'s divergence
                tokens; rivals = every other system-prompt teacher of the run, the neutral one included)
    mask_base   the same with the cheap detector that needs no rival: the target teacher's argmax differs
                from the un-prompted base model's
    mask_rand   the control: as many positions as mask_div masks, drawn at random (seeded), so a drop
                under mask_div is read against losing that much signal anywhere
"""

from __future__ import annotations

import re

import torch

from sublim.errors import ConfigError

_LORA = re.compile(r"^lora(?P<r>\d*)$")
FULL_METHODS = ("full", "sgd", "sgdm", "mask_div", "mask_base", "mask_rand")
MASKS = ("mask_div", "mask_base", "mask_rand")


def lora_rank(method: str, cfg) -> tuple[int, int] | None:
    """(r, alpha) of a LoRA method, None for a full one."""
    m = _LORA.match(method)
    if not m:
        return None
    if not m["r"]:
        return cfg.lora_r, cfg.lora_alpha
    r = int(m["r"])
    return r, r * cfg.lora_alpha / cfg.lora_r


def make_optimizer(method: str, params, cfg, fused: bool = False) -> torch.optim.Optimizer:
    if method in ("sgd", "sgdm"):
        return torch.optim.SGD(params, lr=cfg.sgd_lr, momentum=0.9 if method == "sgdm" else 0.0)
    if method in FULL_METHODS:
        return torch.optim.Adam(params, lr=cfg.lr, **({"fused": True} if fused else {}))
    if lora_rank(method, cfg):
        return torch.optim.Adam(params, lr=cfg.lora_lr, **({"fused": True} if fused else {}))
    raise ConfigError(f"distill: unknown student method {method!r}")


def kept_mean(kl: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean KL over the kept positions of one BATCH (all positions when keep is None). Unlike
    core.divergence.masked_mean (a whole data set's loss, where keeping nothing is an error), a batch
    whose positions are all masked is normal here: it contributes a zero loss and zero gradient."""
    if keep is None:
        return kl.mean()
    return (kl * keep).sum() / keep.sum().clamp(min=1)
