"""bench_llm_step.py on a CPU without bf16 units: it records the refusal and the two matmul rates
behind it (issue 20), instead of exiting with nothing measured."""

from __future__ import annotations

import importlib.util
import json
import sys

from helpers import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_llm_step", REPO / "benchmarks" / "bench_llm_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_refusal_records_both_matmul_rates_and_the_reason(tmp_path, monkeypatch):
    import torch

    import sublim.precision

    bench = _bench()
    monkeypatch.setattr(sublim.precision, "cpu_bf16_units", lambda flags=None: [])  # a CPU without bf16
    # known rates (the real 2048^2 software-bf16 matmul takes minutes on a shared 2-core CPU)
    rates = {torch.float32: 100.0, torch.bfloat16: 20.0}
    monkeypatch.setattr(bench, "matmul_rate", lambda dtype, n=2048, reps=5: rates[dtype])
    monkeypatch.setattr(bench, "measure", lambda args: (_ for _ in ()).throw(AssertionError("step measured")))
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["bench_llm_step.py", "--repeats", "2", "--out", str(out)])
    assert bench.main() == 0
    r = json.loads(out.read_text())
    assert "bf16 instructions" in r["step_refused"] and r["machine"]["bf16_units"] == []
    assert [row["matmul_gflops"] for row in r["rows"]["bf16"]] == [20.0, 20.0]
    assert r["summary"]["float32"]["matmul_gflops"]["median"] == 100.0 and r["matmul_bf16_vs_float32"] == 0.2
    assert len(r["machine"]["loadavg_end"]) == 3
