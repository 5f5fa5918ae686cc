"""`sublim llm distill --executor ray` on a real local Ray cluster (the `cluster` fixture of
tests/conftest.py, shared with the toy Ray tests): the students as Ray tasks give the local
executor's numbers. The drivers run as `sublim` subprocesses, as a user runs them (Ray reads
RAY_AUTH_MODE once, when it is imported).
"""

import json
import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")


def test_distill_students_on_ray_equal_the_local_executors(cluster, tmp_path):
    """`sublim llm distill --executor ray`: each student is one Ray task on the cluster; the driver
    writes its profile. Same seeds and thread count -> the same numbers as the local executor."""
    address, _ = cluster
    small = ["--preset", "tiny", "--seeds", "0,1", "--teachers", "system_prompt", "--other", "",
             "--lora-arm", "false", "--sigmas", "", "--align", "false", "--n-contexts", "6", "--eval-samples", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBLIM_QUIET": "1"}

    def distill(out, *extra):
        cmd = [sys.executable, "-m", "sublim.cli", "-q", "llm", "distill", "--run-dir", str(out), *small, *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("timings_s")  # wall times: the one field that may differ
        return summary

    on_ray = distill(tmp_path / "ray", "--executor", "ray", "--address", address)
    assert on_ray == distill(tmp_path / "local")
    assert set(on_ray["students"]) == {"owl_system_prompt.full.sigma0.seed0", "owl_system_prompt.full.sigma0.seed1"}
