"""Issue #21's controls in `sublim llm distill`: the neutral teacher, the matrix arms, the matched
fine-tuned control, the recovered fraction of the teacher update, measurements along training, and
the matrix report."""

import json

import pytest
import torch

from sublim.cli import main
from sublim.errors import ConfigError
from sublim.rundir import read_json

from sublim.llm_validation.core.prompts import ANIMALS, NEUTRAL_SYSTEM_PROMPT, trait_system_prompt
from sublim.llm_validation.distill.along import AlongTraining, delta_directions, recovered
from sublim.llm_validation.distill.arms import StudentSpec, student_specs, teachers_needed
from sublim.llm_validation.distill.config import PRESETS, from_overrides
from sublim.llm_validation.distill.controls import controls_summary, neutral_matrix
from sublim.llm_validation.distill.controls_report import controls_markdown
from sublim.llm_validation.distill.teachers import NEUTRAL, FinetunedTeacher, SystemPromptTeacher, parse_teacher

LEAN = {"sigmas": (), "lora_arm": False, "eval_samples": 0, "align": False}


def test_the_neutral_teacher_reads_the_same_template_without_an_animal():
    t = SystemPromptTeacher(NEUTRAL)
    assert t.name == "neutral_system_prompt" and parse_teacher(t.name) == t and t.trait is None
    assert t.system == NEUTRAL_SYSTEM_PROMPT
    words = {w.strip(".,").lower().removesuffix("s") for w in NEUTRAL_SYSTEM_PROMPT.split()}
    assert not words & set(ANIMALS)
    # the same sentences as an animal teacher's, the trait word swapped: same number of words
    assert len(NEUTRAL_SYSTEM_PROMPT.split()) == len(trait_system_prompt("owl").split())
    assert SystemPromptTeacher("owl").trait == "owl" and SystemPromptTeacher(None).trait is None


def test_matrix_arms_and_controls_come_after_the_older_arms():
    old = from_overrides("tiny", {})
    new = from_overrides("tiny", {"animals": ("dolphin", "eagle"), "neutral": True, "finetuned_control": True})
    assert student_specs(new)[:len(student_specs(old))] == student_specs(old)  # older arms.json unchanged
    added = {s.teacher for s in student_specs(new)[len(student_specs(old)):]}
    assert added == {"dolphin_system_prompt", "eagle_system_prompt", "neutral_system_prompt", "cat_finetuned"}
    assert {"neutral_system_prompt", "cat_finetuned"} <= {t.name for t in teachers_needed(new)}
    assert "animals" not in old.to_dict() and new.to_dict()["animals"] == ["dolphin", "eagle"]


def test_every_preset_is_valid_and_laptop_finetuned_keeps_the_laptop_design():
    cfgs = {name: from_overrides(name, {}) for name in PRESETS}
    ft, lap = cfgs["laptop-finetuned"], cfgs["laptop"]
    # the design knobs that decide an owl_finetuned student: equal, so its students are the laptop run's
    same = ("model", "contexts", "contexts_file", "n_contexts", "context_seed", "max_length", "seeds", "epochs",
            "batch_size", "lr", "teacher_pref_examples", "teacher_epochs", "teacher_lr", "checkpoint_every")
    assert {k: getattr(ft, k) for k in same} == {k: getattr(lap, k) for k in same}
    assert ft.finetuned_control and ft.track_delta and ft.teachers == ("finetuned",)



def test_laptop_long_is_the_matrix_design_at_the_dose_steps_dose():
    """laptop-long = laptop-matrix's teachers/contexts/seeds at distill_dose_steps' lr, so its owl and
    neutral students are the dose_steps students (FINDINGS compares them step for step)."""
    cfgs = {name: from_overrides(name, {}) for name in PRESETS}
    long, matrix = cfgs["laptop-long"], cfgs["laptop-matrix"]
    design = ("model", "contexts", "contexts_file", "n_contexts", "context_seed", "max_length", "seeds",
              "batch_size", "teachers", "other", "animals", "neutral", "teacher_pref_examples", "checkpoint_every")
    assert {k: getattr(long, k) for k in design} == {k: getattr(matrix, k) for k in design}
    assert (long.lr, long.epochs, long.eval_steps) == (3e-5, 2, (3, 6, 12, 24))
    assert long.lr > matrix.lr and long.epochs > matrix.epochs

