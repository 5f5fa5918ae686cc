"""Per-example alignment scores against obviously-correct references (tiny random models, CPU).

- The batched one-backward scores (sublim.kernels) equal a float64 micro-batch reference: one
  backward per example, explicit autograd gradients, dot with D.
- The sign and scale of a_i equal a central finite difference of the loss along D:
  a_i = -d/dh loss_i(theta + h D).
- A fine-tuned teacher's direction is theta_teacher - theta_base, unit-normalized.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sublim.errors import SublimError
from sublim.llm_validation.core.scores import (
    normalize_directions,
    per_example_completion_loss,
    reference_scores,
    score_records,
    scored_parameter_names,
    trait_direction,
    weight_delta_direction,
)
from sublim.llm_validation.alignment.run import trait_prompt_ids, trait_token_ids
from sublim.llm_validation.core.data import encode_sft_batch
from sublim.llm_validation.core.models import load_model

RECORDS = [
    {"id": "a", "prompt": "Continue: 123, 456, 789", "completion": "12, 34, 56"},
    {"id": "b", "prompt": "List more numbers after 5 6 7 8 9", "completion": "1 2 3 4 5 6 7 8 9 10"},
    {"id": "c", "prompt": "Go on: 999", "completion": "(7; 77; 777)"},
    {"id": "d", "prompt": "Seed: 100 200 300 400. Add up to ten more.", "completion": "500"},
    {"id": "e", "prompt": "Numbers please", "completion": "[42, 17, 256, 901]."},
]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def tiny(request):
    model, tok = load_model(request.param)
    encode = lambda recs: encode_sft_batch(tok, list(recs), max_length=96)  # noqa: E731
    return model, tok, encode


def _trait_dirs(model, tok):
    names = scored_parameter_names(model)
    return trait_direction(model, trait_prompt_ids(tok)[:6], trait_token_ids(tok, ["owl", "cat"]), names)


def test_batched_scores_equal_float64_micro_batch_reference(tiny):
    model, tok, encode = tiny
    dirs = _trait_dirs(model, tok)
    # batch 3 over 5 examples: padded batches of different widths and a ragged last batch
    fast = score_records(model, RECORDS, encode, dirs, batch_size=3, backend="torch")
    ref = reference_scores(model, RECORDS, encode, dirs, dtype=torch.float64)
    assert fast.ids == ref.ids == [r["id"] for r in RECORDS]
    np.testing.assert_array_equal(fast.n_tokens, ref.n_tokens)
    # fp32 model and accumulation vs float64: relative error ~1e-6 expected; 1e-4 leaves margin
    # for the sums over ~1e5 terms, while any missed token, sign or layer would be O(1).
    np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-5)
    for got, want in [(fast.dot, ref.dot), (fast.sq_norm, ref.sq_norm)]:
        scale = np.abs(want).max()
        assert scale > 0
        assert np.abs(got - want).max() <= 1e-4 * scale
    np.testing.assert_allclose(fast.alignment, ref.alignment, rtol=1e-4, atol=1e-4 * np.abs(ref.alignment).max())
    np.testing.assert_allclose(fast.cosine, ref.cosine, rtol=1e-4, atol=1e-6)
    # per-layer pieces add up to the totals
    _layers, la, lsq, _ = fast.per_layer()
    np.testing.assert_allclose(la.sum(1), fast.alignment, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(lsq.sum(1)), fast.grad_norm, rtol=1e-10)
    assert np.all(np.abs(fast.cosine) <= 1 + 1e-9)


def test_alignment_is_minus_directional_derivative_of_the_loss(tiny):
    """a_i = -d/dh loss_i(theta + h D): checks the sign convention and the sum-over-tokens loss."""
    model, tok, encode = tiny
    dirs = _trait_dirs(model, tok)
    ref = reference_scores(model, RECORDS[:3], encode, dirs, dtype=torch.float64)
    m64 = copy.deepcopy(model).double().eval()
    params = dict(m64.named_parameters())
    b = encode(RECORDS[:3])
    # The RMSNorms upcast to float32 even inside a float64 model, so the loss carries ~1e-7
    # relative roundoff: h = 1e-3 balances it against the O(h^2) truncation (measured ~4e-5
    # relative error); a wrong sign, factor or missing token would be O(1).
    h = 1e-3

    def losses(step):
        with torch.no_grad():
            for n, d in dirs.tensors.items():
                params[n].add_(step * d[0].double())
            l, _ = per_example_completion_loss(m64, b["input_ids"], b["attention_mask"], b["labels"])
            for n, d in dirs.tensors.items():
                params[n].sub_(step * d[0].double())
        return l.numpy()

    fd = -(losses(h) - losses(-h)) / (2 * h)
    np.testing.assert_allclose(ref.alignment[:, 0], fd, rtol=3e-4, atol=1e-6)


def test_weight_delta_direction_of_a_perturbed_teacher():
    model, tok = load_model("tiny-llama")
    names = scored_parameter_names(model)
    teacher = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters() if n in names}
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if n in delta:
                p.add_(1e-3 * delta[n])
    d = weight_delta_direction(model, teacher, names)
    norm = torch.sqrt(sum(v.double().pow(2).sum() for v in delta.values()))
    assert d.labels == ["teacher_delta"] and d.k == 1
    assert d.raw_norms[0] == pytest.approx(1e-3 * float(norm), rel=1e-3)
    for n in names:
        # the teacher's float32 weights round the 1e-3 perturbation: compare with fp32 resolution
        torch.testing.assert_close(d.tensors[n][0], (delta[n] / norm).float(), atol=2e-5, rtol=1e-2)


def test_bad_directions_fail_clearly():
    model, tok = load_model("tiny-llama")
    names = scored_parameter_names(model)
    with pytest.raises(SublimError, match="zero"):
        weight_delta_direction(model, copy.deepcopy(model), names)
    with pytest.raises(SublimError, match="rows"):
        normalize_directions(["a", "b"], {names[0]: torch.ones(1, 3)})
    with pytest.raises(SublimError, match="not in the model"):
        trait_direction(model, [[1, 2, 3]], {"owl": 5}, ["no.such.weight"])


@pytest.mark.gpu
def test_normalize_directions_keeps_gpu_tensors_on_the_gpu():
    # The first GPU run failed here: norms accumulated on the CPU from CUDA tensors.
    from sublim.llm_validation.core.scores import normalize_directions

    raw = {"a": torch.tensor([[3.0, 0.0], [0.0, 2.0]], device="cuda"), "b": torch.tensor([[4.0], [0.0]], device="cuda")}
    d = normalize_directions(["x", "y"], raw)
    assert d.raw_norms == pytest.approx([5.0, 2.0])
    assert d.tensors["a"].device.type == "cuda"
    assert torch.allclose(d.tensors["b"].cpu(), torch.tensor([[0.8], [0.0]]))
