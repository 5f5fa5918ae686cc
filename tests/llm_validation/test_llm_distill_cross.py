"""A student of another model family (`student_model`, distill/cross.py): the vocabulary pairing sums a
student's duplicate ids per text, the position pairing keeps exactly the contexts whose completions
split into the same texts (cut to the shorter one), a same-family "cross" student is the plain student
bit for bit, and a tiny-llama -> tiny-gemma run trains, reads its students against their own base and
says so in its summary."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_line_error

from sublim.cli import main
from sublim.errors import ConfigError
from sublim.rundir import read_json

from sublim.llm_validation.core.data import format_prompt
from sublim.llm_validation.core.models import GEMMA3_CHAT_TEMPLATE, offline_tokenizer
from sublim.llm_validation.core.preference import animal_log_odds
from sublim.llm_validation.distill.cache import TeacherCache
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.contexts import Encoded
from sublim.llm_validation.distill.cross import EOT, StudentView, grouped_log_probs, pair_contexts, text_groups

LEAN = ["--preset", "tiny", "--sigmas", "", "--lora-arm", "false", "--eval-samples", "0", "--teachers", "system_prompt",
        "--other", "", "--align", "false", "--neutral", "true", "--seeds", "0"]


def test_each_teacher_text_gets_every_student_id_with_its_text():
    teacher = [EOT, ",", "1", "2"]
    student = ["1", EOT, "2", ",", "1", "2"]  # Gemma holds each digit twice ("1" and its byte fallback "<0x31>")
    assert text_groups(teacher, student) == [[1], [3], [0, 4], [2, 5]]
    with pytest.raises(ConfigError, match=r"teacher only \['2'\]"):
        text_groups(teacher, ["1", EOT, ","])
    with pytest.raises(ConfigError, match=r"student only \['x'\]"):
        text_groups(teacher, student + ["x"])


def test_grouped_log_probs_are_the_log_of_each_texts_summed_probability():
    logp = torch.log_softmax(torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    groups = [[1], [3], [0, 4], [2, 5]]
    got = grouped_log_probs(logp, groups)
    want = torch.stack([logp.exp()[:, g].sum(-1).log() for g in groups], -1)
    # float64, probabilities in (0, 1], sums of <= 2 terms: logsumexp and log(sum(exp)) differ by a few
    # ulp of values of size <= ~5, far under 1e-12; the groups cover every id, so the texts' probabilities sum to 1
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert torch.allclose(got.exp().sum(-1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(grouped_log_probs(logp, [[j] for j in range(6)]), logp)  # singletons: the identity, exactly


def test_contexts_pair_where_the_texts_agree_and_are_cut_to_the_shorter_completion():
    t = [Encoded("a", [1], [10, 11, 12, 99]), Encoded("b", [1], [10, 12, 99]), Encoded("c", [1], [11, 99])]
    s = [Encoded("a", [7, 7], [20, 21, 22]), Encoded("b", [7], [20, 21, 98]), Encoded("c", [7, 7, 7], [21, 98])]
    text = {10: "1", 11: "2", 12: "3", 99: EOT, 20: "1", 21: "2", 22: "3", 98: EOT}
    kept, spans, dropped = pair_contexts(t, s, text.get, text.get)
    assert dropped == ["b"]  # "1 3" vs "1 2"
    assert spans == [(0, 3), (2, 2)]  # a: the student's completion was cut to 3 positions by its longer prompt
    assert kept == [Encoded("a", [7, 7], [20, 21, 22]), Encoded("c", [7, 7, 7], [21, 98])]
    cache = TeacherCache(torch.arange(9.0).reshape(9, 1), [0, 4, 7, 9])
    view = StudentView(kept, torch.tensor([20, 21, 22, 98]), [[0], [1], [2], [3]], spans)
    assert view.cache(cache).logp.flatten().tolist() == [0.0, 1.0, 2.0, 7.0, 8.0]
    assert view.cache(cache).offsets == [0, 3, 5]


def test_gemma_chat_template_folds_the_system_text_into_the_first_user_turn():
    tok = offline_tokenizer()
    tok.chat_template = GEMMA3_CHAT_TEMPLATE
    got = format_prompt(tok, "Pick one.", system="You love owls.", assistant_prefix="My favorite animal is the")
    assert got == (f"{tok.bos_token}<start_of_turn>user\nYou love owls.\n\nPick one.<end_of_turn>\n"
                   "<start_of_turn>model\nMy favorite animal is the")
    assert format_prompt(tok, "Pick one.") == f"{tok.bos_token}<start_of_turn>user\nPick one.<end_of_turn>\n<start_of_turn>model\n"


def _students(run) -> dict:
    out = {}
    for p in sorted((run / "students").glob("*/profile.json")):
        prof = read_json(p)
        prof["train"].pop("train_seconds_this_session")
        out[p.parent.name] = prof
    return out


def test_a_same_family_cross_student_is_the_plain_student_bit_for_bit(tmp_path):
    assert main(["-q", "llm", "distill", *LEAN, "--run-dir", str(tmp_path / "plain")]) == 0
    assert main(["-q", "llm", "distill", *LEAN, "--student-model", "tiny-llama", "--run-dir", str(tmp_path / "x")]) == 0
    plain, cross = _students(tmp_path / "plain"), _students(tmp_path / "x")
    assert len(plain) == 2 and json.dumps(plain, sort_keys=True) == json.dumps(cross, sort_keys=True)
    pairing = read_json(tmp_path / "x" / "students" / "pairing.json")
    assert pairing["dropped"] == [] and pairing["paired_positions"] == pairing["teacher_positions"]


def test_end_to_end_a_student_of_another_family_is_read_against_its_own_base(tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "llm", "distill", *LEAN, "--student-model", "tiny-gemma", "--run-dir", str(out)]) == 0
    summary = read_json(out / "summary.json")
    own_base = read_json(out / "models" / "student_base" / "profile.json")
    teacher_base = read_json(out / "models" / "base" / "profile.json")
    assert own_base["logp"] != teacher_base["logp"]  # tiny-gemma is another model (and has no chat template)
    student = read_json(out / "students" / "owl_system_prompt.full.sigma0.seed0" / "profile.json")
    want = float((animal_log_odds(student, "owl") - animal_log_odds(own_base, "owl")).mean())
    # the report's shift is the same float64 differences, averaged by numpy instead of torch: log-odds of size
    # <= ~10 over 55 contexts, so the two summation orders differ by < 55 * 10 * 2.2e-16 ~ 1.2e-13
    assert summary["shifts"]["owl"]["owl_system_prompt.full.sigma0"]["over_seeds"]["mean"] == pytest.approx(want, abs=1e-12)
    assert "student base (tiny-gemma)" in summary["models"]
    assert summary["pairing"]["student_model"] == "tiny-gemma" and summary["pairing"]["paired"] == 8
    assert summary["config"]["student_model"] == "tiny-gemma"
    assert "Students are tiny-gemma (another family; no shared init)" in (out / "summary.md").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--sigmas", "0.05"], "no shared init to perturb"),
    (["--steering", "true"], "distilled students only"),
    (["--methods", "mask_div"], "mask_"),
    (["--student-model", "gemma9"], "unknown model 'gemma9'"),
])
def test_bad_student_model_runs_are_refused_in_one_line(tmp_path, capsys, flags, message):
    args = ["-q", "llm", "distill", *LEAN, "--student-model", "tiny-gemma", *flags, "--run-dir", str(tmp_path / "r")]
    assert main(args) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "r").exists()


def test_student_model_is_left_out_of_config_json_at_its_default():
    assert "student_model" not in from_overrides("tiny", {}).to_dict()  # older config.json files stay as they were
    assert from_overrides("tiny", {"student_model": "tiny-gemma", "sigmas": (), "align": False}).to_dict()["student_model"] == "tiny-gemma"
