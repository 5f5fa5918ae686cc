"""`sublim toy claims NAME --executor ray` on a real local Ray cluster (the `cluster` fixture of
tests/conftest.py, as the sweep's Ray tests use): the same arm files, teachers and summary as the
local executor, bit for bit. optimizer_matched is the claim run: its matched SGD ensemble needs the
Adam arm's KL first, so it exercises both waves (the second task receives the first's targets).
The Ray driver runs as a `sublim` subprocess, as a user runs it (Ray reads RAY_AUTH_MODE once, at
import)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sublim.cli import main

ray = pytest.importorskip("ray")

ARGV = ["toy", "claims", "optimizer_matched", "--tiny", "--cpus-per-task", "1"]


def records(out: Path) -> dict:
    """Every file's numbers; wall-clock timings are the only fields allowed to differ."""
    got = {}
    for path in sorted((out / "arms").glob("*.json")):
        rec = json.loads(path.read_text())
        rec.pop("ensemble_wall_s")
        got[f"arms/{path.name}"] = rec
    teachers = json.loads((out / "teachers.json").read_text())
    teachers.pop("wall_s")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("teacher_wall_s")
    for row in summary["rows"]:
        row.pop("ensemble_wall_s")
    return {**got, "teachers": teachers, "summary": summary}


def test_ray_claim_equals_the_local_executors(cluster, tmp_path):
    address, _ = cluster
    local = tmp_path / "local"
    assert main(["-q", *ARGV, "--out", str(local)]) == 0
    remote = tmp_path / "ray"
    cmd = [sys.executable, "-m", "sublim.cli", "-q", *ARGV, "--out", str(remote), "--executor", "ray",
           "--address", address]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "sgd_lr0.3_matched" in proc.stdout
    want, got = records(local), records(remote)
    assert sorted(got) == sorted(want) and len(got) == 5 + 2  # five arms, teachers, summary
    # Bitwise: same config, same seeds, same torch thread count -> the same floats, exactly.
    assert got == want
    # and it resumes like the local executor: a rerun finds everything done, starts no task
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and records(remote) == want


def test_claims_executor_arguments_are_checked_in_one_line(tmp_path, capsys):
    from helpers import one_line_error

    out = tmp_path / "run"
    assert main(["toy", "claims", "heads", "--tiny", "--executor", "local", "--address", "auto", "--out", str(out)]) == 2
    one_line_error(capsys, "--address")
    assert main(["toy", "claims", "heads", "--tiny", "--cpus-per-task", "0", "--out", str(out)]) == 2
    one_line_error(capsys, "cpus")
    assert not out.exists()
