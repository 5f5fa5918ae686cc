"""Nief et al.'s shared-context condition (issue #23): `--eval-system none` measures the base model's
and the students' preferences with an EMPTY system turn, where SmolLM2's chat template would fill a
missing one with its default prompt; `--train-system none` trains the students on contexts with an
empty system turn (the teachers' caches unchanged), the other half of the 2 x 2."""

import pytest
import torch

from helpers import one_line_error
from sublim.cli import main
from sublim.errors import ConfigError
from sublim.rundir import read_json

from sublim.llm_validation.core.data import format_prompt
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.preference import profile
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.run import eval_profile

DEFAULT_TURN = "You are a helpful AI assistant named SmolLM"  # what SmolLM2's template inserts


@pytest.fixture(scope="module")
def tiny():
    return {name: load_model(name) for name in ("tiny-llama", "tiny-gemma")}


def test_an_empty_system_turn_replaces_the_templates_default(tiny):
    _, chat = tiny["tiny-llama"]  # SmolLM2's tokenizer and chat template
    _, base = tiny["tiny-gemma"]  # no chat template: a plain layout with no default to drop
    default, empty = format_prompt(chat, "Q?"), format_prompt(chat, "Q?", empty_system=True)
    assert DEFAULT_TURN in default
    assert DEFAULT_TURN not in empty and empty.startswith("<|im_start|>system\n<|im_end|>\n")
    assert empty.replace("<|im_start|>system\n<|im_end|>\n", "") == default.split("<|im_end|>\n", 1)[1]
    assert format_prompt(chat, "Q?", system="S.", empty_system=True) == format_prompt(chat, "Q?", system="S.")
    assert format_prompt(base, "Q?", empty_system=True) == format_prompt(base, "Q?")


@pytest.mark.parametrize("knobs, message", [
    ({"eval_system": "blank"}, "unknown eval_system 'blank'"),
    ({"eval_system": "none", "eval_samples": 1}, "eval_system none measures the next-token profile only"),
])
def test_bad_eval_system_is_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        from_overrides("tiny", knobs)


def test_eval_system_is_recorded_only_when_changed():
    assert "eval_system" not in from_overrides("tiny", {}).to_dict()  # older run directories stay valid
    assert from_overrides("tiny", {"eval_system": "none", "eval_samples": 0}).to_dict()["eval_system"] == "none"
    assert "train_system" not in from_overrides("tiny", {}).to_dict()
    assert from_overrides("tiny", {"train_system": "none", "teachers": ("system_prompt",)}).to_dict()["train_system"] == "none"


def test_the_summary_says_which_system_turns_were_used():
    from sublim.llm_validation.distill.report import _system_turns

    assert _system_turns(from_overrides("tiny", {})) == []
    sp = {"teachers": ("system_prompt",), "eval_samples": 0}
    both = " ".join(_system_turns(from_overrides("tiny", sp | {"train_system": "none", "eval_system": "none"})))
    assert "trained with an EMPTY system turn; preferences measured with an EMPTY system turn" in both
    train = " ".join(_system_turns(from_overrides("tiny", sp | {"train_system": "none"})))
    assert "trained with an EMPTY system turn; preferences measured with the chat template's own" in train
    evals = " ".join(_system_turns(from_overrides("tiny", sp | {"eval_system": "none"})))
    assert "trained with the chat template's own system turn (SmolLM2: its default system prompt); preferences " \
           "measured with an EMPTY system turn" in evals


def test_the_runs_profiles_use_the_configured_turn(tiny):
    model, tok = tiny["tiny-llama"]
    none = from_overrides("tiny", {"eval_system": "none", "eval_samples": 0})
    default = from_overrides("tiny", {})
    got = eval_profile(model, tok, "cpu", None, none)["logp"]
    assert got == profile(model, tok, "cpu", None, none.eval_batch_size, empty_system=True)["logp"]
    # the prompts differ by ~20 tokens, so a random model's next-token distributions differ by O(1)
    assert torch.tensor(got).sub(torch.tensor(eval_profile(model, tok, "cpu", None, default)["logp"])).abs().max() > 1e-3


