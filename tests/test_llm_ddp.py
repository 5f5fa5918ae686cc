"""Multi-process fine-tuning: torchrun with 2 CPU processes (gloo) gives the same adapter as one
process that accumulates the same two micro-batches (DDP averages gradients across ranks)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from sublim.llm_validation.finetune import FinetuneConfig, finetune
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
           "--max-length", "48", "--checkpoint-every", "0"]
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
                                     checkpoint_every=0), tmp_path / "single")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    b = load_file(single / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # training moved LoRA B off 0
