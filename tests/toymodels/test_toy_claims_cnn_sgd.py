"""The CNN student (heads_cnn) and the matched-SGD arms (optimizer_matched) on tiny settings: the CNN's
copied head IS the teacher's init head and its body comes from a stream nothing else draws from, the
batched grouped convolution is the per-model CNN, a matched arm stops exactly where MatchStop says
and is then frozen, and the claims that ran before these fields existed still ask for exactly the
committed run directories."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sublim.errors import ConfigError
from sublim.rundir import check_run_config
from sublim.seeding import torch_generator
from sublim.toymodels import cnn
from sublim.toymodels.arms import PERTURB_OFFSET
from sublim.toymodels.claims import (
    FRESH_OFFSET, ArmSpec, MatchStop, ModelwiseSGD, arm_init, group_inits, train_arms, train_teacher_bank,
)
from sublim.toymodels.claims_run import CLAIMS, Claim, claim_config, run_claim, run_config
from sublim.toymodels.config import ToyConfig, from_dict
from sublim.toymodels.mnist import load_mnist
from sublim.toymodels.model import init_params, model_generator

from helpers import REPO

TINY = dict(n_models=3, width=16, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=512,
            batch_size=256, max_test_examples=500)
CNN_COPIED = ArmSpec("cnn_head_copied", init="head_shared", arch="cnn")
CNN_FRESH = ArmSpec("cnn_fresh_head", init="independent", arch="cnn")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def cfg():
    return ToyConfig(**TINY)


def _teacher_init(cfg, model=1):
    return [p[model] for p in init_params(cfg.spec, cfg.n_models, seed=cfg.seed, dtype=torch.float64)]


class _NoBar:
    def update(self, n):
        pass


# ------------------------------------------------------------------------------------------- CNN


def test_cnn_copied_head_is_the_teachers_init_head(cfg):
    t = _teacher_init(cfg)
    s = arm_init(CNN_COPIED, cfg, t, 1)
    assert [tuple(p.shape) for p in s[::2]] == [sh for sh, _ in cnn.layer_shapes(cfg.spec)]
    assert torch.equal(s[-2], t[-2]) and torch.equal(s[-1], t[-1])  # bit for bit
    fresh = arm_init(CNN_FRESH, cfg, t, 1)
    ind = arm_init(ArmSpec("i", init="independent"), cfg, t, 1)
    assert torch.equal(fresh[-2], ind[-2]) and not torch.equal(fresh[-2], t[-2])  # the MLP arms' fresh head
    # the two CNN arms differ in the head only: the same body draw (a paired comparison)
    assert all(torch.equal(a, b) for a, b in zip(s[:-2], fresh[:-2]))


def test_cnn_copied_head_survives_the_ensembles_cast_and_owns_its_memory(cfg):
    """In the float32 ensemble the copied head is still the teacher's init head exactly (float32 ->
    float64 -> float32 is exact), and no CNN tensor aliases the teachers' inits."""
    inits = init_params(cfg.spec, cfg.n_models, seed=cfg.seed, dtype=torch.float32)
    students = group_inits([CNN_COPIED, CNN_FRESH], cfg, inits, [0, 1, 2], "cpu", torch.float32)
    for g in range(3):
        assert torch.equal(students[-2][2 * g], inits[-2][g]) and torch.equal(students[-1][2 * g], inits[-1][g])
        assert not torch.equal(students[-2][2 * g + 1], inits[-2][g])
    ptrs = {p.untyped_storage().data_ptr() for p in inits}
    assert not ptrs & {p.untyped_storage().data_ptr() for p in students}


