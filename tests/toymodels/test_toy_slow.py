"""The real default run (paper settings, 10 models; minutes on 2 CPU cores): the issue's thresholds."""

import json

import pytest

from sublim.cli import main


@pytest.mark.slow
def test_default_run_reproduces_subliminal_learning(tmp_path):
    out = tmp_path / "default"
    assert main(["toy", "-q", "--out", str(out)]) == 0
    arms = json.loads((out / "summary.json").read_text())["arms"]
    teacher, student, cross = arms["teacher"], arms["student_aux"], arms["cross_aux"]
    assert teacher["mean"] >= 0.90
    assert student["mean"] >= 0.40
    assert cross["mean"] <= 0.20
    assert student["mean"] - student["ci95"] > cross["mean"] + cross["ci95"]  # CIs do not overlap
