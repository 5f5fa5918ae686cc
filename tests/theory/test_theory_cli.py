"""`sublim theory` end to end (small profile), its run directory, exit codes and dynamics."""

import json

import pytest
import torch

from sublim.cli import main
from sublim.theory import dynamics as D
from sublim.theory import numerical as N
from sublim.theory.report import TheoryConfig, format_report, run_report


def _tiny_cfg():
    return TheoryConfig(n_models=3, width=8, sign_inputs=32, predict_variants=(("aux", 3),),
                        multistep=D.MultistepConfig(teacher_steps=(2,), student_steps=3, n_eval=100, batch=32),
                        predict=D.PredictConfig(n_predict=64, n_sim=32, alpha_gd=0.1))


def test_report_runs_and_writes_run_dir(tmp_path, capsys, monkeypatch):
    # The sympy derivations (~40 s) are test_theory_symbolic.py's; here one stand-in result goes
    # through the report so that the numerical checks, the run directory and the text are tested.
    from sublim.theory import symbolic
    from sublim.theory.checks import CheckResult

    stand_in = CheckResult("symbolic stand-in", True, {"source": "test"}, section="PSD, symbolic k")
    monkeypatch.setattr(symbolic, "run_symbolic_checks", lambda: [stand_in])
    ok, text = run_report(_tiny_cfg(), str(tmp_path / "run"))
    run = tmp_path / "run"
    assert (run / "config.json").is_file() and (run / "report.txt").is_file()
    assert (run / "loglog_slope.png").stat().st_size > 1000 and (run / "multistep.png").stat().st_size > 1000
    rep = json.loads((run / "report.json").read_text())
    assert rep["checks"] and all({"name", "passed", "details"} <= set(c) for c in rep["checks"])
    assert "symbolic stand-in" in [c["name"] for c in rep["checks"]] and len(rep["checks"]) > 1  # + the numerical ones
    assert ("FAIL" in text) == (not ok)
    assert "LaTeX" in text and "PASS" in text


def test_report_marks_failures():
    from sublim.theory.checks import CheckResult

    text = format_report([CheckResult("deliberately wrong", False, section="x")], {})
    assert "[FAIL] deliberately wrong" in text and "0/1 checks PASS" in text


def test_cli_bad_out_dir_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["theory", "--out", str(blocker / "sub")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sublim: error:")


def test_cli_rejects_bad_threads(capsys):
    assert main(["theory", "--threads", "0"]) == 2


def test_adam_first_step_is_sign_step():
    """Adam's first step is lr * sign(grad) (up to its eps): the basis of the Adam prediction."""
    p = [torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)]
    g = [torch.tensor([[0.5, -0.01, 2.0]], dtype=torch.float64)]
    out = D.adam_steps(p, lambda ps: g, lr=1e-3, n=1)
    torch.testing.assert_close(out[0] - p[0], -1e-3 * torch.sign(g[0]), rtol=1e-5, atol=1e-9)


def test_multistep_gd_linearized_matches_at_tiny_teacher_step():
    """With a tiny teacher move, the linearized GD prediction (alpha eps K dT on the same inputs)
    points the same way as the real GD student's first step."""
    setup = N.ToySetup(width=8, n_models=2, n_student=64)
    params0, dT, x, _ = N.build(setup, "uniform")
    eps, alpha = 1e-4, 1.0
    dS = N.student_step(params0, N.padd(params0, dT, eps), x, "kl", "aux", alpha)
    lin = [alpha * eps * t for t in N.k_times(params0, dT, x, "kl", "aux")]
    assert float(N.pcos(dS, lin).min()) > 0.999
