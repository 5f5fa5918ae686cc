"""Arm identity, in one place: typed specs, one key format, one parser, and the record of the arms
a run trained (see config.py's docstring for what the arms mean).

    teacher key   "<animal>_system_prompt" | "<animal>_finetuned" | "base" (the un-prompted model);
                  written by the teacher's `name`, read back by teachers.py: parse_teacher
    student key   "<teacher>.<method>.sigma<sigma:g>[_<part>].seed<seed>"   e.g. "owl_system_prompt.full.sigma0.seed1";
                  the part suffix only for a perturbation restricted to one part of the weights
                  ("owl_system_prompt.full.sigma0.05_head.seed0"; parts.py), so every older key is unchanged;
                  "_shared" after the sigma when the teacher ran on the same perturbed weights (shared_noise;
                  noise.py): "owl_system_prompt.full.sigma0.1_shared.seed0"
    arm key       the student key without ".seed<seed>": the seeds of one arm are pooled in the report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sublim.errors import DataError
from sublim.rundir import atomic_write_json, read_json

from sublim.llm_validation.distill.config import METHOD_PATTERN, SIGMA_PARTS, DistillConfig
from sublim.llm_validation.distill.teachers import (NEUTRAL, FinetunedTeacher, SystemPromptTeacher, make_teacher,
                                                    parse_teacher)

_STUDENT_KEY = re.compile(rf"^(?P<teacher>[A-Za-z_]+)\.(?P<method>{METHOD_PATTERN})\.sigma(?P<sigma>[0-9.e+-]+)"
                          rf"(?:_(?P<part>{'|'.join(SIGMA_PARTS)}))?(?P<shared>_shared)?\.seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class StudentSpec:
    """One student: which teacher's cache, how it starts, how it learns."""
    teacher: str
    method: str = "full"      # full | lora | lora<r> | sgd | sgdm | mask_div | mask_base | mask_rand (methods.py)
    sigma: float = 0.0
    seed: int = 0
    part: str = "all"         # the weights sigma perturbs: all | body | head (parts.py)
    shared: bool = False      # the teacher runs on the same perturbed weights (shared_noise; noise.py)

    @property
    def arm(self) -> str:
        return (f"{self.teacher}.{self.method}.sigma{self.sigma:g}" + ("" if self.part == "all" else f"_{self.part}")
                + ("_shared" if self.shared else ""))

    @property
    def name(self) -> str:
        return f"{self.arm}.seed{self.seed}"

    @property
    def reference(self) -> "StudentSpec | None":
        """The student this one is read against: None = the base model (shared init); for a
        perturbed init, the student of the un-prompted base teacher at the same init and seed; under
        shared noise, the neutral teacher's student at the same noise and seed (the neutral one's own
        reference is the unperturbed base model: it carries the noise's movement)."""
        if self.shared:
            neutral = SystemPromptTeacher(NEUTRAL).name
            return None if self.teacher == neutral else StudentSpec(neutral, self.method, self.sigma, self.seed, shared=True)
        return (None if self.sigma == 0 or self.teacher == "base"
                else StudentSpec("base", "full", self.sigma, self.seed, self.part))

    @classmethod
    def parse(cls, key: str) -> "StudentSpec":
        m = _STUDENT_KEY.match(key)
        if not m:
            raise DataError(f"not a student key: {key!r} (want <teacher>.<method>.sigma<s>.seed<n>)")
        parse_teacher(m["teacher"])  # the teacher part is a teacher key too
        return cls(m["teacher"], m["method"], float(m["sigma"]), int(m["seed"]), m["part"] or "all", bool(m["shared"]))


def student_specs(cfg: DistillConfig) -> list[StudentSpec]:
    """Every student of a config, in training order. Arms added later (the matrix's animals, the
    neutral control, the matched fine-tuned control) come last, so an older config's list is a
    prefix of nothing new and its arms.json is unchanged."""
    main = SystemPromptTeacher(cfg.target).name
    specs = [StudentSpec(make_teacher(kind, cfg.target).name, "full", 0.0, s) for kind in cfg.teachers for s in cfg.seeds]
    if cfg.other:
        specs += [StudentSpec(SystemPromptTeacher(cfg.other).name, "full", 0.0, s) for s in cfg.seeds]
    if cfg.lora_arm:
        specs += [StudentSpec(main, "lora", 0.0, s) for s in cfg.seeds]
    for sigma in cfg.sigmas:
        specs += [StudentSpec(t, "full", float(sigma), s) for s in cfg.seeds for t in (main, "base")]
    for t in _control_teachers(cfg):
        specs += [StudentSpec(t.name, "full", 0.0, s) for s in cfg.seeds]
    for method in cfg.methods:
        specs += [StudentSpec(main, method, 0.0, s) for s in cfg.seeds]
    for sigma in cfg.sigmas:  # each paired with its base-teacher control at the same init, like the sigma arms
        specs += [StudentSpec(t, "full", float(sigma), s, part) for part in cfg.sigma_parts for s in cfg.seeds
                  for t in (main, "base")]
    if cfg.method_controls:  # each method's own control: the neutral teacher's student, learning the same way
        specs += [StudentSpec(SystemPromptTeacher(NEUTRAL).name, m, 0.0, s) for m in cfg.methods for s in cfg.seeds]
    for sigma in cfg.shared_noise:  # each seed's target and neutral teachers on that seed's perturbed weights
        specs += [StudentSpec(t, "full", float(sigma), s, shared=True) for s in cfg.seeds
                  for t in (main, SystemPromptTeacher(NEUTRAL).name)]
    return specs


def _control_teachers(cfg: DistillConfig) -> list:
    out = [SystemPromptTeacher(a) for a in cfg.animals]
    if cfg.neutral:
        out.append(SystemPromptTeacher(NEUTRAL))
    if cfg.finetuned_control:
        out.append(FinetunedTeacher(cfg.other))
    return out


def teachers_needed(cfg: DistillConfig) -> list:
    out = [make_teacher(kind, cfg.target) for kind in cfg.teachers]
    if cfg.lora_arm or cfg.sigmas:
        out.append(SystemPromptTeacher(cfg.target))
    if cfg.other:
        out.append(SystemPromptTeacher(cfg.other))
    if cfg.methods:
        out.append(SystemPromptTeacher(cfg.target))
    if cfg.sigmas or "mask_base" in cfg.methods:
        out.append(SystemPromptTeacher(None))
    out += _control_teachers(cfg)
    return list({t.name: t for t in out}.values())


def rival_teachers(cfg: DistillConfig) -> list:
    """The teachers the divergence positions are read against: every other system-prompt teacher."""
    return [SystemPromptTeacher(a) for a in matrix_teachers(cfg)[1:]] + ([SystemPromptTeacher(NEUTRAL)] if cfg.neutral else [])


def matrix_teachers(cfg: DistillConfig) -> list[str]:
    """The animals of the specificity matrix, in row order: every animal with a system-prompt teacher."""
    return [a for a in (cfg.target, cfg.other, *cfg.animals) if a]


def record_arms(path: Path, specs: list[StudentSpec]) -> None:
    """students/arms.json: the student keys the students stage ran, in order."""
    atomic_write_json(path, {"students": [s.name for s in specs]})


def recorded_arms(path: Path, cfg: DistillConfig) -> list[StudentSpec]:
    """The students a run's report covers: students/arms.json when the students stage wrote it; a
    run directory from before that record (or one whose students stage never ran) falls back to the
    config's arms, which is what that stage would have run."""
    if not path.exists():
        return student_specs(cfg)
    return [StudentSpec.parse(k) for k in read_json(path)["students"]]
