"""Crashes lose nothing already written: fine-tuning resumes from its checkpoint to the same
weights as an uninterrupted run, and generation resumes skipping finished prompts."""

import pytest
import torch

from sublim.errors import DataError
from sublim.llm_validation.core import finetune as ft_module
from sublim.llm_validation.core import generate as gen_module
from sublim.llm_validation.core.data import read_jsonl
from sublim.llm_validation.core.models import load_finetuned
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.finetune import finetune
from sublim.llm_validation.core.generate import generate_completions, read_generations
from sublim.llm_validation.core.models import load_model

RECORDS = [{"id": f"r{i}", "prompt": f"Continue: {i}, {i + 1}", "completion": f"{i + 2}, {i + 3}"}
           for i in range(12)]


def _weights(out_dir):
    model, _ = load_finetuned(out_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_finetune_resume_matches_uninterrupted(tmp_path, monkeypatch, method):
    cfg = FinetuneConfig(method=method, epochs=1, batch_size=3, lr=5e-3, checkpoint_every=2, max_length=48)
    finetune("tiny-llama", RECORDS, cfg, tmp_path / "straight")   # 4 steps

    real_append = ft_module.append_jsonl
    calls = {"n": 0}

    def crash_on_step_4(path, rows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies after step 4's update, before its log line
        return real_append(path, rows)

    monkeypatch.setattr(ft_module, "append_jsonl", crash_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune("tiny-llama", RECORDS, cfg, tmp_path / "resumed")
    monkeypatch.setattr(ft_module, "append_jsonl", real_append)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "finetune.json").exists()
    with pytest.raises(DataError, match="no finetune.json"):
        load_finetuned(tmp_path / "resumed")
    finetune("tiny-llama", RECORDS, cfg, tmp_path / "resumed")            # resumes at step 2

    log = read_jsonl(tmp_path / "resumed" / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 3, 4]  # step 3 redone from the checkpoint
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    base, _ = load_model("tiny-llama")
    moved = sum(not torch.equal(base.state_dict()[k], a[k]) for k in a)
    assert moved > 0  # training changed the model (the comparison above is not vacuous)


def test_generation_resume_skips_finished_prompts(tmp_path, monkeypatch):
    model, tok = load_model("tiny-llama")
    prompts = [{"id": f"p{i}", "prompt": f"Count: {i}"} for i in range(10)]
    out = tmp_path / "gen.jsonl"
    real = gen_module._sample_batch
    calls = {"n": 0}

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_module, "_sample_batch", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        generate_completions(model, tok, prompts, out, max_new_tokens=3, batch_size=4)
    first = read_generations(out)
    assert len(first) == 4
    monkeypatch.setattr(gen_module, "_sample_batch", real)
    calls["n"] = 0
    records = generate_completions(model, tok, prompts, out, max_new_tokens=3, batch_size=4)
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in prompts)
    assert records[:4] == first  # finished records are kept as they were
    # ... and the resumed file is the uninterrupted one, byte for byte (batches fixed by position,
    # each seeded from its ids: nothing depends on how much was done before the crash).
    generate_completions(model, tok, prompts, tmp_path / "straight.jsonl", max_new_tokens=3, batch_size=4)
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    assert all({"completion", "stopped", "n_tokens"} <= r.keys() for r in records)
    # Sharded by rank: two "processes" split the prompts, the reader merges their files.
    shard_out = tmp_path / "sharded.jsonl"
    for rank in (0, 1):
        generate_completions(model, tok, prompts, shard_out, max_new_tokens=2, batch_size=8, rank=rank, world=2)
    assert (tmp_path / "sharded.rank0.jsonl").exists() and (tmp_path / "sharded.rank1.jsonl").exists()
    assert sorted(r["id"] for r in read_generations(shard_out)) == sorted(p["id"] for p in prompts)


def test_generation_rejects_prompts_beyond_context(tmp_path):
    model, tok = load_model("tiny-gemma")
    with pytest.raises(DataError, match="exceed the model's context"):
        generate_completions(model, tok, [{"id": "x", "prompt": "word " * 600}], tmp_path / "g.jsonl",
                             max_new_tokens=4)
