"""Issue #23's two shared-init / steering arms of `sublim llm distill`, on the tiny model:
- the steering-vector readout of trained students (distill/steer.py, core/steering.py): zero for a
  student that is the base model, cosine one for a student steered by the teacher's own direction,
  written once beside profile.json and never recomputed by a rerun, and its report;
- the body-only / head-only init perturbation arms (distill/parts.py): exactly the named tensors
  move (by the all-weights arm's own noise), the tied embedding stays tied, keys and controls."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from sublim.cli import main
from sublim.errors import ConfigError
from sublim.rundir import read_json

from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.distill import steer
from sublim.llm_validation.distill.arms import StudentSpec, student_specs, teachers_needed
from sublim.llm_validation.distill.config import from_overrides
from sublim.llm_validation.distill.contexts import encode_contexts, load_context_records
from sublim.llm_validation.distill.parts import head_parameter_names, part_parameter_names
from sublim.llm_validation.distill.report import arm_shifts
from sublim.llm_validation.distill.steering_report import layer_table, steering_markdown
from sublim.llm_validation.distill.students import make_student
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher
from sublim.llm_validation.distill.vocab import end_of_turn_id

U32 = 2.0 ** -24  # float32 unit roundoff
OWL = SystemPromptTeacher("owl").name


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-llama")
    return model.eval(), tok


class _Contexts:
    """What steer.py reads of run.py's Contexts: the prompts tokenized per system prompt, a digest."""

    def __init__(self, tok, n: int = 4):
        self.tok, self.records, self.sha256 = tok, load_context_records("synthetic", "", n, 0), "test"

    def encoded(self, system=None):
        return encode_contexts(self.tok, self.records, end_of_turn_id(self.tok), 112, system)


def _teachers():
    return [SystemPromptTeacher("owl"), SystemPromptTeacher("cat"), SystemPromptTeacher(NEUTRAL), SystemPromptTeacher(None)]


# ---- the steering readout ---------------------------------------------------------------------

def test_the_readout_of_the_base_against_itself_is_zero_and_says_so(tiny, tmp_path):
    model, tok = tiny
    ctx = _Contexts(tok)
    ref = steer.compute_reference(model, ctx, _teachers(), "owl")
    assert set(ref["directions"]["paper"]) == {OWL, "cat_system_prompt", "neutral_system_prompt", "trait"}  # base: no prompt
    # trait = owl change - neutral change, the same float64 subtraction: exact
    assert torch.equal(ref["directions"]["paper"]["trait"],
                       ref["directions"]["paper"][OWL] - ref["directions"]["paper"]["neutral_system_prompt"])
    r = steer.student_readout(tmp_path / "steering.json", copy.deepcopy(model), ctx.encoded(), ref)
    for variant in steer.VARIANTS:
        for rows in r["variants"][variant].values():
            assert len(rows) == model.config.num_hidden_layers
            for row in rows:  # same weights, same input: bit-identical activations, so exactly zero
                assert row["student_change_norm"] == 0.0 and row["defined"] is False and row["cosine"] is None
                assert row["teacher_change_norm"] > 0
    assert json.loads((tmp_path / "steering.json").read_text()) == r


def _steered(model, layer: int, v: torch.Tensor):
    student = copy.deepcopy(model)

    def add(_m, _a, out):
        return (out[0] + v.float(),) + tuple(out[1:]) if isinstance(out, tuple) else out + v.float()

    student.model.layers[layer].register_forward_hook(add)
    return student


