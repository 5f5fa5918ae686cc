"""Weight noise on teacher AND student (`shared_noise`, distill/noise.py; OpenReview a2sc2Y91hO), on
the tiny model: the noisy teacher runs on exactly the student's perturbed init, its distributions are
computed once per student and reused, the arms pair target with neutral at the same noise and seed,
and the report's transfer, paired difference and ratio are the arithmetic they claim."""

from __future__ import annotations

import pytest
import torch

from sublim.cli import main
from sublim.errors import ConfigError
from sublim.rundir import read_json

from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.distill import noise
from sublim.llm_validation.distill.arms import StudentSpec, student_specs, teachers_needed
from sublim.llm_validation.distill.cache import compute_cache
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.contexts import encode_contexts, load_context_records
from sublim.llm_validation.distill.students import make_student
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher
from sublim.llm_validation.distill.vocab import end_of_turn_id, number_token_ids

OWL, NEU = SystemPromptTeacher("owl").name, SystemPromptTeacher(NEUTRAL).name
LEAN = {"sigmas": (), "lora_arm": False, "eval_samples": 0, "align": False, "teachers": ("system_prompt",),
        "other": "", "neutral": True}


def test_shared_arms_come_last_pair_with_the_neutral_student_and_keep_one_key_format():
    old = from_overrides("tiny", LEAN)
    new = from_overrides("tiny", LEAN | {"shared_noise": (0.05,)})
    assert student_specs(new)[:len(student_specs(old))] == student_specs(old)  # older arms.json unchanged
    added = student_specs(new)[len(student_specs(old)):]
    assert {(s.teacher, s.sigma, s.shared) for s in added} == {(OWL, 0.05, True), (NEU, 0.05, True)}
    assert len(added) == 2 * len(new.seeds) and [StudentSpec.parse(s.name) for s in added] == added
    spec = StudentSpec(OWL, "full", 0.05, 1, shared=True)
    assert spec.name == "owl_system_prompt.full.sigma0.05_shared.seed1"
    assert spec.reference == StudentSpec(NEU, "full", 0.05, 1, shared=True)  # same noise, same seed
    assert StudentSpec(NEU, "full", 0.05, 1, shared=True).reference is None
    assert StudentSpec.parse("owl_system_prompt.full.sigma0.05.seed1").shared is False  # older keys as before
    assert teachers_needed(new) == teachers_needed(old)  # the noisy teachers' caches are the students' own
    assert "shared_noise" not in old.to_dict() and new.to_dict()["shared_noise"] == [0.05]


def test_the_noisy_teacher_runs_on_exactly_the_students_init_and_is_computed_once(tmp_path, monkeypatch):
    model, tok = load_model("tiny-llama")
    cfg = from_overrides("tiny", LEAN | {"shared_noise": (0.05,)})
    spec, vocab = StudentSpec(OWL, "full", 0.05, 2, shared=True), number_token_ids(tok)
    system = SystemPromptTeacher("owl").system
    encoded = encode_contexts(tok, load_context_records("synthetic", "", 4, 0), end_of_turn_id(tok), 112, system)
    cache = noise.noisy_teacher(cfg, spec, model, tok, (system, encoded), vocab, "cpu", tmp_path)
    # the same forward on the student's init, in the same process and order: bit-identical
    init = make_student(model, spec, cfg).eval()
    assert torch.equal(cache.logp, compute_cache(init, encoded, vocab, "cpu", cfg.eval_batch_size, "x").logp)
    clean = compute_cache(model, encoded, vocab, "cpu", cfg.eval_batch_size, "x").logp
    assert not torch.equal(cache.logp, clean)  # the noise reached the teacher
    assert (tmp_path / "teacher_profile.json").exists()

    def boom(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(noise, "compute_cache", boom)
    monkeypatch.setattr(noise, "profile", boom)
    again = noise.noisy_teacher(cfg, spec, model, tok, (system, encoded), vocab, "cpu", tmp_path)
    assert torch.equal(again.logp, cache.logp)


def _prof(owl: float) -> dict:
    return {"candidates": ["owl", "cat"], "logp": [[owl, -1.0], [owl, -1.0]], "mean_share": {"owl": 0.5, "cat": 0.5}}


def test_the_summary_is_the_paired_arithmetic(tmp_path):
    cfg = from_overrides("tiny", LEAN | {"shared_noise": (0.05,)})
    # seed k: transfer 0.1 (k + 1) at noise 0, 0.3 (k + 1) under shared noise, so the ratio is 3. 0.1 and
    # 0.3 are inexact in binary: compared to 1e-12 (a few float64 roundings of numbers of size <= 2: ~1e-15)
    profiles = {}
    for k in cfg.seeds:
        profiles[StudentSpec(OWL, "full", 0.0, k).name] = _prof(-1.0 + 0.1 * (k + 1))
        profiles[StudentSpec(NEU, "full", 0.0, k).name] = _prof(-1.0)
        profiles[StudentSpec(OWL, "full", 0.05, k, shared=True).name] = _prof(-2.0 + 0.3 * (k + 1))
        profiles[StudentSpec(NEU, "full", 0.05, k, shared=True).name] = _prof(-2.0)
    s = noise.noise_summary(cfg, tmp_path, profiles)
    assert s["zero_noise"]["mean"] == pytest.approx(0.15, abs=1e-12)  # seeds 0, 1: 0.1, 0.2
    row = s["0.05"]
    assert row["transfer"]["mean"] == pytest.approx(0.45, abs=1e-12)
    assert row["minus_zero_noise"]["mean"] == pytest.approx(0.30, abs=1e-12)
    assert row["ratio_of_means"] == pytest.approx(3.0, abs=1e-12)
    assert row["teacher_gain"] == {"missing": True}  # no teacher_profile.json under tmp_path
    md = noise.noise_markdown(s, cfg)
    assert "| 0.05 | +0.4500 +- " in md and "| 3.00 |" in md and "| missing |" in md


def test_end_to_end_the_shared_arms_train_and_are_reported(tmp_path):
    out = tmp_path / "run"
    args = ["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), "--sigmas", "", "--lora-arm", "false",
            "--eval-samples", "0", "--teachers", "system_prompt", "--other", "", "--align", "false",
            "--neutral", "true", "--shared-noise", "0.05", "--seeds", "0"]
    assert main(args) == 0
    for t in (OWL, NEU):
        d = out / "students" / StudentSpec(t, "full", 0.05, 0, shared=True).name
        assert {p.name for p in d.iterdir()} == {"profile.json", "teacher_cache.pt", "teacher_cache.json",
                                                 "teacher_profile.json"}
    summary = read_json(out / "summary.json")
    assert summary["shifts"]["owl"]["owl_system_prompt.full.sigma0.05_shared"]["reference"] == \
        "neutral-teacher student, same noise"
    row = summary["shared_noise"]["0.05"]
    assert row["transfer"]["n"] == 1 and row["teacher_gain"]["n"] == 1 and "ratio_of_means" in row
    md = (out / "summary.md").read_text()
    assert "Weight noise on teacher AND student" in md
    assert "+- n/a (n 1, detectable n/a)" in md and "nan" not in md  # one seed: no CI, never "+- nan"


@pytest.mark.parametrize("knobs, message", [
    ({"shared_noise": (0.05,), "neutral": False}, "set --neutral true"),
    ({"shared_noise": (0.0,)}, "finite numbers > 0"),
    ({"shared_noise": (0.05, 0.05)}, "distinct"),
])
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        from_overrides("tiny", LEAN | knobs)