def test_cnn_body_draws_from_a_stream_no_other_init_uses(cfg):
    """A shared generator would repeat its draws: each body layer's weights must appear in none of
    the streams of the teacher's init, the MLP arms' fresh init or the perturbation noise, scaled
    as fresh_body scales them (exact float64 equality: a shared stream gives identical values)."""
    body = cnn.fresh_body(cfg.spec, cfg.seed, 1)
    for index in (1, FRESH_OFFSET + 1, PERTURB_OFFSET + 1):
        draws = torch.randn(20000, generator=model_generator(cfg.seed, index), dtype=torch.float64)
        for (shape, fan_in), w in zip(cnn.layer_shapes(cfg.spec), body[::2]):
            std = cfg.spec.init_scale * 1.0 / math.sqrt(fan_in)  # init normal, as fresh_body computes it
            assert not set((draws * std).tolist()) & set(w.flatten().tolist()), (index, shape)
    # the check can find a shared stream: the body's own stream, drawn the same way, is found
    own = torch.randn(200, generator=torch_generator("cnn-init", cfg.seed, 1), dtype=torch.float64)
    assert set((own * (1.0 / math.sqrt(25))).tolist()) <= set(body[0].flatten().tolist())
    other = cnn.fresh_body(cfg.spec, cfg.seed, 2)
    assert not torch.equal(body[0], other[0])  # every model its own body


