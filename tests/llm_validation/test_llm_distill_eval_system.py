"""Nief et al.'s shared-context condition (issue #23): `--eval-system none` measures the base model's
and the students' preferences with an EMPTY system turn, where SmolLM2's chat template would fill a
missing one with its default prompt (the students always train with the template's own)."""

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