def test_a_student_steered_by_the_teacher_direction_reads_cosine_one(tiny, tmp_path):
    model, tok = tiny
    ctx = _Contexts(tok)
    ref = steer.compute_reference(model, ctx, _teachers(), "owl")
    layer = 0
    v = ref["directions"]["paper"][OWL][layer]
    row = steer.student_readout(tmp_path / "a.json", _steered(model, layer, v), ctx.encoded(), ref)["variants"]["paper"][OWL][layer]
    # Bound (as test_llm_probes): the student's change at every position is fl(h + v) - h, one float32
    # rounding per element, so its mean is v + e with ||e|| <= u * max ||h + v||; relative eps = that / ||v||
    # and 1 - cos <= eps. The float64 sums of ~100 positions add ~100 * 2^-53 relative: factor 4 covers it.
    with torch.no_grad():
        h_max = max(float(model(input_ids=torch.tensor([e.prompt_ids]), output_hidden_states=True)
                          .hidden_states[layer + 1][0].norm(dim=-1).max()) for e in ctx.encoded())
    eps = 4 * U32 * (h_max + float(v.norm())) / float(v.norm())
    assert row["defined"] and 1 - row["cosine"] <= eps, (row, eps)
    assert math.isclose(row["student_change_norm"], row["teacher_change_norm"], rel_tol=eps)
    # a random vector of the same norm does not read as aligned: in d = 64 a random cosine has sd 1/8,
    # so 0.5 is 4 sd (fixed seed; this is the check that can fail)
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * v.norm() / math.sqrt(v.numel())
    other = steer.student_readout(tmp_path / "b.json", _steered(model, layer, w), ctx.encoded(), ref)
    assert abs(other["variants"]["paper"][OWL][layer]["cosine"]) < 0.5