def test_batched_cnn_is_the_per_model_cnn(cfg):
    """Grouped convolutions over (groups x k) models, group-major: model g*k + a reads group g's
    batch. Reference: each model alone through F.conv2d / matmul. float64: the two differ only in
    summation order over <= 784-term sums, ~784 x 2^-53 ~ 1e-13 relative; rtol 1e-10 leaves 1000x."""
    k, groups = 2, 3
    params = [torch.stack(ps) for ps in zip(*[arm_init(a, cfg, _teacher_init(cfg, g), g)
                                              for g in range(groups) for a in (CNN_COPIED, CNN_FRESH)])]
    x = torch.rand(groups, 7, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = cnn.forward(params, x)
    for m in range(groups * k):
        c1w, c1b, c2w, c2b, fw, fb, hw, hb = (p[m] for p in params)
        h = torch.relu(F.conv2d(x[m // k].view(7, 1, 28, 28), c1w, c1b, stride=2, padding=2))
        h = torch.relu(F.conv2d(h, c2w, c2b, stride=2, padding=2)).flatten(1)
        ref = torch.relu(h @ fw.T + fb) @ hw.T + hb
        torch.testing.assert_close(out[m], ref, rtol=1e-10, atol=1e-12)
    shared = cnn.forward(params, x[0])  # one batch for every model
    torch.testing.assert_close(shared[1], cnn.forward(params, x[0].expand(groups, 7, 784))[1], rtol=1e-10, atol=1e-12)


def test_cnn_arm_trains_alone_as_in_its_ensemble(mnist):
    """No cross-talk between the batched CNN students: the copied-head arm alone gives the same
    accuracy and losses as inside the two-arm ensemble (float64; grouped convolutions of another
    group width may sum in another order: losses to 1e-9 relative, over 2 steps of ~1e-13 rounding)."""
    cfg = ToyConfig(**TINY, dtype="float64")
    bank = train_teacher_bank(cfg, mnist)
    both = train_arms(cfg, [CNN_COPIED, CNN_FRESH], bank.teachers, bank.inits, mnist, 0, _NoBar())
    alone = train_arms(cfg, [CNN_COPIED], bank.teachers, bank.inits, mnist, 0, _NoBar())
    np.testing.assert_allclose(alone["epoch_loss"][..., 0], both["epoch_loss"][..., 0], rtol=1e-9)
    np.testing.assert_array_equal(alone["accuracy"][:, 0], both["accuracy"][:, 0])
    assert set(both["alignment"]) == {"update_norm"}  # no common parameter space with the teacher
    assert np.all(both["alignment"]["update_norm"] > 0)


def test_bad_cnn_and_matched_arms_are_refused(cfg):
    with pytest.raises(ConfigError):
        ArmSpec("x", arch="cnn")  # shared: a cnn has no teacher init to share
    with pytest.raises(ConfigError):
        ArmSpec("x", arch="cnn", init="head_shared", depth=3)
    with pytest.raises(ConfigError):
        ArmSpec("x", arch="transformer")
    with pytest.raises(ConfigError):
        CNN_COPIED.check_against(dataclasses.replace(cfg, fast_matmul="bf16"))
    with pytest.raises(ConfigError):
        ArmSpec("x", optimizer="sgd", lr=0.1, match="shared")  # no cap
    with pytest.raises(ConfigError):
        ArmSpec("x", optimizer="sgd", lr=0.1, cap_factor=3)  # a cap without a target
    with pytest.raises(ConfigError):
        ArmSpec("x", match="shared", cap_factor=3)  # Adam cannot be frozen per model
    bad = Claim("bad", "t", "s", (ArmSpec("shared"), ArmSpec("m", optimizer="sgd", lr=0.1, match="nope", cap_factor=2)))
    CLAIMS["bad"] = bad
    try:
        with pytest.raises(ConfigError, match="unmatched arm"):
            claim_config("bad", TINY)
    finally:
        del CLAIMS["bad"]


# ------------------------------------------------------------------------------------ matched SGD


class _FakeOpt:
    def __init__(self, n):
        self.lr = torch.full((n,), 0.5, dtype=torch.float64)


def test_match_stop_freezes_each_model_at_its_first_full_window_below_target():
    """Window of 2 steps, weights 1/2 (binary fractions: every sum exact). Model 0's window means
    are 0.875, 0.625, 0.375 from step 1 on: it reaches 0.4 x its first loss at step 3 and is frozen
    (lr 0) after its 4th update; model 1's stay at 0.875 and above: it runs on."""
    losses = torch.tensor([[1.0, 1.0], [0.75, 1.0], [0.5, 0.875], [0.25, 0.875], [0.125, 0.875]], dtype=torch.float64)
    opt = _FakeOpt(2)
    stop = MatchStop(torch.tensor([0.4, 0.4], dtype=torch.float64), 2, opt)
    for t, loss in enumerate(losses):
        stop.update(loss, 0.5, losses[0])
        if t == 2:
            assert opt.lr.tolist() == [0.5, 0.5]  # window (0.75 + 0.5) / 2 = 0.625: not yet
    out = stop.arrays((1, 2))
    assert out["steps_taken"].tolist() == [[4, 5]]
    assert out["matched"].tolist() == [[True, False]]
    assert out["kl_ratio_at_stop"].tolist() == [[0.375, 0.875]]  # model 1: its last window (the cap)
    assert opt.lr.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matched_arm_stops_and_stays_frozen(mnist, momentum):
    """A target every model reaches at once (inf): each stops after exactly one epoch (the first
    full window) and stays there through the cap, so its accuracy and parameters are those of a
    plain 1-epoch run. A target nobody reaches (0): it runs to the cap, i.e. a plain 3-epoch run.
    float64 and the same operations in the same order: exact equality (lr 0 leaves p exactly)."""
    cfg = ToyConfig(**TINY, dtype="float64")
    bank = train_teacher_bank(cfg, mnist)
    arm = ArmSpec("m", optimizer="sgd", lr=0.3, momentum=momentum, match="shared", cap_factor=3)
    plain = dataclasses.replace(arm, match="", cap_factor=0)
    steps = 512 // 256
    for target, epochs in ((np.inf, 1), (0.0, 3)):
        got = train_arms(cfg, [arm], bank.teachers, bank.inits, mnist, 0, _NoBar(), np.full((3, 1), target))
        ref = train_arms(dataclasses.replace(cfg, distill_epochs=epochs), [plain], bank.teachers, bank.inits, mnist, 0, _NoBar())
        np.testing.assert_array_equal(got["accuracy"], ref["accuracy"])
        assert got["match"]["steps_taken"].ravel().tolist() == [epochs * steps] * 3
        assert got["match"]["matched"].ravel().tolist() == [target > 0] * 3
        # every model stopped after epoch 1 (target inf): the loop ends there, nothing to pad
        assert got["epoch_loss"].shape[0] == (1 if target > 0 else 3)
        if target == 0:  # capped: the ratio at the cap is the last window's, i.e. the last epoch mean,
            # which the engine accumulates in float32 over 2 steps: ~2 x 2^-24 = 1.2e-7 relative; 1e-6
            np.testing.assert_allclose(got["match"]["kl_ratio_at_stop"].ravel(),
                                       (ref["epoch_loss"][-1] / ref["first_loss"]).ravel(), rtol=1e-6)


def test_optimizer_matched_claim_resumes_its_second_wave(tmp_path, mnist):
    """The matched arms read Adam's per-model KL reduction from its arm file: deleting them and
    rerunning recomputes them from the stored file, to the same numbers."""
    claim, c = claim_config("optimizer_matched", TINY)
    out = tmp_path / "om"
    first = run_claim(out, claim, c, mnist, threads=1)
    rec = json.loads((out / "arms" / "sgd_lr0.3_matched.json").read_text())
    adam = json.loads((out / "arms" / "shared.json").read_text())["kl_ratio_final_over_first"]
    assert rec["arm"]["match"] == "shared" and rec["arm"]["cap_factor"] > 1
    stopped = np.asarray(rec["match"]["kl_ratio_at_stop"])
    ok = np.asarray(rec["match"]["matched"])
    assert np.all(stopped[ok] <= np.asarray(adam)[ok])  # a matched model stopped at (or below) its target
    steps, cap = 512 // 256, rec["arm"]["cap_factor"] * 1  # TINY: 512 examples, batch 256, 1 epoch
    assert all(steps <= s <= cap * steps for s in rec["match"]["steps_taken"])  # >= one full window
    for name in ("sgd_lr0.3_matched", "sgd_lr1_matched", "sgdm0.9_lr0.03_matched"):
        (out / "arms" / f"{name}.json").unlink()
    second = run_claim(out, claim, c, mnist, threads=1)
    again = json.loads((out / "arms" / "sgd_lr0.3_matched.json").read_text())
    assert again["match"] == rec["match"] and again["test_accuracy"] == rec["test_accuracy"]
    row = next(r for r in second["rows"] if r["arm"] == "sgd_lr0.3_matched")
    assert row["n_matched"] == int(ok.sum()) and "steps_taken" in row
    assert [r["mean"] for r in second["rows"]] == [r["mean"] for r in first["rows"]]


# --------------------------------------------------------------------- committed claims unchanged


@pytest.mark.parametrize("name", ["heads", "optimizer", "optimizer_highlr", "alignment", "sigma"])
def test_committed_claims_still_ask_for_their_run_directories(name):
    """Fields added since (arch, match, cap_factor) are stored only when set: every committed run
    directory's config.json and arm files are exactly what the claim asks for today, so rerunning
    it with the same --out resumes (keeps every arm) instead of being refused."""
    out = REPO / "toymodels" / "results" / "claims" / name
    stored = json.loads((out / "config.json").read_text())["config"]
    claim = CLAIMS[name]
    cfg = from_dict(stored["base"])
    check_run_config(out, run_config(claim, cfg))  # raises on any difference
    for arm in claim.arms:
        assert json.loads((out / "arms" / f"{arm.name}.json").read_text())["arm"] == arm.to_dict()


def test_claims_help_lists_every_claim(capsys):
    from sublim.cli import main

    with pytest.raises(SystemExit):
        main(["toy", "claims", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the line
    assert " | ".join(CLAIMS) in text and "optimizer_highlr" in text


# ------------------------------------------------------------------------- the theory's side (CNN)


def test_heads_prediction_is_the_theorem_at_the_shared_init_and_the_head_block_vanishes(tmp_path, monkeypatch):
    """Shared init: g_S = -dT on the same batch, so r / dT.K dT = 1 (the same autograd ops: equal
    up to the final division's rounding, 1e-12) and Z = 0 (to rounding). Every arm, CNN included: the head
    block of dT . K_S dT is exactly 0 (the teacher's CE moves only the digit rows of the head, the
    aux KL only the aux rows: every product is an exact 0)."""
    from sublim.theory import claims as theory_claims
    from sublim.theory.claims import HeadsPrediction, write_heads_prediction

    cfg = ToyConfig(width=16, n_models=3)
    pc = HeadsPrediction(n_models=2, n_inputs=16, n_teacher=32)
    pred = write_heads_prediction(tmp_path, cfg, pc)
    rows = {r["arm"]: r for r in pred["rows"]}
    assert set(rows) == {"shared", "independent", "head_shared", "body_shared", "cnn_head_copied", "cnn_fresh_head"}
    assert rows["shared"]["digit_rate_trait"][0] == pytest.approx(1.0, abs=1e-12)
    assert rows["shared"]["first_order_ratio"][0] == pytest.approx(1.0, abs=1e-12)
    # Z = J^T (p_S - p_0) with p_S = p_0 up to the softmax's rounding (~2^-53 per probability):
    # its reading is ~1e-17 in units of dT.K dT; 1e-12 leaves 10^5 room and still fails on a real pull
    assert abs(rows["shared"]["digit_rate_zeroth"][0]) < 1e-12
    assert all(r["head_block_ratio"] == [0.0, 0.0] for r in pred["rows"])
    assert "first_order_ratio" not in rows["cnn_head_copied"]  # no common parameter space
    monkeypatch.setattr(theory_claims, "predict_heads", lambda *a, **k: pytest.fail("recomputed a stored prediction"))
    assert write_heads_prediction(tmp_path, cfg, pc)["rows"] == json.loads(json.dumps(pred["rows"]))


def test_cnn_cross_term_is_the_derivative_of_the_cnn_students_gradient():
    """For the CNN student too, grad(eps) - grad(0) = -eps K_S dT + O(eps^2): the VJP through
    cnn.forward is the first-order term. eps below every ReLU flip of the teacher; relative error
    O(eps) plus the cancellation of g1 - g0 (~1e-16 |g| / (eps |K_S dT|) ~ 1e-10): 1e-4, as the
    MLP's check in test_toy_claims."""
    from sublim.theory.claims import cross_k_times, start_of, zeroth_order_any
    from sublim.theory.numerical import ToySetup, build, kink_onset, padd, pnorm

    setup = ToySetup(width=16, n_models=2, n_student=8)
    params0, dT, x, _ = build(setup, "uniform")
    theta_s = start_of(CNN_COPIED, ToyConfig(width=16, n_models=2), params0)
    eps = min(1e-6, 0.1 * float(kink_onset(params0, dT, x).min()))
    z1 = zeroth_order_any(theta_s, padd(params0, dT, eps), x, cnn.forward)  # -grad toward teacher(eps)
    z0 = zeroth_order_any(theta_s, params0, x, cnn.forward)
    pred = [eps * t for t in cross_k_times(theta_s, params0, dT, x, forward_s=cnn.forward)]
    err = pnorm([a - b - c for a, b, c in zip(z1, z0, pred)]) / pnorm(pred)
    assert float(err.max()) < 1e-4


def test_match_cap_rewrites_only_the_matched_arms_and_is_recorded(tmp_path, capsys):
    claim, _ = claim_config("optimizer_matched", TINY, match_cap=2)
    assert [a.cap_factor for a in claim.arms if a.match] == [2, 2, 2]
    assert CLAIMS["optimizer_matched"].arms[-1].cap_factor == 40  # the registry is untouched
    assert [a for a in claim.arms if not a.match] == [a for a in CLAIMS["optimizer_matched"].arms if not a.match]
    with pytest.raises(ConfigError, match="match-cap"):
        claim_config("heads", TINY, match_cap=2)
    from sublim.cli import main
    from helpers import one_line_error

    out = tmp_path / "run"
    assert main(["toy", "claims", "optimizer_matched", "--tiny", "--match-cap", "0", "--out", str(out)]) == 2
    one_line_error(capsys, "match-cap")
    assert not out.exists()