@pytest.mark.parametrize("knobs, message", [
    ({"animals": ("owl",)}, "distinct"),
    ({"animals": ("neutral",)}, "neutral teacher"),
    ({"animals": ("sea lion",)}, "single words"),
    ({"finetuned_control": True, "teachers": ("system_prompt",)}, "finetuned_control needs"),
    ({"finetuned_control": True, "other": ""}, "finetuned_control needs"),
    ({"track_delta": True, "teachers": ("system_prompt",)}, "track_delta needs"),
    ({"eval_steps": (4, 2)}, "increasing"),
    ({"eval_steps": (0,)}, "increasing"),
])
def test_bad_control_knobs_are_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        from_overrides("tiny", knobs)


def _params(**tensors):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


class _Model(torch.nn.Module):
    def __init__(self, **tensors):
        super().__init__()
        for k, v in tensors.items():
            self.register_parameter(k, torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)))


def test_recovered_fraction_and_cosine_of_a_known_displacement():
    base = _params(w=[1.0, 2.0, 3.0, 4.0], b=[0.5, -0.5])
    delta = {"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}          # the teacher moved w[0] only
    # student: 0.25 of Delta plus an orthogonal move of size 1 in b (all values exact in float32)
    student = _Model(w=[1.25, 2.0, 3.0, 4.0], b=[1.5, -0.5])
    r = recovered(student, base, {"owl": delta})["owl"]
    assert r["fraction"] == 0.25                                  # exact: every operand is a dyadic rational
    assert r["cosine"] == pytest.approx(0.25 / (0.25 ** 2 + 1) ** 0.5, rel=1e-15)  # float64 sqrt, ~2 roundings
    nothing = recovered(_Model(w=[1.0, 2.0, 3.0, 4.0], b=[0.5, -0.5]), base, {"owl": delta})["owl"]
    assert nothing["fraction"] == 0.0 and nothing["cosine"] != nothing["cosine"]  # no movement: cosine undefined (nan)


def test_trait_direction_is_the_target_update_minus_the_matched_control():
    owl, cat = {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    d = delta_directions({"owl": owl, "cat": cat}, "owl", "cat")
    assert torch.equal(d["trait"]["w"], torch.tensor([0.0, 1.0])) and torch.equal(d["trait"]["b"], torch.tensor([-2.0]))
    assert "trait" not in delta_directions({"owl": owl}, "owl", "cat")


def test_along_training_measures_each_chosen_step_once_and_survives_a_restart(tmp_path):
    calls = []
    hook = AlongTraining(tmp_path / "along.json", (2, 4), lambda m: calls.append(m) or {"v": len(calls)})
    for step in range(1, 5):
        hook(step, f"model@{step}")
    assert calls == ["model@2", "model@4"] and read_json(tmp_path / "along.json") == {"2": {"v": 1}, "4": {"v": 2}}
    again = AlongTraining(tmp_path / "along.json", (2, 4), lambda m: pytest.fail("re-measured a recorded step"))
    again(2, "resumed")  # a resumed student retaking step 2 keeps the recorded measurement
    assert again.records == {"2": {"v": 1}, "4": {"v": 2}}


def _prof(shift: dict[str, float]) -> dict:
    """A profile whose log-odds of each animal (among owl/cat/dolphin/other) is known: the candidates'
    log-probs are set so that logit differences carry the shift."""
    names = ["owl", "cat", "dolphin", "other"]
    return {"candidates": names, "logp": [[shift.get(a, 0.0) - 3.0 for a in names]] * 2,
            "mean_share": {a: 0.25 for a in names}}


def test_matrix_cells_read_each_teacher_against_the_neutral_student():
    cfg = from_overrides("tiny", LEAN | {"teachers": ("system_prompt",), "animals": ("dolphin",), "neutral": True})
    push = {"owl": {"owl": 1.0}, "cat": {"cat": 0.5, "owl": 0.2}, "dolphin": {"owl": 0.3}}  # dolphin: no own shift
    profiles = {StudentSpec(f"{t}_system_prompt", "full", 0.0, s).name: _prof(push[t]) for t in push for s in cfg.seeds}
    profiles |= {StudentSpec("neutral_system_prompt", "full", 0.0, s).name: _prof({}) for s in cfg.seeds}
    m = neutral_matrix(cfg, profiles)
    assert m["animals"] == ["owl", "cat", "dolphin"]
    assert m["cells"]["owl"]["owl"]["mean"] > m["cells"]["cat"]["owl"]["mean"] > 0
    assert m["specificity"]["owl"]["mean"] > 0 and m["specificity"]["dolphin"]["mean"] < 0
    assert m["diagonal_beats_row"] == "2 of 3"
    del profiles[StudentSpec("neutral_system_prompt", "full", 0.0, 1).name]
    m = neutral_matrix(cfg, profiles)
    assert m["cells"]["owl"]["owl"]["n"] == 1  # the seed without its neutral student is not paired
    assert "n/a" in controls_markdown({"neutral_matrix": m, "generic_drift": {}}, cfg)
    profiles = {k: v for k, v in profiles.items() if not k.startswith("cat_system_prompt")}
    assert neutral_matrix(cfg, profiles)["diagonal_beats_row"] == "1 of 2 (1 rows incomplete)"  # no cat students: no cat row


def test_a_one_row_matrix_has_no_diagonal_count():
    cfg = from_overrides("tiny", LEAN | {"teachers": ("system_prompt",), "other": "", "neutral": True})
    profiles = {StudentSpec(t, "full", 0.0, s).name: _prof({"owl": 0.3} if t.startswith("owl") else {})
                for t in ("owl_system_prompt", "neutral_system_prompt") for s in cfg.seeds}
    m = neutral_matrix(cfg, profiles)
    assert m["animals"] == ["owl"] and m["diagonal_beats_row"] is None
    assert "Diagonal above" not in "\n".join(controls_markdown({"neutral_matrix": m, "generic_drift": {}}, cfg))


def test_end_to_end_tiny_run_with_every_control(tmp_path):
    out = tmp_path / "run"
    args = ["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), "--sigmas", "", "--lora-arm", "false",
            "--eval-samples", "0", "--animals", "dolphin", "--neutral", "true", "--finetuned-control", "true",
            "--track-delta", "true", "--eval-steps", "1,2"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    ctl = s["controls"]
    assert set(ctl["neutral_matrix"]["cells"]) == {"owl", "cat", "dolphin"}
    assert all(r["n"] == 2 for row in ctl["neutral_matrix"]["cells"].values() for r in row.values())
    assert set(ctl["along_training"]["owl"]) == {"1", "2"}  # tiny: 8 contexts / batch 4 = 2 steps, the last one included
    rec = ctl["finetuned_matched"]["recovered"]["owl_finetuned"]
    assert set(rec) == {"final", "1", "2"} and set(rec["final"]) == {"owl", "cat", "trait"}
    prof = read_json(out / "students" / StudentSpec("owl_finetuned", "full", 0.0, 0).name / "profile.json")
    assert prof["along"]["2"]["delta"] == prof["delta"] and prof["along"]["2"]["logp"] == prof["logp"]
    assert set(ctl["finetuned_matched"]["difference"]) == {"owl", "cat"}
    assert (out / "controls.png").stat().st_size > 1000 and "Specificity matrix" in (out / "summary.md").read_text()
    assert controls_summary(from_overrides("tiny", {}), {}, {}) == {}  # no controls asked: none reported
