"""The claims arms (toymodels/claims.py) on tiny settings: each arm starts where it says, touches only
what it names, the SGD arms hold no adaptive state, the shared arm IS the toy engine's aux-only
student, a claim run resumes, and the theory's cross term reduces to the theorem at the shared init."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from sublim.errors import ConfigError
from sublim.toymodels.arms import init_std, student_inits
from sublim.toymodels.claims import (
    Alignment, ArmSpec, ModelwiseSGD, arm_init, group_optimizer, perturbation, run_ensemble, train_teacher_bank,
)
from sublim.toymodels.claims_run import CLAIMS, claim_config, paired, run_claim
from sublim.toymodels.config import ToyConfig
from sublim.toymodels.mnist import load_mnist
from sublim.toymodels.model import init_params
from sublim.toymodels.train import run_experiment

TINY = dict(n_models=3, width=16, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=512,
            batch_size=256, max_test_examples=500)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def cfg():
    return ToyConfig(**TINY)


def _teacher_init(cfg, model=1):
    return [p[model] for p in init_params(cfg.spec, cfg.n_models, seed=cfg.seed, dtype=torch.float64)]


def test_copied_head_is_the_teachers_init_head_and_the_body_is_fresh(cfg):
    t = _teacher_init(cfg)
    for depth in (0, 1, 3):
        s = arm_init(ArmSpec("h", init="head_shared", depth=depth), cfg, t, 1)
        assert len(s) == 2 * ((depth or cfg.depth) + 1)
        assert torch.equal(s[-2], t[-2]) and torch.equal(s[-1], t[-1])  # bit for bit
        assert not torch.equal(s[0], t[0])
    s = arm_init(ArmSpec("b", init="body_shared"), cfg, t, 1)
    assert all(torch.equal(a, b) for a, b in zip(s[:-2], t[:-2]))
    assert not torch.equal(s[-2], t[-2])
    # every arm of model 1 draws the SAME fresh parts: head_shared's body is independent's body
    ind = arm_init(ArmSpec("i", init="independent"), cfg, t, 1)
    head = arm_init(ArmSpec("h", init="head_shared"), cfg, t, 1)
    assert all(torch.equal(a, b) for a, b in zip(head[:-2], ind[:-2]))
    assert torch.equal(s[-2], ind[-2])


@pytest.mark.parametrize("part", ["all", "body", "head"])
def test_perturbation_touches_only_the_named_part(cfg, part):
    t = _teacher_init(cfg)
    s = arm_init(ArmSpec("p", init="perturbed", part=part, sigma=0.3), cfg, t, 1)
    n_layers = len(t) // 2
    for layer in range(n_layers):
        w_s, w_t = s[2 * layer], t[2 * layer]
        assert torch.equal(s[2 * layer + 1], t[2 * layer + 1])  # biases never
        named = part == "all" or (part == "head") == (layer == n_layers - 1)
        if not named:
            assert torch.equal(w_s, w_t)
            continue
        d = (w_s - w_t) / 0.3
        std = init_std(cfg.spec, w_t.shape[1])
        # sample std of n Gaussians: relative standard error 1/sqrt(2n); 5 of them bound a correct draw
        tol = 5 / math.sqrt(2 * d.numel())
        assert abs(d.std().item() / std - 1) < tol


def test_perturbed_all_is_the_toy_engines_perturbed_student(cfg):
    """Same generator and order as arms.student_inits: part=all at sigma is student_init=perturbed."""
    toy = dataclasses.replace(cfg, student_init="perturbed", perturb_sigma=0.2, arms=("student_aux",))
    inits = init_params(cfg.spec, cfg.n_models, seed=cfg.seed, dtype=torch.float64)
    theirs = student_inits(toy, [0, 1, 2], [], inits, device="cpu", dtype=torch.float64)
    for i in range(3):
        mine = arm_init(ArmSpec("p", init="perturbed", sigma=0.2), cfg, [p[i] for p in inits], i)
        # float64 both ways, the noise added to the same init: one rounding each, same order
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b[i], rtol=0, atol=4 * torch.finfo(torch.float64).eps)


def test_perturbation_noise_is_one_draw_shared_by_parts_and_sigmas(cfg):
    a = perturbation(cfg.spec, 0, 2)
    b = perturbation(cfg.spec, 0, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    t = _teacher_init(cfg, 2)
    body = arm_init(ArmSpec("b", init="perturbed", part="body", sigma=0.5), cfg, t, 2)
    full = arm_init(ArmSpec("a", init="perturbed", part="all", sigma=0.5), cfg, t, 2)
    assert torch.equal(body[0], full[0])


def test_sgd_arms_have_no_adaptive_state_and_step_exactly(cfg):
    arms = [ArmSpec("s1", optimizer="sgd", lr=0.1), ArmSpec("s2", optimizer="sgd", lr=0.3)]
    p = [torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)]
    opt = group_optimizer(arms, cfg, p, n_groups=2)
    assert isinstance(opt, ModelwiseSGD) and not isinstance(opt, torch.optim.Optimizer)
    before = p[0].detach().clone()
    p[0].grad = torch.randn_like(p[0])
    opt.step()
    lr = torch.tensor([0.1, 0.3, 0.1, 0.3], dtype=torch.float64)[:, None, None]
    assert torch.equal(p[0].detach(), before - lr * p[0].grad)  # the same two operations: bit for bit
    assert opt.state == {}  # no moments, no momentum buffer


def test_momentum_sgd_matches_torch_sgd(cfg):
    torch.manual_seed(0)
    p0 = torch.randn(2, 6, dtype=torch.float64)
    grads = [torch.randn(2, 6, dtype=torch.float64) for _ in range(3)]
    mine = [p0.clone().requires_grad_(True)]
    ref = [p0.clone().requires_grad_(True)]
    opt = ModelwiseSGD(mine, torch.tensor([0.05, 0.05], dtype=torch.float64), torch.tensor([0.9, 0.9], dtype=torch.float64))
    topt = torch.optim.SGD(ref, lr=0.05, momentum=0.9)
    for g in grads:
        mine[0].grad, ref[0].grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    # torch may fuse p + (-lr) buf into one FMA: <= one rounding of |p| per step, 3 steps
    bound = 3 * 2 * torch.finfo(torch.float64).eps * float(p0.abs().max() + 1)
    torch.testing.assert_close(mine[0].detach(), ref[0].detach(), rtol=0, atol=bound)
    assert set(opt.state) == {0} and "exp_avg_sq" not in str(opt.state)


def test_bad_arms_are_refused_in_one_line(cfg):
    with pytest.raises(ConfigError):
        ArmSpec("x", init="perturbed")  # no sigma
    with pytest.raises(ConfigError):
        ArmSpec("x", sigma=0.1)  # sigma without perturbed
    with pytest.raises(ConfigError):
        ArmSpec("x", optimizer="adam", momentum=0.9)
    with pytest.raises(ConfigError):
        ArmSpec("x", init="shared", depth=3).check_against(cfg)  # nothing to share at another depth
    with pytest.raises(ConfigError):
        claim_config("nope")


def test_shared_arm_is_the_toy_engines_aux_student(mnist):
    """Same teachers, same noise stream, same step: the claims shared arm reproduces `sublim toy`'s
    aux-only student (float64, so any difference would be a different computation, not rounding)."""
    cfg = ToyConfig(**TINY, dtype="float64")
    toy = run_experiment(dataclasses.replace(cfg, arms=("teacher", "student_aux")), mnist)
    bank = train_teacher_bank(cfg, mnist)
    np.testing.assert_array_equal(bank.teacher_accuracy, toy.accuracy["teacher"])
    out = run_ensemble(cfg, [ArmSpec("shared")], bank, mnist)
    np.testing.assert_array_equal(out["shared"]["accuracy"], toy.accuracy["student_aux"])
    np.testing.assert_allclose(out["shared"]["epoch_loss"][-1], toy.final_loss["student_aux"], rtol=1e-12)
    cos = out["shared"]["alignment"]["cos"]
    assert cos.shape == (2, 3) and np.all(np.abs(cos) <= 1 + 1e-12)


def test_claim_run_resumes_and_recomputes_only_missing_arms(tmp_path, mnist, cfg):
    claim, c = claim_config("heads", TINY)
    out = tmp_path / "heads"
    first = run_claim(out, claim, c, mnist)
    files = sorted((out / "arms").glob("*.json"))
    assert [f.stem for f in files] == sorted(a.name for a in claim.arms)
    assert {p.name for p in out.iterdir()} >= {"config.json", "teachers.json", "summary.json", "summary.csv",
                                               "accuracy.png", "alignment.png"}
    kept = {f.name: f.stat().st_mtime_ns for f in files}
    removed = out / "arms" / "depth1_head_copied.json"
    before = json.loads(removed.read_text())
    removed.unlink()
    second = run_claim(out, claim, c, mnist)
    assert json.loads(removed.read_text())["test_accuracy"] == before["test_accuracy"]  # deterministic
    for f in files:
        if f.name != removed.name:
            assert f.stat().st_mtime_ns == kept[f.name]  # finished arms untouched
    assert [r["mean"] for r in second["rows"]] == [r["mean"] for r in first["rows"]]
    assert first["rows"][0]["vs_baseline"]["mean"] == 0.0


def test_paired_difference_and_detectable_effect():
    a = np.array([0.5, 0.6, 0.55, 0.65])
    p = paired(a, a - 0.1)
    assert abs(p["mean"] - 0.1) < 1e-12 and p["ci95"] < 1e-12
    p = paired(a, np.array([0.4, 0.62, 0.5, 0.6]))
    assert p["min_detectable"] > p["ci95"] > 0  # (t.975 + t.80) SE > t.975 SE


def test_every_claim_validates_at_paper_settings():
    for name in CLAIMS:
        claim, c = claim_config(name)
        assert c.n_models == 10 and c.width == 256 and c.teacher_epochs == c.distill_epochs == 5


def test_cross_term_is_the_theorem_at_the_shared_init():
    from sublim.theory.claims import cross_k_times, zeroth_order
    from sublim.theory.numerical import ToySetup, build, k_times, kink_onset, pnorm, student_gradient, padd

    setup = ToySetup(width=16, n_models=3, n_student=2)
    params0, dT, x, _ = build(setup, "uniform")
    mine, ref = cross_k_times(params0, params0, dT, x), k_times(params0, dT, x, "kl", "aux")
    for a, b in zip(mine, ref):  # the same JVP/H/VJP in float64: identical up to a few roundings
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # Z = 0 at the shared init (p_S = p_0 exactly up to the log-softmax rounding)
    assert float((pnorm(zeroth_order(params0, params0, x)) / pnorm(ref)).max()) < 1e-9
    # at a perturbed start, grad(eps) - grad(0) = -eps K_S dT + O(eps^2): relative error O(eps)
    cfg = ToyConfig(width=16, n_models=3)
    from sublim.theory.claims import start_of

    theta_s = start_of(ArmSpec("p", init="perturbed", sigma=0.3), cfg, params0)
    eps = min(1e-6, 0.1 * float(kink_onset(params0, dT, x).min()))  # below every ReLU flip of the teacher
    g1 = student_gradient(theta_s, padd(params0, dT, eps), x, "kl", "aux")
    g0 = student_gradient(theta_s, params0, x, "kl", "aux")
    pred = [-eps * t for t in cross_k_times(theta_s, params0, dT, x)]
    err = pnorm([a - b - c for a, b, c in zip(g1, g0, pred)]) / pnorm(pred)
    # O(eps) remainder (eps <= 1e-6, second-order coefficient O(1) in these units) plus the
    # cancellation of g1 - g0: ~1e-16 |g| / (eps |K_S dT|) ~ 1e-10; 1e-4 leaves room for both
    assert float(err.max()) < 1e-4


def test_sigma_claim_writes_the_prediction_beside_the_measurement(tmp_path, mnist, monkeypatch):
    from sublim.theory import claims as theory_claims
    from sublim.theory.claims import SigmaPrediction, write_sigma_prediction

    claim, c = claim_config("sigma", TINY)
    out = tmp_path / "sigma"
    summary = run_claim(out, claim, c, mnist)
    pc = SigmaPrediction(n_models=2, n_inputs=16, n_teacher=32, sigmas=(0.0, 0.1, 1.0), part_sigmas=(0.3,))
    pred = write_sigma_prediction(out, c, summary, pc)
    shared = pred["rows"][0]
    assert shared["arm"] == "shared" and shared["first_order_ratio"][0] == pytest.approx(1.0, abs=1e-12)
    assert {(r["part"], r["sigma"]) for r in pred["rows"]} == {("all", 0.0), ("all", 0.1), ("all", 1.0), ("body", 0.3), ("head", 0.3)}
    saved = json.loads((out / "sigma_prediction.json").read_text())
    assert saved["measured_normalized"]["shared"]["normalized"] == pytest.approx(1.0)
    assert saved["measured_normalized"]["independent"]["normalized"] == pytest.approx(0.0)
    assert (out / "sigma.png").stat().st_size > 0
    monkeypatch.setattr(theory_claims, "predict", lambda *a, **k: pytest.fail("recomputed a stored prediction"))
    again = write_sigma_prediction(out, c, summary, pc)  # same config: reused, not recomputed
    assert again["rows"] == saved["prediction"]["rows"]


@pytest.mark.parametrize("argv, needle", [(["nope"], "unknown claim"), (["heads", "--student-init", "perturbed"], "student"),
                                          (["sigma", "--n-models", "1"], "n_models")])
def test_claims_cli_refuses_bad_input_in_one_line_before_writing(tmp_path, capsys, argv, needle):
    from sublim.cli import main

    out = tmp_path / "run"
    assert main(["toy", "claims", *argv, "--tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sublim: error:") and needle in err
    assert not out.exists()


def test_claims_cli_tiny_run_end_to_end(tmp_path, capsys):
    from sublim.cli import main

    out = tmp_path / "alignment"
    assert main(["-q", "toy", "claims", "alignment", "--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "claim alignment" in printed and "shared_all_logits" in printed
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["claim"] == "alignment" and cfg["base"]["n_models"] == 3 and len(cfg["arms"]) == 3
    rec = json.loads((out / "arms" / "shared.json").read_text())
    steps = 2048 // 256  # one epoch of the tiny config
    assert len(rec["alignment"]["cos"]["mean"]) == steps and len(rec["alignment"]["cos"]["per_model"]) == 3


def test_alignment_rows_are_the_direct_computation_in_buffers_allocated_once():
    """The per-step curves are written into buffers sized once for the run (appending small tensors
    between large temporaries grew a 100-epoch run by ~17 MB a step): the buffers never move, and
    the rows read back are exactly the recorded steps' dot, norm and cosine (float64: the same ops)."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, 2, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)]
    delta = [torch.randn(2, 3, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)]
    align = Alignment([p.clone() for p in start], delta, k=2, same_shape=True, steps=5)
    where = {k: v.data_ptr() for k, v in align.rows.items()}
    students, expect = [p.clone() for p in start], []
    for _ in range(3):  # fewer steps than allocated: a matched ensemble that stopped early
        students = [p + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64) for p in students]
        align.record(students)
        d = torch.cat([(p - s).flatten(1) for p, s in zip(students, start)], 1)
        dt = torch.cat([t.repeat_interleave(2, dim=0).flatten(1) for t in delta], 1)
        expect.append((d.norm(dim=1), (d * dt).sum(1), (d * dt).sum(1) / (d.norm(dim=1) * dt.norm(dim=1))))
    out = align.arrays()
    assert {k: v.data_ptr() for k, v in align.rows.items()} == where
    assert all(v.shape == (3, 4) for v in out.values())
    for name, j in (("update_norm", 0), ("dot", 1), ("cos", 2)):
        # float64, sums of <= 16 terms in another order: |error| <= 16 u sum|terms| ~ 1e-14 here
        np.testing.assert_allclose(out[name], torch.stack([e[j] for e in expect]).numpy(), rtol=1e-12, atol=1e-14)