def test_a_written_readout_is_never_recomputed(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    ctx = _Contexts(tok, n=2)
    ref = steer.compute_reference(model, ctx, _teachers(), "owl")
    first = steer.student_readout(tmp_path / "s.json", copy.deepcopy(model), ctx.encoded(), ref)
    before = (tmp_path / "s.json").read_bytes()

    def boom(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(steer, "layer_means", boom)
    assert steer.student_readout(tmp_path / "s.json", copy.deepcopy(model), ctx.encoded(), ref) == first
    assert (tmp_path / "s.json").read_bytes() == before


def test_readout_layer_table_pairs_by_seed_and_skips_undefined_layers():
    a = {0: [0.5, 0.9], 1: [0.7, None], 2: [0.6, 0.8]}
    b = {0: [0.1, 0.2], 1: [0.3, 0.4]}
    rows = layer_table(a, b)
    assert rows[0]["difference"]["n"] == 2 and rows[0]["difference"]["per_seed"] == pytest.approx({0: 0.4, 1: 0.4}, abs=1e-15)
    assert rows[1]["target"]["n"] == 2 and rows[1]["difference"]["per_seed"] == pytest.approx({0: 0.7}, abs=1e-15)
    st = {"target": OWL, "control": "neutral_system_prompt", "students_read": 5, "variants": {"paper": {OWL: rows}}}
    md = steering_markdown(st)
    assert "| 1 | +0.8500 +- " in md and "| +0.7000 +- n/a | n/a |" in md  # one paired seed: no CI, nothing detectable


def test_end_to_end_readout_is_written_once_and_reported(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["-q", "llm", "distill", "--preset", "tiny", "--run-dir", str(out), "--sigmas", "", "--lora-arm", "false",
            "--eval-samples", "0", "--teachers", "system_prompt", "--other", "", "--align", "false",
            "--neutral", "true", "--steering", "true"]
    assert main(args) == 0
    read = {s.name for s in student_specs(from_overrides("tiny", {"sigmas": (), "lora_arm": False, "other": "",
                                                                 "teachers": ("system_prompt",), "neutral": True}))}
    assert read == {p.parent.name for p in (out / "students").glob("*/steering.json")} and len(read) == 4
    s = read_json(out / "summary.json")["steering"]
    rows = s["variants"]["paper"][OWL]
    assert len(rows) == 2 and all(r["difference"]["n"] == 2 for r in rows)  # tiny-llama: 2 layers; 2 seeds paired
    assert "Steering-vector readout" in (out / "summary.md").read_text() and (out / "steering.png").stat().st_size > 1000
    # a student killed after its readout was written but before its profile: the rerun retrains it
    # (the same steps) and keeps the readout as it is, never recomputing it or the base side
    victim = out / "students" / StudentSpec(OWL, "full", 0.0, 1).name
    before = (victim / "steering.json").read_bytes()
    (victim / "profile.json").unlink()

    def boom(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(steer, "layer_means", boom)
    assert main(args) == 0
    assert (victim / "steering.json").read_bytes() == before and (victim / "profile.json").exists()


# ---- body / head perturbation arms -------------------------------------------------------------

def test_the_head_is_the_tied_embedding_and_the_final_norm(tiny):
    model, _ = tiny
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tiny-llama ties them, as SmolLM2
    assert head_parameter_names(model) == {"model.embed_tokens.weight", "model.norm.weight"}
    body, head = part_parameter_names(model, "body"), part_parameter_names(model, "head")
    assert not body & head and body | head == part_parameter_names(model, "all") and all(".layers." in n for n in body)
    with pytest.raises(ConfigError, match="unknown weight part"):
        part_parameter_names(model, "neck")


@pytest.mark.parametrize("part", ["body", "head"])
def test_a_part_perturbation_moves_exactly_its_tensors_by_the_all_arms_noise(tiny, part):
    model, _ = tiny
    cfg = from_overrides("tiny", {})
    every = make_student(model, StudentSpec(OWL, "full", 0.1, 3), cfg)
    only = make_student(model, StudentSpec(OWL, "full", 0.1, 3, part), cfg)
    chosen = part_parameter_names(model, part)
    base, full, mine = dict(model.named_parameters()), dict(every.named_parameters()), dict(only.named_parameters())
    assert set(base) == set(mine)
    moved = 0
    for n in base:
        if n in chosen:  # exactly the noise the all-weights arm gives this tensor (seeded by seed and name)
            assert torch.equal(mine[n], full[n]), n
            # noise is sigma x the tensor's std: a tensor with no spread (tiny's norms, all ones) stays put
            assert torch.equal(mine[n], base[n]) == (base[n].std().item() == 0), n
            moved += not torch.equal(mine[n], base[n])
        else:  # untouched: bit-identical to the base
            assert torch.equal(mine[n], base[n]), n
    assert moved >= 1
    assert only.lm_head.weight is only.model.embed_tokens.weight  # still one tensor: the tie holds
    assert torch.equal(only.lm_head.weight, base["model.embed_tokens.weight"]) == (part == "body")


def test_part_arms_pair_with_a_base_teacher_control_and_keep_one_key_format():
    old = from_overrides("tiny", {})
    new = from_overrides("tiny", {"sigma_parts": ("body", "head")})
    assert student_specs(new)[:len(student_specs(old))] == student_specs(old)  # older arms.json unchanged
    added = student_specs(new)[len(student_specs(old)):]
    assert {(s.teacher, s.part) for s in added} == {(t, p) for t in (OWL, "base") for p in ("body", "head")}
    assert len(added) == 2 * 2 * len(old.seeds)
    assert [StudentSpec.parse(s.name) for s in added] == added
    spec = StudentSpec(OWL, "full", 0.05, 1, "head")
    assert spec.name == "owl_system_prompt.full.sigma0.05_head.seed1"
    assert spec.reference == StudentSpec("base", "full", 0.05, 1, "head")  # same init, same seed, same part
    assert "sigma_parts" not in old.to_dict() and new.to_dict()["sigma_parts"] == ["body", "head"]
    assert teachers_needed(new) == teachers_needed(old)
    profiles = {s.name: {"candidates": ["owl", "cat"], "logp": [[-1.0 + 0.25 * (s.teacher == OWL), -1.0]],
                         "mean_share": {"owl": 0.5, "cat": 0.5}} for s in student_specs(new)}
    rows = arm_shifts(student_specs(new), profiles, profiles[student_specs(old)[0].name], "owl")
    r = rows["owl_system_prompt.full.sigma0.05_body"]
    # log-odds of owl among {owl, cat}: -0.75 - (-1) vs the base-teacher control's 0, through logsumexp: <= 1e-14
    assert r["part"] == "body" and r["reference"] == "base-teacher student, same init"
    assert r["over_seeds"]["mean"] == pytest.approx(0.25, abs=1e-14)
    assert "part" not in rows["owl_system_prompt.full.sigma0.05"]  # the all-weights row is as before


@pytest.mark.parametrize("knobs, message", [
    ({"sigma_parts": ("all",)}, "unknown sigma part 'all'"),
    ({"sigma_parts": ("neck",)}, "unknown sigma part"),
    ({"sigma_parts": ("body", "body")}, "distinct"),
    ({"sigma_parts": ("head",), "sigmas": ()}, "sigma_parts needs sigmas"),
    ({"steering": True, "teachers": ("finetuned",), "other": ""}, "steering reads students of system-prompt teachers"),
])
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        from_overrides("tiny", knobs)
