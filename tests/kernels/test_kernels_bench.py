"""Smoke test of benchmarks/bench_kernels.py: one small CPU shape, every PyTorch method, the CSV."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"


def test_bench_kernels_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.csv"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--no-model", "--reps", "1", "--warmup", "0", "--k", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(out.open()))
    stats = {r["stat"] for r in rows}
    assert stats == {"norm", "norm+dot k=1", "norm+dot k=2"}
    for r in rows:
        assert r["status"] == "ok" and float(r["median_ms"]) > 0 and float(r["floor_ms"]) > 0
        assert r["correct"] == "True", r  # every PyTorch formulation agrees with float64 here
        assert float(r["speedup_vs_best_pytorch"]) > 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["copy_bandwidth_GBps"] > 0 and meta["matmul_TFLOPs"] > 0 and meta["config"]["k"] == 2


def test_bench_kernels_triton_rows_in_interpreter(tmp_path):
    """The Triton rows (auto and every tuning candidate) on one tiny shape in the interpreter."""
    from sublim.kernels.linear_stats import triton_available

    if not triton_available(torch.device("cpu")):
        import pytest

        pytest.skip("needs TRITON_INTERPRET=1")
    spec = importlib.util.spec_from_file_location("bench_kernels_i", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.csv"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--triton-interpret", "--no-model", "--reps", "1", "--warmup", "0", "--k", "2",
                           "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(out.open()))
    triton_rows = [r for r in rows if r["kind"] == "kernel"]
    # per stat, experimental plans included: auto + ghost x 5 splits + materialize x 2 (norm);
    # auto + ghost+gd x 2 + materialize x 4 (dots)
    assert len(triton_rows) == 8 + 7 + 7
    for r in rows:
        assert r["status"] == "ok" and r["correct"] == "True", r
