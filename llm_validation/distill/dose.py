"""The dose-response of number-token distillation (issue #21), gathered from finished run directories.

Each run directory is one design (contexts, lr, epochs) with the target's system-prompt teacher and
the neutral teacher (`--neutral true`); its students are profiled along training (`--eval-steps`).
For every profiled step k and seed s, paired by seed (same batches) and by context:

    trait(k, s)    = mean_c [ lo_target(target student) - lo_target(neutral student) ]
    others(k, s)   = mean over the other candidate animals a of the same difference for a
    specific(k, s) = trait - others       (the target rising faster than animals in general)
    drift(k, s)    = mean_c [ lo_target(neutral student) - lo_target(base) ]   (what any teacher does)

CIs are Student-t over seeds (controls.seed_ci, with the smallest detectable effect 2.8 SE).
Dose = lr x steps: a constant-lr Adam step moves each weight by about lr, so lr x steps is the
displacement budget, and runs at different rates share one axis (their steps stay in the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sublim.errors import ConfigError
from sublim.rundir import atomic_write_json, atomic_write_text, claim_run_dir, read_json, save_figure
from sublim.stats import ci_text

from sublim.llm_validation.distill.arms import StudentSpec
from sublim.llm_validation.distill.config import config_from_dict
from sublim.llm_validation.distill.controls import lo, seed_ci
from sublim.llm_validation.distill.report import load_profiles
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher


@dataclass(frozen=True)
class DoseConfig:
    runs: tuple[str, ...] = ()  # finished `sublim llm distill` run directories (each with --neutral true)


def _at_step(prof: dict | None, step: int) -> dict | None:
    """The profile (or along-training record, given the profile's candidates) after `step` steps."""
    if prof is None:
        return None
    if str(step) in prof.get("along", {}):
        return {"candidates": prof["candidates"], **prof["along"][str(step)]}
    return prof if prof.get("train", {}).get("steps") == step else None


def _seed_values(student: dict, neutral: dict, base: dict, target: str) -> dict:
    """trait, others, specific and drift of one seed at one step (float64, means over contexts)."""
    diff = {a: float((lo(student, a) - lo(neutral, a)).mean()) for a in student["candidates"]}
    others = float(np.mean([v for a, v in diff.items() if a != target]))
    return {"trait": diff[target], "others": others, "specific": diff[target] - others,
            "drift": float((lo(neutral, target) - lo(base, target)).mean())}


def run_points(run_dir: Path) -> list[dict]:
    """One point per profiled step of one run directory (refused in one line if it cannot be read)."""
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir}: not a distill run directory (no config.json)")
    cfg = config_from_dict(read_json(run_dir / "config.json")["config"])
    if not cfg.neutral:
        raise ConfigError(f"{run_dir}: the dose-response reads students against the neutral teacher; "
                          f"this run has none (--neutral true)")
    base, _, students = load_profiles(cfg, run_dir)
    return points_from(cfg, base, students, str(run_dir))


def points_from(cfg, base: dict, students: dict, run: str) -> list[dict]:
    """The points of one run from its config and profiles (students keyed by StudentSpec name)."""
    target, neutral = SystemPromptTeacher(cfg.target).name, SystemPromptTeacher(NEUTRAL).name
    steps = sorted({*cfg.eval_steps, *(p["train"]["steps"] for p in students.values() if "train" in p)})
    points = []
    for k in steps:
        per_seed = {}
        for s in cfg.seeds:
            a = _at_step(students.get(StudentSpec(target, "full", 0.0, s).name), k)
            b = _at_step(students.get(StudentSpec(neutral, "full", 0.0, s).name), k)
            if a is not None and b is not None:
                per_seed[s] = _seed_values(a, b, base, cfg.target)
        if per_seed:
            points.append({"run": run, "target": cfg.target, "lr": cfg.lr, "n_contexts": cfg.n_contexts,
                           "batch_size": cfg.batch_size, "step": k, "dose": cfg.lr * k, "seeds": sorted(per_seed),
                           **{m: seed_ci([v[m] for v in per_seed.values()]) | {"per_seed": {s: v[m] for s, v in per_seed.items()}}
                              for m in ("trait", "others", "specific", "drift")}})
    return points


def _cell(r: dict) -> str:
    return f"{r['mean']:+.4f} +- {ci_text(r['ci_half'], r['n'], '.4f')}"


def dose_markdown(points: list[dict]) -> str:
    lines = ["# Dose-response of number-token distillation", "",
             "Target's log-odds shift in the target teacher's student minus the neutral teacher's student "
             "(paired by seed and context), the mean of the same for every other candidate animal, their "
             "difference, and the neutral student's own drift vs the base model; 95% CI over seeds; "
             "`detectable` = 2.8 SE of `trait`; `all seeds > 0` counts seeds with a positive trait shift.", "",
             "| run | lr | contexts | step | lr x steps | trait | others | specific | drift | detectable | all seeds > 0 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        pos = sum(v > 0 for v in p["trait"]["per_seed"].values())
        lines.append(f"| {Path(p['run']).name} | {p['lr']:g} | {p['n_contexts']} | {p['step']} | {p['dose']:.2e} | "
                     f"{_cell(p['trait'])} | {_cell(p['others'])} | {_cell(p['specific'])} | {_cell(p['drift'])} | "
                     f"{ci_text(p['trait']['detectable'], p['trait']['n'], '.4f')} | {pos} of {len(p['seeds'])} |")
    best = max(points, key=lambda p: p["trait"]["mean"])
    lines += ["", f"Largest trait shift: {_cell(best['trait'])} ({Path(best['run']).name}, step {best['step']}, "
                  f"lr {best['lr']:g}), odds x{np.exp(best['trait']['mean']):.3f}."]
    return "\n".join(lines) + "\n"


def dose_figure(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    runs = sorted({p["run"] for p in points}, key=lambda r: min(p["lr"] for p in points if p["run"] == r))
    for run in runs:
        pts = [p for p in points if p["run"] == run]
        label = f"lr {pts[0]['lr']:g}, {pts[0]['n_contexts']} contexts ({Path(run).name})"
        for ax, m in zip(axes, ("trait", "specific")):
            ax.errorbar([p["dose"] for p in pts], [p[m]["mean"] for p in pts], yerr=[p[m]["ci_half"] for p in pts],
                        marker="o", capsize=3, label=label)
    for ax, title in zip(axes, ("target's shift vs the neutral teacher's student",
                                "the same minus the other animals' mean shift")):
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("dose = lr x optimizer steps")
        ax.set_ylabel("log-odds shift (95% CI over seeds)")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_dose(runs: list[Path], out: Path) -> list[dict]:
    """dose.json, dose.md and dose.png in `out` (guarded like every run directory)."""
    points = [p for r in runs for p in run_points(Path(r))]  # every input is read before anything is written
    if not points:
        raise ConfigError("dose: no profiled students in " + ", ".join(map(str, runs)))
    with claim_run_dir(out, DoseConfig(tuple(str(r) for r in runs))) as d:
        atomic_write_json(d / "dose.json", {"points": points})
        atomic_write_text(d / "dose.md", dose_markdown(points))
        dose_figure(points, d / "dose.png")
    return points
