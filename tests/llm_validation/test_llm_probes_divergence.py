"""Divergence-token masks (llm_validation/core/divergence.py, shared with distill): pure tensors, no model."""

from __future__ import annotations

import math

import pytest
import torch

from sublim.llm_validation.core.divergence import (base_divergence_positions, divergence_positions,
                                                     divergence_report, kl_per_position, loss_mask,
                                                     masked_mean, random_mask_like)

P, V = 40, 19  # positions, number vocabulary (distill's 19 tokens on SmolLM2)


def _logp_with_argmax(argmax: torch.Tensor, seed: int) -> torch.Tensor:
    """(P, V) log-probabilities whose row argmax is exactly `argmax` (a margin of 3 nats)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(argmax), V, generator=g)
    logits[torch.arange(len(argmax)), argmax] = logits.max() + 3.0
    return torch.log_softmax(logits, -1)


def test_divergence_positions_are_where_some_rival_argmax_differs():
    top = torch.randint(0, V, (P,), generator=torch.Generator().manual_seed(0))
    target = _logp_with_argmax(top, 1)
    cat_top, base_top = top.clone(), top.clone()
    cat_top[[3, 7]] = (top[[3, 7]] + 1) % V
    base_top[[7, 20, 33]] = (top[[7, 20, 33]] + 5) % V
    got = divergence_positions(target, [_logp_with_argmax(cat_top, 2), _logp_with_argmax(base_top, 3)])
    assert torch.nonzero(got).flatten().tolist() == [3, 7, 20, 33]
    assert not divergence_positions(target, [_logp_with_argmax(top, 4)]).any()  # same argmax: none
    with pytest.raises(ValueError):
        divergence_positions(target, [])
    with pytest.raises(ValueError):
        divergence_positions(target, [target[:5]])


def test_masking_removes_exactly_the_chosen_positions():
    g = torch.Generator().manual_seed(5)
    chosen = torch.zeros(P, dtype=torch.bool)
    chosen[[0, 9, 10, 39]] = True
    w = loss_mask(chosen)
    assert torch.equal(w == 0, chosen) and torch.equal(loss_mask(chosen, keep="chosen") == 1, chosen)
    teacher = torch.log_softmax(torch.randn(P, V, generator=g), -1)
    student_logits = torch.randn(P, V, generator=g, requires_grad=True)
    kl = kl_per_position(teacher, torch.log_softmax(student_logits, -1))
    loss = masked_mean(kl, w)
    # the value: the mean KL over the kept positions, computed by indexing instead of weighting
    assert torch.allclose(loss, kl[~chosen].mean(), rtol=1e-6, atol=0)  # float32: 36-term sums, ~1e-7 relative
    loss.backward()
    row_grad = student_logits.grad.abs().sum(-1)
    assert torch.all(row_grad[chosen] == 0) and torch.all(row_grad[~chosen] > 0)  # no signal leaks from a masked row
    with pytest.raises(ValueError):
        masked_mean(kl.detach(), torch.zeros(P))
    with pytest.raises(ValueError):
        loss_mask(chosen.float())


def test_random_mask_has_the_same_size_and_is_a_function_of_the_seed():
    chosen = torch.zeros(100, dtype=torch.bool)
    chosen[:13] = True
    a, b, c = (random_mask_like(chosen, seed=s) for s in (0, 0, 1))
    assert int(a.sum()) == 13 and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, chosen)  # drawn, not copied (P(equal) = 1 / C(100, 13))


def test_cheap_detector_kl_rule_takes_the_largest_kl_positions():
    g = torch.Generator().manual_seed(7)
    base = torch.log_softmax(torch.randn(P, V, generator=g), -1)
    target = torch.log_softmax(base + torch.randn(P, V, generator=g) * torch.linspace(0, 2, P)[:, None], -1)
    got = base_divergence_positions(target, base, rule="kl", quantile=0.9)
    kl = kl_per_position(target.double(), base.double())
    assert 1 <= int(got.sum()) <= math.ceil(0.1 * P)
    assert float(kl[got].min()) > float(kl[~got].max())  # every chosen position beats every other
    arg = base_divergence_positions(target, base, rule="argmax")
    assert torch.equal(arg, target.argmax(-1) != base.argmax(-1))
    with pytest.raises(ValueError):
        base_divergence_positions(target, base, rule="entropy")
    with pytest.raises(ValueError):
        base_divergence_positions(target, base, quantile=1.0)


def test_divergence_report_counts_agree_with_the_detectors():
    g = torch.Generator().manual_seed(9)
    base = torch.log_softmax(torch.randn(P, V, generator=g), -1)
    owl = torch.log_softmax(base + 0.8 * torch.randn(P, V, generator=g), -1)
    cat = torch.log_softmax(base + 0.8 * torch.randn(P, V, generator=g), -1)
    r = divergence_report(owl, {"cat": cat, "base": base}, base)
    rival = divergence_positions(owl, [cat, base])
    assert r["rival"] == int(rival.sum()) and r["n_positions"] == P
    cheap = base_divergence_positions(owl, base, rule="argmax")
    assert r["base_argmax"]["overlap_with_rival"] == int((cheap & rival).sum()) == int(cheap.sum())  # base is a rival
