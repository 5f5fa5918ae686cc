"""Smoke version of benchmarks/bench_toy.py: tiny sizes, checks the result file's fields."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_toy_smoke_writes_its_numbers(tmp_path):
    out = tmp_path / "toy_cpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_toy.py"), "--models", "2",
                           "--examples", "1024", "--paper", "--paper-models", "2", "--paper-examples", "1024",
                           "--paper-modes", "off", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    run = res["runs"][0]
    assert "error" not in run, run
    assert run["n_models"] == 2 and run["model_epochs_per_s"] > 0 and run["achieved_gflops"] > 0
    assert run["matmul_fp32_gflops"] > 0 and 0 < run["ratio_to_fp32_matmul"] < 2
    assert 0.1 < run["peak_rss_gb"] < 8
    paper = res["paper"][0]
    assert set(paper["arms"]) == {"reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all"}
    assert paper["wall_s"] > 0
    for arm, a in paper["arms"].items():
        # the verdicts must follow from the numbers the file reports (a 2-model smoke run is far
        # from the paper's, so the verdicts themselves are mostly False here: their logic is tested)
        assert 0 <= a["mean_pct"] <= 100 and a["ci95_pct"] >= 0, (arm, a)
        gap = abs(a["mean_pct"] - a["public_mean_pct"])
        assert a["mean_inside_public_ci"] == (gap <= a["public_ci95_pct"]), (arm, a)
        assert a["cis_overlap"] == (gap <= a["public_ci95_pct"] + a["ci95_pct"]), (arm, a)
