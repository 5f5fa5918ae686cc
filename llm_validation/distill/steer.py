"""The steering-vector readout (Blank et al., arXiv 2606.00995) on distill's trained students
(`--steering true`): does a student's activation change point where its teacher's system prompt
pushes the base model's activations?

Per decoder layer l (h_l = block l's output, the residual stream before the final norm, read by a
forward hook; core/steering.py), on the run's context prompts (the user's number prompt through the
chat template with no system prompt, as the student sees it; completions are not read):

    paper variant (their extract_teacher.py / extract_student.py, as closely as this setup allows)
      teacher direction  t_T = mean_x [ h_l(base, system_T + x)[last] - h_l(base, x)[last] ]
                         the last prompt token (the assistant header's last token, where the answer starts)
      student change     s   = mean over every prompt position of h_l(student, x) - h_l(base, x)
    suffix variant (probes' steering_readout)
      both averaged over the positions the plain and every prompted formatting share at their end
      (the user turn and the assistant header; the system block has no counterpart)

    readout = cos(s, t_T), for every system-prompt teacher T of the run and, with the neutral
              teacher, "trait" = t_target - t_neutral (what the animal adds to the prompt template)

The base side (the means of h(base, x) and every t_T) is the same for every student: computed once
by the students stage (`students/steering_reference.pt`, keyed by a fingerprint of the setup) and
handed to each student task, which then needs one forward per context. The task writes
`students/<key>/steering.json` (atomic) right after training, before its weights are freed; a
rerun finds it and does not recompute it. Students read: those of system-prompt teachers at the
shared init (sigma = 0; any method): a perturbed student's change against the base would mix in its
perturbation.

Where this differs from Blank et al.: their students are LoRA SFT on sampled number tokens of a
7B model; ours are (mostly) fully fine-tuned on the number-token distributions of SmolLM2-135M.
They compare at one layer (Qwen L10 of 28) and tile it; we report every layer. They average over
1,024 prompts; we over the run's contexts. SmolLM2's template inserts a default system prompt
when none is given, so "no system prompt" here is that default (as for Qwen in theirs).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from sublim.errors import ConfigError
from sublim.rundir import atomic_write_bytes, atomic_write_json, read_json

from sublim.llm_validation.core.models import base_copy
from sublim.llm_validation.core.steering import cosine_rows, layer_means, shared_suffix_length
from sublim.llm_validation.distill.arms import StudentSpec
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher, parse_teacher

VARIANTS = ("paper", "suffix")


def reads(spec: StudentSpec) -> bool:
    """Whether a student gets the readout: a system-prompt teacher's (not the base's) at sigma = 0."""
    teacher = parse_teacher(spec.teacher)
    return isinstance(teacher, SystemPromptTeacher) and teacher.animal is not None and spec.sigma == 0


def direction_teachers(teachers: list) -> list[SystemPromptTeacher]:
    """The run's teachers whose prompt change is a direction: every system-prompt teacher with a prompt."""
    return [t for t in teachers if isinstance(t, SystemPromptTeacher) and t.animal is not None]


def suffix_lengths(plain: list[list[int]], prompted: dict[str, list[list[int]]]) -> list[int]:
    """Per context, how many final tokens the plain formatting shares with EVERY prompted one (so one
    set of positions serves all the directions and the student)."""
    k = [min(shared_suffix_length(p, q[i]) for q in prompted.values()) for i, p in enumerate(plain)]
    if min(k, default=1) == 0:
        raise ConfigError("distill steering: a prompted context shares no final token with the plain one")
    return k


def _selections(n: int, suffix: list[int]) -> dict[str, list[slice]]:
    return {"all": [slice(None)] * n, "last": [slice(-1, None)] * n, "suffix": [slice(-m, None) for m in suffix]}


def compute_reference(base, contexts, teachers: list, target: str) -> dict:
    """The base side of every readout: the base model's plain means and each teacher direction."""
    plain = [e.prompt_ids for e in contexts.encoded()]
    prompted = {t.name: [e.prompt_ids for e in contexts.encoded(t.system)] for t in direction_teachers(teachers)}
    suffix = suffix_lengths(plain, prompted)
    sel = _selections(len(plain), suffix)
    base_plain = layer_means(base, plain, sel)
    directions = {"paper": {}, "suffix": {}}
    for name, ids in prompted.items():
        m = layer_means(base, ids, {"last": sel["last"], "suffix": sel["suffix"]})
        directions["paper"][name] = m["last"] - base_plain["last"]
        directions["suffix"][name] = m["suffix"] - base_plain["suffix"]
    own, neutral = SystemPromptTeacher(target).name, SystemPromptTeacher(NEUTRAL).name
    for v in directions.values():
        if own in v and neutral in v:
            v["trait"] = v[own] - v[neutral]
    return {"base_all": base_plain["all"], "base_suffix": base_plain["suffix"], "suffix": suffix,
            "directions": directions, "positions": {"paper_teacher": len(plain), "paper_student": sum(map(len, plain)),
                                                    "suffix": sum(suffix)}}


def steering_reference(cfg, out: Path, device: str, contexts, teachers: list) -> dict:
    """The reference at students/steering_reference.pt when its fingerprint matches; else computed
    (the base model loaded once) and saved atomically. One from another setup is refused."""
    path = out / "students" / "steering_reference.pt"
    fingerprint = {"model": cfg.model, "contexts_sha256": contexts.sha256, "max_length": cfg.max_length,
                   "target": cfg.target, "teachers": [t.name for t in direction_teachers(teachers)]}
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["fingerprint"] != fingerprint:
            raise ConfigError(f"{path}: a steering reference from another setup; use another run directory")
        return blob["reference"]
    base, _ = base_copy(cfg.model, device=device)
    ref = compute_reference(base, contexts, teachers, cfg.target)
    buf = io.BytesIO()
    torch.save({"fingerprint": fingerprint, "reference": ref}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return ref


def student_readout(path: Path, model, encoded, ref: dict) -> dict:
    """The readout of a trained student, written to `path` (reused when it exists: a rerun of a
    student whose readout was written does not recompute it)."""
    if path.exists():
        return read_json(path)
    plain = [e.prompt_ids for e in encoded]
    sel = _selections(len(plain), ref["suffix"])
    m = layer_means(model, plain, {"all": sel["all"], "suffix": sel["suffix"]})
    change = {"paper": m["all"] - ref["base_all"], "suffix": m["suffix"] - ref["base_suffix"]}
    out = {"variants": {v: {d: cosine_rows(change[v], t) for d, t in ref["directions"][v].items()} for v in VARIANTS},
           "n_contexts": len(plain), "positions": ref["positions"]}
    atomic_write_json(path, out)
    return out
