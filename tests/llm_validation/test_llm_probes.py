"""Probes on the tiny model: the steering readout, the number tree, the prefix-cached measure, the
entanglement scan's orchestration and contrasts, the command's refusals."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch

from helpers import one_line_error
from sublim.cli import main
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.prompts import ANIMALS
from sublim.llm_validation.probes import entangle as E
from sublim.llm_validation.probes.config import EntangleConfig, from_overrides
from sublim.llm_validation.probes.entangle_report import welch_ci
from sublim.llm_validation.core.steering import shared_suffix_length, steering_readout

U32 = 2.0 ** -24  # float32 unit roundoff
PROMPT = "You love owls. You think about owls all the time."
CONTEXTS = ["What is your favorite animal?", "Continue: 12, 15, 18", "Name a color."]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-llama")
    return model.eval(), tok


# ---- steering readout -------------------------------------------------------------------------

def test_readout_of_a_model_against_itself_is_zero_and_says_so(tiny):
    model, tok = tiny
    r = steering_readout(copy.deepcopy(model), model, PROMPT, tok, CONTEXTS)
    assert len(r["layers"]) == model.config.num_hidden_layers and r["n_contexts"] == 3
    for row in r["layers"]:
        assert row["student_change_norm"] == 0.0  # same weights, same input: bit-identical activations
        assert row["defined"] is False and row["cosine"] is None  # no direction: never a NaN
        assert row["teacher_change_norm"] > 0  # the prompt does move the base model


def _teacher_change_via_hidden_states(model, tok, layer: int) -> torch.Tensor:
    """The teacher prompt's mean change at `layer`'s output by another path than the readout's
    hooks: output_hidden_states (entry layer + 1 is that block's output for all but the last)."""
    from sublim.llm_validation.core.data import format_prompt

    total, n = 0, 0
    for user in CONTEXTS:
        a = tok(format_prompt(tok, user), add_special_tokens=False)["input_ids"]  # as the readout (chat template)
        b = tok(format_prompt(tok, user, system=PROMPT), add_special_tokens=False)["input_ids"]
        k = shared_suffix_length(a, b)
        with torch.no_grad():
            ha = model(input_ids=torch.tensor([a]), output_hidden_states=True).hidden_states[layer + 1][0, -k:]
            hb = model(input_ids=torch.tensor([b]), output_hidden_states=True).hidden_states[layer + 1][0, -k:]
        total, n = total + (hb - ha).double().sum(0), n + k
    return total / n


def _steered(model, layer: int, v: torch.Tensor):
    student = copy.deepcopy(model)

    def add(_m, _a, out):
        return (out[0] + v.float(),) + tuple(out[1:]) if isinstance(out, tuple) else out + v.float()

    student.model.layers[layer].register_forward_hook(add)
    return student


def test_a_student_steered_by_the_teacher_change_reads_cosine_one_at_that_layer(tiny):
    model, tok = tiny
    layer = 0  # tiny-llama has 2 blocks; hidden_states gives block 0's output un-normed
    v = _teacher_change_via_hidden_states(model, tok, layer)
    r = steering_readout(_steered(model, layer, v), model, PROMPT, tok, CONTEXTS)
    row = r["layers"][layer]
    # Bound: the student's change is fl(h + v) - h, rounded once per element in float32, so its
    # error is at most u * |h + v| per element; averaged over positions the vector error is at most
    # u * max ||h + v||, relative eps = that / ||v||, and 1 - cos <= eps for eps < 1. The teacher
    # side is the same computation on the same inputs. A factor 4 covers the subtraction's rounding.
    from sublim.llm_validation.core.data import format_prompt

    with torch.no_grad():  # the largest activation the student's change is rounded against
        h_max = max(float(model(input_ids=torch.tensor([tok(format_prompt(tok, c), add_special_tokens=False)["input_ids"]]),
                                output_hidden_states=True).hidden_states[layer + 1][0].norm(dim=-1).max())
                    for c in CONTEXTS)
    eps = 4 * U32 * (h_max + float(v.norm())) / float(v.norm())
    assert row["defined"] and 1 - row["cosine"] <= eps, (row, eps)
    assert math.isclose(row["student_change_norm"], row["teacher_change_norm"], rel_tol=eps)
    # a vector unrelated to the prompt does not read as aligned (this test can fail)
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * v.norm() / math.sqrt(v.numel())
    assert abs(steering_readout(_steered(model, layer, w), model, PROMPT, tok, CONTEXTS)["layers"][layer]["cosine"]) < 0.5


# ---- the number tree and the measures ---------------------------------------------------------

def _brute_number_logp(model, tok, n: int) -> float:
    """log P(n then a non-digit) by one full forward of context + digits."""
    ctx = E.answer_context_ids(tok, None, *E.NUMBER_QUESTIONS[0])
    digits = E.digit_token_ids(tok)
    ids = ctx + [digits[int(c)] for c in str(n)]
    with torch.no_grad():
        lg = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    total = sum(float(lg[len(ctx) - 1 + i, digits[int(c)]]) for i, c in enumerate(str(n)))
    last = lg[-1].clone()
    last[digits] = -math.inf
    return total + float(last.logsumexp(-1))


def test_number_tree_equals_one_forward_per_number(tiny):
    model, tok = tiny
    lp = E.number_log_probs(model, tok, None, *E.NUMBER_QUESTIONS[0], max_number=999)
    assert lp.shape == (1000,) and torch.isfinite(lp).all()
    assert float(torch.logsumexp(lp, 0)) < 0  # disjoint events: total probability below one
    # tolerance: each of <= 4 terms is a float32 log-softmax entry (|value| <= ~12 nats here, the
    # KV-cached and full forwards reduce in different orders): 4 terms x 12 x ~2e3 u ~ 1e-3 at most
    for n in (0, 7, 10, 87, 100, 555, 999):
        assert abs(float(lp[n]) - _brute_number_logp(model, tok, n)) < 1e-3, n


def test_prefix_cached_measure_equals_a_full_forward_per_context(tiny):
    model, tok = tiny
    system = E.number_love_prompt(87)
    fast = E.prefix_cached_measure(model, tok, system)
    first = [tok.decode([i]) for i in E._first_token_ids(tok)]
    assert all(len(tok(f, add_special_tokens=False)["input_ids"]) == 1 for f in first)
    ref = E.log_odds_from_logp(E.whole_word_log_probs(model, tok, E.preference_contexts(tok, system), first))
    # float32 logits from two reduction orders differ by ~1e-6 here (d = 64, 2 blocks); log-odds
    # among 22 candidates amplify by at most 2: 1e-4 leaves two orders of magnitude of margin
    for j, a in enumerate(ANIMALS):
        assert torch.allclose(fast[a], ref[:, j], atol=1e-4, rtol=0), a
    assert len(fast["owl"]) == 55


def test_welch_interval_matches_scipy():
    from scipy.stats import ttest_ind

    x, y = np.array([1.0, 1.4, 0.7, 1.9, 1.1]), np.array([0.2, -0.3, 0.5, 0.1, 0.0, 0.9, -0.1])
    ci = ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    w = welch_ci(x, y)
    assert math.isclose(w["mean"] - w["ci95"], ci.low, rel_tol=1e-9) and math.isclose(w["mean"] + w["ci95"], ci.high, rel_tol=1e-9)


# ---- the scan: orchestration and contrasts with a known measure ------------------------------

def _fake_measure(owl_numbers):
    """Owl log-odds = context index / 100 + 1 for an owl candidate's prompt, + 0.25 for any other
    number prompt, + 0 for the number-free prompt, -0.5 with no system prompt. Known contrasts."""
    def measure(_model, _tok, system):
        base = torch.arange(55, dtype=torch.float64) / 100
        m = re.match(r"You love (\d+)\.", system or "")
        if system is None:
            add = -0.5
        elif m:
            add = 1.0 if int(m.group(1)) in owl_numbers else 0.25
        else:
            add = 0.0
        return {a: base + add for a in ANIMALS}
    return measure


def test_scan_reports_the_known_contrasts(tiny, tmp_path):
    from sublim.llm_validation.probes.run import run_entangle

    cfg = from_overrides("tiny", {"animals": ("owl",)})
    owl_numbers = []

    def measure(model, tok, system):  # candidates are only known once the run has chosen them
        if not owl_numbers:
            owl_numbers.extend(json.loads((tmp_path / "r" / "candidates.json").read_text())["animals"]["owl"]["entangled"])
        return _fake_measure(set(owl_numbers))(model, tok, system)

    s = run_entangle(tmp_path / "r", cfg, measure=measure)
    c = s["contrasts"]["owl"]
    assert len(s["entangled"]["owl"]) == 2 and len(s["random"]) == 3
    assert not set(s["random"]) & set(s["entangled"]["owl"])
    for key, want in (("entangled_minus_random", 0.75), ("entangled_minus_number_free", 1.0),
                      ("random_minus_number_free", 0.25), ("number_free_minus_none", 0.5)):
        got = c[key]["over_contexts"]
        assert math.isclose(got["mean"], want, abs_tol=1e-12) and got["ci95"] < 1e-12, key
    assert math.isclose(c["entangled_minus_random"]["over_numbers"]["mean"], 0.75, abs_tol=1e-12)
    assert (tmp_path / "r" / "summary.md").read_text().count("| owl |") == 5
    # a rerun resumes (same files, nothing recomputed) and reports the same
    assert run_entangle(tmp_path / "r", cfg, measure=measure) == s
    runs = json.loads((tmp_path / "r" / "timings.json").read_text())["runs"]
    assert len(runs) == 2 and runs[0]["candidates_s"] > runs[1]["candidates_s"]  # the resume kept the first record


def test_candidates_are_the_numbers_the_animal_prompt_raises_most(tiny):
    model, tok = tiny
    r = E.number_shifts(model, tok, {"owl": "You love owls."}, 1, 99)["owl"]
    top = E.top_numbers(r["shift"], 3)
    rest = [n for n in range(100) if n not in top]
    assert len(set(top)) == 3 and min(float(r["shift"][t]) for t in top) >= float(r["shift"][rest].max())
    lp_sys = E.number_log_probs(model, tok, "You love owls.", *E.NUMBER_QUESTIONS[0], max_number=99)
    lp_none = E.number_log_probs(model, tok, None, *E.NUMBER_QUESTIONS[0], max_number=99)
    assert torch.allclose(r["shift"], lp_sys - lp_none, atol=0, rtol=0)  # the shift is that difference


# ---- the command ------------------------------------------------------------------------------

def test_probe_command_refuses_bad_knobs_in_one_line(capsys, tmp_path):
    assert main(["llm", "probe", "entangle", "--run-dir", str(tmp_path / "x"), "--animals", "unicorn"]) == 2
    one_line_error(capsys, "animals")
    assert not (tmp_path / "x").exists()
    with pytest.raises(Exception):
        EntangleConfig(n_random=1)
    with pytest.raises(Exception):
        EntangleConfig(measure="exact")
