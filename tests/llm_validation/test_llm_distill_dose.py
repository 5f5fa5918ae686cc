"""`sublim llm dose` (distill/dose.py): the dose-response gathered from finished distill runs."""

import json
import math

import pytest

from helpers import one_line_error
from sublim.cli import main

from sublim.llm_validation.distill.arms import StudentSpec
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.controls import lo
from sublim.llm_validation.distill.dose import points_from

LEAN = ["--sigmas", "", "--lora-arm", "false", "--eval-samples", "0", "--align", "false", "--teachers", "system_prompt"]
NAMES = ["owl", "cat", "dolphin", "other"]


def _prof(raise_by: dict[str, float], steps: int | None = None) -> dict:
    """A profile over 4 candidates whose log-probs are -3 + raise_by[a] in each of 2 contexts."""
    p = {"candidates": NAMES, "logp": [[raise_by.get(a, 0.0) - 3.0 for a in NAMES]] * 2}
    return p | ({"train": {"steps": steps}} if steps else {})


def test_points_read_the_target_against_the_neutral_student_at_every_profiled_step():
    cfg = from_overrides("tiny", {"other": "", "neutral": True, "eval_steps": (1,), "lr": 1e-3})
    owl = _prof({"owl": 1.0}, steps=2) | {"along": {"1": {"logp": _prof({"owl": 0.5})["logp"]}}}
    neutral = _prof({"cat": 0.25}, steps=2) | {"along": {"1": {"logp": _prof({})["logp"]}}}
    students = {StudentSpec(f"{t}_system_prompt", "full", 0.0, s).name: p
                for s in cfg.seeds for t, p in (("owl", owl), ("neutral", neutral))}
    pts = points_from(cfg, _prof({}), students, "r")
    assert [p["step"] for p in pts] == [1, 2] and [p["dose"] for p in pts] == [1e-3, 2e-3]
    # step 1: only owl's log-prob differs (by 0.5), so owl's log-odds rise by 0.5 up to float64
    # rounding of two logsumexps of O(1) terms (a few ulps of 3: < 1e-14)
    assert pts[0]["trait"]["mean"] == pytest.approx(0.5, abs=1e-14)
    assert pts[0]["drift"]["mean"] == 0.0  # the neutral student's step-1 record is the base profile
    final = pts[1]
    want = float((lo(owl, "owl") - lo(neutral, "owl")).mean())
    assert final["trait"]["mean"] == want and final["trait"]["n"] == len(cfg.seeds)
    others = sum(float((lo(owl, a) - lo(neutral, a)).mean()) for a in NAMES[1:]) / 3
    assert final["others"]["mean"] == pytest.approx(others, rel=1e-15)  # a 3-term mean: 1 rounding
    assert final["specific"]["mean"] == pytest.approx(want - others, abs=1e-15)
    assert final["drift"]["mean"] < 0  # cat rose in the neutral student, so owl's odds fell
    del students[StudentSpec("neutral_system_prompt", "full", 0.0, 1).name]
    assert points_from(cfg, _prof({}), students, "r")[1]["trait"]["n"] == len(cfg.seeds) - 1  # unpaired seed left out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dose") / "run"
    assert main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), *LEAN, "--other", "",
                 "--neutral", "true", "--eval-steps", "1"]) == 0
    return out


def test_dose_command_agrees_with_the_runs_own_along_training_report(tiny_run, tmp_path, capsys):
    assert main(["-q", "llm", "dose", str(tiny_run), "--out", str(tmp_path / "dose")]) == 0
    pts = json.loads((tmp_path / "dose" / "dose.json").read_text())["points"]
    ctl = json.loads((tiny_run / "summary.json").read_text())["controls"]
    assert [p["step"] for p in pts] == [1, 2]  # tiny: 8 contexts / batch 4 = 2 steps; step 2 is the final profile
    # two code paths over the same profiles: controls.py (along training; the matrix's diagonal) and dose.py
    assert pts[0]["trait"]["mean"] == ctl["along_training"]["owl"]["1"]["mean"]
    assert pts[1]["trait"]["mean"] == ctl["neutral_matrix"]["cells"]["owl"]["owl"]["mean"]
    assert (tmp_path / "dose" / "dose.png").stat().st_size > 1000
    assert "Largest trait shift" in capsys.readouterr().out
    assert json.loads((tmp_path / "dose" / "config.json").read_text())["config"]["runs"] == [str(tiny_run)]


def test_dose_refuses_runs_it_cannot_read_in_one_line(tiny_run, tmp_path, capsys):
    assert main(["llm", "dose", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    one_line_error(capsys, "not a distill run directory")
    assert not (tmp_path / "d").exists()  # inputs are read before the output directory is made
    no_neutral = tmp_path / "plain"
    assert main(["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(no_neutral), *LEAN,
                 "--stages", "contexts"]) == 0
    capsys.readouterr()
    assert main(["llm", "dose", str(no_neutral), "--out", str(tmp_path / "d")]) == 2
    one_line_error(capsys, "--neutral true")
    assert main(["-q", "llm", "dose", str(tiny_run), "--out", str(tmp_path / "d2")]) == 0
    capsys.readouterr()
    assert main(["llm", "dose", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "d2")]) == 2
    one_line_error(capsys)  # another set of runs into the same directory: refused, not mixed
    assert math.isfinite(json.loads((tmp_path / "d2" / "dose.json").read_text())["points"][0]["trait"]["mean"])
