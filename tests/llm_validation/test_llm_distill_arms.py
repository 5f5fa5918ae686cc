"""Typed arms of `sublim llm distill`: one key format and its parser, the record of the arms the
students stage ran, and a report that lists a missing student as a row instead of skipping it."""

import pytest

from sublim.errors import DataError
from sublim.llm_validation.distill.arms import StudentSpec, record_arms, recorded_arms, student_specs, teachers_needed
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.report import arm_shifts, format_markdown, specificity
from sublim.llm_validation.distill.teachers import parse_teacher


def _profile(owl_logp: float) -> dict:
    # two contexts, candidates owl/cat: log-odds of owl = owl_logp - cat_logp per context
    return {"candidates": ["owl", "cat"], "logp": [[owl_logp, -1.0], [owl_logp, -1.0]],
            "mean_share": {"owl": 0.5, "cat": 0.5}}


def test_every_key_of_a_config_parses_back_to_its_spec():
    cfg = from_overrides("tiny", {})
    specs = student_specs(cfg)
    assert len({s.name for s in specs}) == len(specs) > 4
    assert [StudentSpec.parse(s.name) for s in specs] == specs
    assert StudentSpec.parse("owl_system_prompt.lora.sigma0.05.seed3") == StudentSpec("owl_system_prompt", "lora", 0.05, 3)
    with pytest.raises(DataError, match="not a student key"):
        StudentSpec.parse("owl_system_prompt.full.seed0")
    with pytest.raises(DataError, match="not a teacher key"):
        StudentSpec.parse("owl_prompted.full.sigma0.seed0")
    for t in teachers_needed(cfg):
        assert parse_teacher(t.name) == t


def test_the_recorded_arms_are_what_the_report_reads(tmp_path):
    cfg = from_overrides("tiny", {})
    assert recorded_arms(tmp_path / "arms.json", cfg) == student_specs(cfg)  # no record: the config's arms
    record_arms(tmp_path / "arms.json", student_specs(cfg)[:2])
    assert recorded_arms(tmp_path / "arms.json", cfg) == student_specs(cfg)[:2]


def test_a_missing_student_is_a_reported_row_never_a_silent_skip():
    cfg = from_overrides("tiny", {"sigmas": (), "lora_arm": False, "teachers": ("system_prompt",)})
    specs = student_specs(cfg)
    base = _profile(-1.0)
    profiles = {s.name: _profile(-0.5) for s in specs if not (s.teacher == "cat_system_prompt" or s.seed == 1)}
    shifts = arm_shifts(specs, profiles, base, "owl")
    assert shifts["owl_system_prompt.full.sigma0"]["missing"] == ["owl_system_prompt.full.sigma0.seed1"]
    per_seed = shifts["owl_system_prompt.full.sigma0"]["per_seed"]
    # log-odds shift (-0.5 - -1) via logsumexp/log1p in float64: ~10 roundings of O(1) values, <= 1e-14
    assert list(per_seed) == [0] and per_seed[0] == pytest.approx(0.5, abs=1e-14)
    assert shifts["cat_system_prompt.full.sigma0"] == {"teacher": "cat_system_prompt", "method": "full", "sigma": 0.0,
                                                       "animal": "owl", "missing": [s.name for s in specs
                                                                                    if s.teacher == "cat_system_prompt"]}
    spec = specificity(cfg, profiles)
    assert "cat_system_prompt.full.sigma0.seed0" in spec["owl"]["missing"] and "over_seeds" not in spec["owl"]
    md = format_markdown({"models": {}, "shifts": {"owl": shifts}, "specificity": spec, "sft": {}}, cfg)
    assert "| owl | cat_system_prompt.full.sigma0 | missing: cat_system_prompt.full.sigma0.seed0" in md
    assert "(missing: owl_system_prompt.full.sigma0.seed1)" in md


def test_specificity_is_absent_when_the_design_has_no_system_prompt_pair():
    """laptop-finetuned's design has cat_system_prompt but no owl_system_prompt: no specificity row
    (the report printed 'missing' for arms never asked for), while a designed-but-absent arm stays a row."""
    cfg = from_overrides("tiny", {"sigmas": (), "lora_arm": False, "teachers": ("finetuned",), "finetuned_control": True})
    assert "owl_system_prompt" not in {s.teacher for s in student_specs(cfg)}
    profiles = {s.name: _profile(-0.5) for s in student_specs(cfg)}
    assert specificity(cfg, profiles) == {}
    both = from_overrides("tiny", {"sigmas": (), "lora_arm": False, "teachers": ("system_prompt",)})
    assert "missing" in specificity(both, {})["owl"]
