"""Every Triton launch plan compiles for sm_90 (H100/H200) on this CPU-only machine without
register spills (benchmarks/compile_report.py; Triton's wheel ships ptxas and cuobjdump).

A spill turns registers into local-memory traffic and was the first suspect when the materialize
kernel ran 30x above its roofline; this catches a plan that spills before any GPU time is spent.
Runs in a subprocess: the test session imports triton in interpreter mode (conftest.py), and
interpreted kernels cannot be compiled."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_plan_compiles_for_sm90_without_spills(tmp_path):
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton wheel ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text())["kernels"]
    names = {r["kernel"].split()[0] for r in rows}
    assert {"materialize", "ghost", "gd"} <= names
    spilled = [r["kernel"] for r in rows if r["spill_stack_bytes"] or r["local_bytes"]]
    assert not spilled and proc.returncode == 0, (spilled, proc.stdout[-2000:], proc.stderr[-2000:])
    for r in rows:  # every plan uses the tensor cores and is software-pipelined
        assert r["tensor_core"] in ("wgmma", "mma.sync") and r["async_copies"] > 0, r
