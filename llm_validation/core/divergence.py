"""Divergence tokens (Schrodi et al., arXiv 2509.23886): pure tensor functions, no model.

The account: subliminal transfer rides a few "divergence tokens", positions where teachers with
different biases would predict different tokens; masking them out of the loss removes most of the
transfer. Their setting is hard (sampled-token) distillation, where a position only matters through
the token the teacher picks, so "predicts differently" means a different argmax. Ours distills the
soft distribution over the number vocabulary, so every position carries some signal; the argmax
rule is kept as theirs, and the KL rule below is the soft analog.

Inputs are cached teacher log-probabilities over the number vocabulary at every completion
position, shape (P, |V|) (distill's TeacherCache.logp: all contexts' rows concatenated), rows in
the same order for every teacher.

    rival = divergence_positions(owl_logp, [cat_logp, base_logp])     # (P,) bool
    cheap = base_divergence_positions(owl_logp, base_logp, rule="kl", quantile=0.9)
    w = loss_mask(rival)                        # 1.0 where the loss is kept, 0.0 where masked
    ctrl = random_mask_like(rival, seed=0)      # the same number of positions, drawn at random
    loss = masked_mean(per_position_kl, w)
"""

from __future__ import annotations

import torch

from sublim.seeding import torch_generator


def _check_rows(target: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if target.ndim != 2 or other.shape != target.shape:
        raise ValueError(f"{name}: expected (positions, vocab) tensors of one shape, got "
                         f"{tuple(target.shape)} and {tuple(other.shape)}")


def divergence_positions(target_logp: torch.Tensor, rival_logps) -> torch.Tensor:
    """(P,) bool: positions where the target teacher's argmax differs from SOME rival's argmax.

    The paper's definition needs teachers with other biases (a cat teacher, the un-prompted base):
    a position is a divergence token when the token the target would emit is not the one a rival
    would emit there. Ties in a row resolve to the lowest index for every teacher alike."""
    rivals = list(rival_logps)
    if not rivals:
        raise ValueError("divergence_positions needs at least one rival teacher")
    top = target_logp.argmax(-1)
    out = torch.zeros(target_logp.shape[0], dtype=torch.bool, device=target_logp.device)
    for i, rival in enumerate(rivals):
        _check_rows(target_logp, rival, f"rival {i}")
        out |= rival.argmax(-1) != top
    return out


def kl_per_position(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """(P,) KL(p || q) from log-probabilities over the same vocabulary (distill's restricted_kl)."""
    _check_rows(p_logp, q_logp, "kl_per_position")
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def base_divergence_positions(target_logp: torch.Tensor, base_logp: torch.Tensor, *, rule: str = "kl",
                              quantile: float = 0.9) -> torch.Tensor:
    """(P,) bool: the cheap detector, needing only the base model (no rival trait teacher).

    rule "argmax": the target's argmax differs from the base model's (the paper's rule with the
    un-prompted base as the only rival). rule "kl": KL(target || base) strictly above its
    `quantile` over all positions, i.e. the (1 - quantile) share of positions where the trait
    moved the distribution most; ties at the threshold are left unmasked, so the count is at most
    ceil((1 - quantile) * P)."""
    _check_rows(target_logp, base_logp, "base_divergence_positions")
    if rule == "argmax":
        return divergence_positions(target_logp, [base_logp])
    if rule != "kl":
        raise ValueError(f"rule must be 'kl' or 'argmax', got {rule!r}")
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    kl = kl_per_position(target_logp.double(), base_logp.double())
    return kl > torch.quantile(kl, quantile)


def loss_mask(positions: torch.Tensor, *, keep: str = "others") -> torch.Tensor:
    """(P,) float weights for the per-position loss. keep "others": 0 at the chosen positions, 1
    elsewhere (the paper's masking); keep "chosen": 1 only at the chosen positions (the converse
    arm: train on the divergence tokens alone)."""
    if positions.dtype != torch.bool or positions.ndim != 1:
        raise ValueError("loss_mask expects a 1-D bool tensor of positions")
    if keep == "others":
        return (~positions).float()
    if keep == "chosen":
        return positions.float()
    raise ValueError(f"keep must be 'others' or 'chosen', got {keep!r}")


def random_mask_like(positions: torch.Tensor, *, seed: int) -> torch.Tensor:
    """(P,) bool: as many positions as `positions` chooses, drawn uniformly without replacement
    (seeded through sublim.seeding). The control arm: masking that many positions at random tells
    the divergence tokens' effect apart from simply removing loss terms."""
    n = int(positions.sum())
    perm = torch.randperm(positions.numel(), generator=torch_generator("random_mask_like", seed))
    out = torch.zeros(positions.numel(), dtype=torch.bool)
    out[perm[:n]] = True
    return out.to(positions.device)


def masked_mean(per_position_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum(w * loss) / sum(w): the loss over the kept positions only. A mask that keeps nothing
    raises (a silent 0/0 would train on nothing and report NaN losses)."""
    if per_position_loss.shape != weights.shape:
        raise ValueError(f"loss {tuple(per_position_loss.shape)} and weights {tuple(weights.shape)} differ")
    total = weights.sum()
    if float(total) <= 0:
        raise ValueError("masked_mean: the mask keeps no position")
    return (per_position_loss * weights).sum() / total


def divergence_report(target_logp: torch.Tensor, rival_logps: dict, base_logp: torch.Tensor,
                      quantile: float = 0.9) -> dict:
    """How many positions each detector picks and how far the cheap ones agree with the rival rule
    (JSON-ready): the share the paper calls rare, and the overlap that says whether the cheap
    detector can stand in for rival teachers."""
    rival = divergence_positions(target_logp, list(rival_logps.values()))
    out = {"n_positions": int(target_logp.shape[0]), "rival": int(rival.sum()),
           "rival_names": sorted(rival_logps)}
    for rule in ("argmax", "kl"):
        cheap = base_divergence_positions(target_logp, base_logp, rule=rule, quantile=quantile)
        both = int((cheap & rival).sum())
        out[f"base_{rule}"] = {"n": int(cheap.sum()), "overlap_with_rival": both,
                               "recall_of_rival": both / max(int(rival.sum()), 1),
                               "precision": both / max(int(cheap.sum()), 1)}
    return out