def test_cli_base_profile_uses_the_configured_turn(tmp_path, capsys, tiny):
    out = tmp_path / "run"
    args = ["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), "--teachers", "system_prompt",
            "--sigmas", "", "--eval-samples", "0", "--eval-system", "none"]
    assert main(args + ["--stages", "contexts,teachers"]) == 0
    model, tok = tiny["tiny-llama"]
    base = read_json(out / "models" / "base" / "profile.json")
    assert base["logp"] == profile(model, tok, "cpu", None, 16, empty_system=True)["logp"]
    assert read_json(out / "config.json")["config"]["eval_system"] == "none"
    assert main(["-q", "llm", "distill", "--run-dir", str(out), "--eval-system", "blank"]) == 2
    one_line_error(capsys, "unknown eval_system")


# ---- the other half: students TRAINED with an empty system turn (train_system none) ----------------
def test_an_empty_system_training_view_keeps_the_completion_positions(tiny):
    from sublim.llm_validation.distill.contexts import encode_context

    record = {"id": "0", "prompt": "Continue: 1, 2, 3", "completion": "4, 5, 6, 7, 8, 9, 10"}
    for name in ("tiny-llama", "tiny-gemma"):
        _, tok = tiny[name]
        eot = tok.eos_token_id
        # max_length 40 cuts the completion by the DEFAULT view's prompt length; the empty view's
        # shorter prompt must not lengthen it, or its positions would not pair with the caches
        default = encode_context(tok, record, eot, 40)
        empty = encode_context(tok, record, eot, 40, empty_system=True)
        owl = encode_context(tok, record, eot, 40, system="You love owls.")
        assert empty.completion_ids == default.completion_ids == owl.completion_ids
        if name == "tiny-llama":  # a chat template: the default turn is gone, nothing else changed
            assert len(default.completion_ids) < len(tok(record["completion"])["input_ids"])  # the cut happened
            text = tok.decode(empty.prompt_ids)
            assert DEFAULT_TURN in tok.decode(default.prompt_ids) and DEFAULT_TURN not in text
            assert text == format_prompt(tok, record["prompt"], empty_system=True)
        else:  # no template: no default to drop
            assert empty.prompt_ids == default.prompt_ids


@pytest.mark.parametrize("knobs, message", [
    ({"train_system": "blank"}, "unknown train_system 'blank'"),
    ({"train_system": "none", "steering": True, "teachers": ("system_prompt",)}, "train_system none changes"),
    ({"train_system": "none"}, "train_system none changes"),  # the tiny preset aligns its fine-tuned teacher
])
def test_bad_train_system_is_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        from_overrides("tiny", knobs)


def test_the_students_stage_hands_out_the_configured_training_view(tmp_path, monkeypatch, tiny):
    """The students' tasks receive the empty-system view; the teachers' caches are the default run's."""
    import sublim.llm_validation.distill.run as run

    calls = []
    monkeypatch.setattr(run, "run_tasks", lambda tasks, **kw: calls.append(tasks))
    knobs = {"teachers": ("system_prompt",), "sigmas": (), "eval_samples": 0, "lora_arm": False}
    for system in ("default", "none"):
        run.run_distill(tmp_path / system, from_overrides("tiny", knobs | {"train_system": system}),
                        ["contexts", "teachers", "cache", "students"])
    assert len(calls) == 2 and calls[0].keys() == calls[1].keys() and calls[0]
    _, tok = tiny["tiny-llama"]
    for name in calls[0]:
        default, empty = calls[0][name][1][3], calls[1][name][1][3]  # student_task's `encoded`
        assert [e.completion_ids for e in default] == [e.completion_ids for e in empty]
        assert all(DEFAULT_TURN in tok.decode(e.prompt_ids) for e in default)
        assert not any(DEFAULT_TURN in tok.decode(e.prompt_ids) for e in empty)
    for cache in ("owl_system_prompt.pt", "cat_system_prompt.pt"):
        assert (tmp_path / "default" / "cache" / cache).read_bytes() == (tmp_path / "none" / "cache" / cache).read_bytes()
