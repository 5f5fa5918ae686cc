"""The one preference measure (core/preference.py) against obviously-correct references.

Every check runs the tiny models in float64 and compares with one sequence at a time, unpadded,
no attention mask. The two computations differ only in the order of float64 roundings (other
matrix shapes): a reduction of n terms is off by at most n * u * sum|terms| (u = 2**-53, Higham
2002, eq. 3.5); the longest reduction is the log-softmax over the vocabulary (V = 49152) and a
forward chains about 16 of them (per block: 2 norms, q/k/v, scores, softmax, o, gate/up, down;
2 blocks; final norm and head), so

    TOL = 16 * V * u * (max |log p| + 1)      (about 1e-9 here; float64 differences seen: ~1e-14)

A wrong padding convention (reading a padded position, a missing mask, shifted positions) moves
the numbers by O(0.1), far above TOL: each test checks that such a mistake is caught.
"""

from __future__ import annotations

import pytest
import torch

from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.preference import (candidate_first_tokens, context_ids,
                                                   mean_answer_log_probs, next_token_log_probs,
                                                   preference_contexts, right_padded, sequence_log_probs)
from sublim.llm_validation.core.scores import scored_parameter_names, trait_direction

U64, EPS32 = 2.0 ** -53, torch.finfo(torch.float32).eps


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def tiny64(request):
    model, tok = load_model(request.param, dtype=torch.float64)
    return model.eval(), tok


def tol(model, ref: torch.Tensor) -> float:
    """The bound of the module docstring."""
    return 16 * model.config.vocab_size * U64 * (float(ref.abs().max()) + 1)


@torch.no_grad()
def unpadded_rows(model, seqs) -> torch.Tensor:
    return torch.cat([torch.log_softmax(model(input_ids=torch.tensor([list(s)])).logits[0, -1], -1)[None]
                      for s in seqs])


def test_right_padded_batches_equal_one_sequence_at_a_time(tiny64):
    model, tok = tiny64
    seqs = context_ids(tok, preference_contexts(tok))[:7]
    assert len(set(map(len, seqs))) > 1  # the batches really are padded
    _, ids = candidate_first_tokens(tok)
    got = next_token_log_probs(model, seqs, batch_size=3, columns=ids)  # 3 + 3 + a ragged 1
    ref = unpadded_rows(model, seqs)[:, ids]
    assert got.dtype == torch.float64 and got.shape == (7, len(ids))
    assert float((got - ref).abs().max()) <= tol(model, ref)
    # the check can fail: the same batch read at its last COLUMN (a padded position for shorter rows)
    x, m, _last = right_padded(seqs[:3])
    with torch.no_grad():
        wrong = torch.log_softmax(model(input_ids=x, attention_mask=m).logits[:, -1], -1)[:, ids]
    assert float((wrong - ref[:3]).abs().max()) > 1000 * tol(model, ref)


def test_sequence_log_probs_sum_every_token_of_a_multi_token_candidate(tiny64):
    model, tok = tiny64
    contexts = context_ids(tok, preference_contexts(tok))[-2:]
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in (" owl", " hippopotamus", " cat")]
    assert max(map(len, words)) > 1  # " hippopotamus" is several tokens
    got = sequence_log_probs(model, contexts, words, batch_size=4)
    ref = torch.zeros(len(contexts), len(words), dtype=torch.float64)
    for a, ctx in enumerate(contexts):
        for b, w in enumerate(words):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + w])).logits[0], -1)
            ref[a, b] = sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(w))
    bound = max(map(len, words)) * tol(model, ref)  # a sum of at most len(word) such terms
    assert float((got - ref).abs().max()) <= bound
    # the check can fail: the first token alone is not the multi-token word's probability
    first = sequence_log_probs(model, contexts, [w[:1] for w in words], batch_size=4)
    assert float((first[:, 1] - ref[:, 1]).abs().max()) > 1000 * bound


def test_mean_answer_log_probs_is_the_mean_of_the_measure(tiny64):
    model, tok = tiny64
    seqs = context_ids(tok, preference_contexts(tok))[:5]
    targets = dict(zip(("owl", "cat"), candidate_first_tokens(tok, ["owl", "cat"])[1]))
    got = mean_answer_log_probs(model, seqs, targets, batch_size=2)
    ref = unpadded_rows(model, seqs)
    for j, (label, tid) in enumerate(targets.items()):
        assert got[label]["mean_logprob"] == pytest.approx(float(ref[:, tid].mean()), abs=tol(model, ref))
        assert got[label]["mean_prob"] == pytest.approx(float(ref[:, tid].exp().mean()), abs=tol(model, ref))
    assert got["owl"]["mean_logprob"] != pytest.approx(got["cat"]["mean_logprob"], abs=1e-3)  # two real columns


def test_trait_direction_is_the_gradient_of_the_measure(tiny64):
    """trait_direction = grad of mean_q log p(owl | q) through the measure's own right-padded batch;
    the reference sums per-sequence unpadded gradients."""
    model, tok = tiny64
    seqs = context_ids(tok, preference_contexts(tok))[:4]
    assert len(set(map(len, seqs))) > 1
    tid = candidate_first_tokens(tok, ["owl"])[1][0]
    names = scored_parameter_names(model)
    dirs = trait_direction(model, seqs, {"owl": tid}, names)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    grads = {n: torch.zeros_like(params[n]) for n in names}
    for s in seqs:  # one unpadded sequence at a time
        logp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1], -1)[tid]
        g = torch.autograd.grad(logp / len(seqs), [params[n] for n in names])
        for n, gi in zip(names, g):
            grads[n] += gi
    ref_norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
    rel64 = 16 * model.config.vocab_size * U64 * len(seqs)  # the module's bound, summed over the prompts
    assert dirs.raw_norms[0] == pytest.approx(ref_norm, rel=rel64)
    for n in names:
        unit = grads[n] / ref_norm
        # stored in float32: two roundings (to float32, times the float32 scale), each <= eps/2
        # relative, on top of the float64 difference (rel64 of the largest component)
        bound = 2 * EPS32 * unit.abs() + rel64 * float(unit.abs().max())
        assert torch.all((dirs.tensors[n][0].double() - unit).abs() <= bound), n
    # the check can fail: the gradient of the padded batch's last column is another direction
    x, m, _last = right_padded(seqs)
    wrong = torch.log_softmax(model(input_ids=x, attention_mask=m).logits[:, -1], -1)[:, tid].mean()
    g_wrong = torch.autograd.grad(wrong, [params[names[0]]])[0]
    assert float((g_wrong / ref_norm - grads[names[0]] / ref_norm).abs().max()) > 1000 * rel64
