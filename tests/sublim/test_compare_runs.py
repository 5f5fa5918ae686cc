"""tools/compare_runs.py, the before/after check of behaviour-preserving refactors: timing fields
are ignored, anything else that differs (a byte, a key, a missing file) is reported."""

import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("compare_runs", Path(__file__).resolve().parents[2] / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_runs)


def _run(root: Path, seconds: float, value: float, extra: bool = False) -> Path:
    (root / "students" / "a").mkdir(parents=True)
    (root / "timings.json").write_text(json.dumps({"students": seconds}))
    (root / "config.json").write_text(json.dumps({"config": {"lr": 0.1}, "environment": {"time_utc": str(seconds)}}))
    (root / "students" / "a" / "profile.json").write_text(
        json.dumps({"mean": value, "train": {"train_seconds_this_session": seconds}, "phase_s": {"teacher": seconds}}))
    (root / "summary.md").write_text(f"| a | {value} |\n")
    if extra:
        (root / "more.txt").write_text("x")
    return root


def test_timings_aside_two_runs_are_identical_and_any_other_difference_is_listed(tmp_path):
    a = _run(tmp_path / "a", 1.0, 0.5)
    assert compare_runs.compare(a, _run(tmp_path / "b", 2.0, 0.5)) == []
    assert compare_runs.main([str(a), str(tmp_path / "b")]) == 0
    assert compare_runs.compare(a, _run(tmp_path / "c", 1.0, 0.5000001)) == [
        "differs: students/a/profile.json", "differs: summary.md"]
    assert compare_runs.compare(a, _run(tmp_path / "d", 1.0, 0.5, extra=True)) == [f"only in {tmp_path / 'd'}: more.txt"]
    assert compare_runs.main([str(a), str(tmp_path / "c")]) == 1
