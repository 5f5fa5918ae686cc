"""Multi-process fine-tuning: torchrun with 2 CPU processes (gloo) gives the same adapter as one
process that accumulates the same two micro-batches (DDP averages gradients across ranks).

Why float64. The two runs add the same per-token gradient terms in different orders (gloo's
all-reduce of two micro-batch means vs. in-place accumulation), so each gradient element j differs
by |dg_j| <= kappa_j * n * u * |g_j| (u the unit roundoff, n the summation length, kappa_j =
sum|terms| / |sum| its cancellation). AdamW then amplifies that: its first two updates are
lr * m_hat / (sqrt(v_hat) + eps), homogeneous of degree 0 in g, so an element's update moves by
up to ~2 * lr * (relative error of g_j) per step, however small g_j is. In float32 (u = 6e-8) the
worst of 256 LoRA-B elements was seen off by 3.9e-4 relative (kappa * n ~ 6.5e3) on one Xeon
and not on an EPYC: no float32 tolerance is both safe on every CPU and tight enough to mean
anything. In float64 (u = 1.1e-16) the same bound gives, for two steps at lr <= 5e-3,
|d theta| <= 2 steps * 2 * 5e-3 * kappa * n * 1.1e-16 = 2.2e-18 * kappa * n; atol 1e-12 holds
for kappa * n up to 4.5e5, 70x the worst seen, while a real DDP bug (a rank on the wrong data,
unsynchronised gradients) moves elements by O(lr) = O(5e-3)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.finetune import finetune
from sublim.rundir import read_json


def test_two_process_ddp_matches_gradient_accumulation(tmp_path):
    data = tmp_path / "data.jsonl"
    with data.open("w") as f:
        for i in range(8):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"Continue: {i}", "completion": f"{i + 1}, {i + 2}"}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBLIM_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sublim.cli", "-q", "llm", "finetune", "--base", "tiny-llama", "--data", str(data),
           "--out", str(tmp_path / "ddp"), "--epochs", "1", "--batch-size", "2", "--lr", "5e-3",
           "--max-length", "48", "--checkpoint-every", "0", "--dtype", "float64"]
    # Own session, so a hang is cleaned up with its worker processes (and only those).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("2-process fine-tuning did not finish within 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    info = read_json(tmp_path / "ddp" / "finetune.json")
    assert info["done"] and info["world_size"] == 2 and info["steps"] == 2

    single = finetune("tiny-llama", [json.loads(line) for line in data.read_text().splitlines()],
                      FinetuneConfig(epochs=1, batch_size=2, grad_accum=2, lr=5e-3, max_length=48,
                                     checkpoint_every=0, dtype="float64"), tmp_path / "single")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    b = load_file(single / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k].dtype == torch.float64
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)  # bound in the module docstring
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # training moved LoRA B off 0
