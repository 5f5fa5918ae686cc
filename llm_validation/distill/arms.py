"""Which students and teachers a config asks for (see config.py's docstring for the arms)."""

from __future__ import annotations

from sublim.llm_validation.distill.config import DistillConfig
from sublim.llm_validation.distill.students import StudentSpec
from sublim.llm_validation.distill.teachers import SystemPromptTeacher, make_teacher


def student_specs(cfg: DistillConfig) -> list[StudentSpec]:
    main = f"{cfg.target}_system_prompt"
    specs = [StudentSpec(f"{cfg.target}_{kind}", "full", 0.0, s) for kind in cfg.teachers for s in cfg.seeds]
    if cfg.other:
        specs += [StudentSpec(f"{cfg.other}_system_prompt", "full", 0.0, s) for s in cfg.seeds]
    if cfg.lora_arm:
        specs += [StudentSpec(main, "lora", 0.0, s) for s in cfg.seeds]
    for sigma in cfg.sigmas:
        specs += [StudentSpec(t, "full", float(sigma), s) for s in cfg.seeds for t in (main, "base")]
    return specs


def teachers_needed(cfg: DistillConfig) -> list:
    out = [make_teacher(kind, cfg.target) for kind in cfg.teachers]
    if cfg.lora_arm or cfg.sigmas:
        out.append(SystemPromptTeacher(cfg.target))
    if cfg.other:
        out.append(SystemPromptTeacher(cfg.other))
    if cfg.sigmas:
        out.append(SystemPromptTeacher(None))
    return list({t.name: t for t in out}.values())
