"""The GPU entry's driver (variants A and B, base side shared) at toy size on tiny models; and the
real thing on a GPU when there is one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sublim.rundir import read_json

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_driver_tiny_on_cpu(tmp_path):
    from sublim.llm_validation.pipeline.gpu_experiment import main

    assert main(["tiny-llama", str(tmp_path), "--tiny", "--set", "number_vocab_only=true",
                 "--set", "max_new_tokens=8"]) == 0
    results = read_json(tmp_path / "results.json")
    a, b = results["variants"]["A_system_prompt"], results["variants"]["B_finetuned_teacher"]
    assert set(a["arms"]) == {"base", "teacher", "student", "control"}
    assert set(b["arms"]) == {"base", "teacher", "student", "control"}
    assert b["arms"]["base"] == a["arms"]["base"] and b["arms"]["control"] == a["arms"]["control"]
    assert "teacher" in b["finetune"] and b["finetune"]["teacher"]["done"]
    assert "variant B_finetuned_teacher" in (tmp_path / "summary.md").read_text()


@pytest.mark.gpu
def test_gpu_experiment_script_on_device(tmp_path):
    model = os.environ.get("SUBLIM_SMOLLM2_GGUF", "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not Path(model).exists():
        pytest.skip(f"{model} not present")
    proc = subprocess.run(["bash", str(REPO / "llm_validation" / "gpu_experiment.sh"), model, str(tmp_path),
                           "--skip-b", "--budget-s", "200"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = read_json(tmp_path / "A_system_prompt" / "numbers" / "filter_report.json")
    assert rep["teacher"]["kept"] > 0
