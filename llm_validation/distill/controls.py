"""The controlled readings of a distillation run (issue #21): every animal teacher read against the
neutral teacher, the specificity matrix, the dose-response along training, and the matched
fine-tuned teachers with the fraction of the teacher update each student recovered.

All differences are paired: by seed (the same data order, so the same batches in the same order
for every teacher) and by context (the same 55 preference contexts). For seed s and animal a,

    cell(T, a, s) = mean_contexts [ logodds_a(student of T, seed s) - logodds_a(student of neutral, seed s) ]

A row's specificity is cell(T, T's animal) minus the mean of the row's other cells, per seed; the
CIs are Student-t over seeds (n = seeds), with the smallest effect the seeds could have detected
(2.8 SE: 80% power at a two-sided 5% level).
"""

from __future__ import annotations

import numpy as np

from sublim.stats import mean_ci95, t95

from sublim.llm_validation.distill.arms import StudentSpec, matrix_teachers
from sublim.llm_validation.core.preference import animal_log_odds
from sublim.llm_validation.distill.teachers import NEUTRAL, FinetunedTeacher, SystemPromptTeacher


def lo(prof: dict, animal: str) -> np.ndarray:
    """Per-context log-odds of `animal` from a profile (or an along-training record), float64."""
    return animal_log_odds(prof, animal).numpy()


def seed_ci(values) -> dict:
    """{mean, ci_half, n, detectable}: Student-t 95% CI over seeds; detectable = 2.8 SE (nan at n = 1)."""
    values = list(values)
    mean, half = mean_ci95(values)
    n = len(values)
    se = half / t95(n - 1) if n > 1 else float("nan")
    return {"mean": mean, "ci_half": half, "n": n, "detectable": 2.8 * se}


def _student(teacher: str, seed: int) -> str:
    return StudentSpec(teacher, "full", 0.0, seed).name


def _paired(profiles: dict, a_key: str, b_key: str, seeds, animal: str, step: str | None = None) -> dict:
    """{seed: mean over contexts of logodds(a) - logodds(b)} for the seeds where both exist."""
    out = {}
    for s in seeds:
        a, b = profiles.get(_student(a_key, s)), profiles.get(_student(b_key, s))
        if step is not None:  # an along-training record holds log-probs over its profile's candidates
            a, b = ({"candidates": p["candidates"], **p["along"][step]} if p and step in p.get("along", {}) else None
                    for p in (a, b))
        if a is not None and b is not None:
            out[s] = float((lo(a, animal) - lo(b, animal)).mean())
    return out


def neutral_matrix(cfg, profiles: dict) -> dict:
    """Rows: each animal's system-prompt teacher; columns: the same animals; cells vs the neutral student."""
    animals, neutral = matrix_teachers(cfg), SystemPromptTeacher(NEUTRAL).name
    cells, rows = {}, {}
    for t in animals:
        teacher = SystemPromptTeacher(t).name
        per = {a: _paired(profiles, teacher, neutral, cfg.seeds, a) for a in animals}
        cells[t] = {a: seed_ci(v.values()) | {"per_seed": v} if v else {"missing": True} for a, v in per.items()}
        seeds = [s for s in cfg.seeds if all(s in per[a] for a in animals)]
        if seeds and len(animals) > 1:
            spec = [per[t][s] - np.mean([per[a][s] for a in animals if a != t]) for s in seeds]
            rows[t] = seed_ci(spec) | {"per_seed": dict(zip(seeds, map(float, spec)))}
    wins = [t for t, r in rows.items() if r["mean"] > 0]
    # one row has no off-diagonal to beat (None, not "0 of 1"); a row some seed lacks is not counted
    beats = None if len(animals) < 2 else f"{len(wins)} of {len(rows)}" + (
        f" ({len(animals) - len(rows)} rows incomplete)" if len(rows) < len(animals) else "")
    return {"animals": animals, "cells": cells, "specificity": rows, "diagonal_beats_row": beats}


def generic_drift(cfg, profiles: dict, base: dict) -> dict:
    """The neutral teacher's student against the base model, per animal: the drift any teacher causes."""
    neutral = SystemPromptTeacher(NEUTRAL).name
    out = {}
    for a in matrix_teachers(cfg):
        per = {s: float((lo(p, a) - lo(base, a)).mean()) for s in cfg.seeds
               if (p := profiles.get(_student(neutral, s))) is not None}
        out[a] = seed_ci(per.values()) | {"per_seed": per} if per else {"missing": True}
    return out


def along_training(cfg, profiles: dict) -> dict:
    """{animal: {step: CI}} of each animal teacher's own-animal shift vs the neutral student, per step."""
    neutral = SystemPromptTeacher(NEUTRAL).name
    steps = [str(k) for k in cfg.eval_steps]
    out = {}
    for a in matrix_teachers(cfg):
        curve = {}
        for k in steps:
            per = _paired(profiles, SystemPromptTeacher(a).name, neutral, cfg.seeds, a, step=k)
            if per:
                curve[k] = seed_ci(per.values()) | {"per_seed": per}
        out[a] = curve
    return out


def finetuned_matched(cfg, profiles: dict) -> dict:
    """Target's fine-tuned teacher's student minus the matched control's, for both animals, and each
    such student's recovered fraction of every Delta (final and along training), CI over seeds."""
    own, ctrl = FinetunedTeacher(cfg.target).name, FinetunedTeacher(cfg.other).name
    out = {"difference": {}}
    for a in (cfg.target, cfg.other):
        per = _paired(profiles, own, ctrl, cfg.seeds, a)
        out["difference"][a] = seed_ci(per.values()) | {"per_seed": per} if per else {"missing": True}
    out["recovered"] = {t: _recovered_rows(profiles, t, cfg.seeds) for t in (own, ctrl)}
    return out


def _recovered_rows(profiles: dict, teacher: str, seeds) -> dict:
    """{step ("final" or k): {direction: {fraction CI, cosine CI}}} over the seeds that recorded it."""
    records = {}
    for s in seeds:
        p = profiles.get(_student(teacher, s))
        if p is None or "delta" not in p:
            continue
        records.setdefault("final", {})[s] = p["delta"]
        for k, r in p.get("along", {}).items():
            if "delta" in r:
                records.setdefault(k, {})[s] = r["delta"]
    out = {}
    for step, by_seed in records.items():
        directions = next(iter(by_seed.values())).keys()
        out[step] = {d: {m: seed_ci([v[d][m] for v in by_seed.values()]) for m in ("fraction", "cosine")}
                     for d in directions}
    return out


def method_arms(cfg, profiles: dict, base: dict) -> dict:
    """Issue #23's arms: for each method of the target's system-prompt teacher, the target's shift
    (vs the neutral student when the run has one, else vs the base model; with method_controls, vs
    the neutral student that learned by the SAME method), that shift minus the full arm's (paired by
    seed), and the KL reduction the method reached (first vs last loss)."""
    teacher = SystemPromptTeacher(cfg.target).name
    ref = SystemPromptTeacher(NEUTRAL).name if cfg.neutral else None
    out = {"reference": ("neutral teacher's student, same method" if cfg.method_controls else
                         "neutral teacher's student" if ref else "base model")}
    shifts = {}
    for method in ("full", *cfg.methods):
        per, kl = {}, {}
        ref_method = method if cfg.method_controls else "full"
        for s in cfg.seeds:
            p = profiles.get(StudentSpec(teacher, method, 0.0, s).name)
            r = profiles.get(StudentSpec(ref, ref_method, 0.0, s).name) if ref else base
            if p is not None and r is not None:
                per[s] = float((lo(p, cfg.target) - lo(r, cfg.target)).mean())
            if p is not None and p.get("train", {}).get("losses"):
                losses = p["train"]["losses"]
                kl[s] = 1 - losses[-1] / losses[0]
        shifts[method] = per
        row = {"shift": seed_ci(per.values()) | {"per_seed": per} if per else {"missing": True},
               "kl_reduction": seed_ci(kl.values()) if kl else {"missing": True}}
        paired = [per[s] - shifts["full"][s] for s in per if s in shifts["full"]]
        if method != "full" and paired:
            row["minus_full"] = seed_ci(paired)
        out[method] = row
    return out


def controls_summary(cfg, profiles: dict, base: dict) -> dict:
    """Every controlled reading the config asked for (empty when it asked for none)."""
    out = {}
    if cfg.neutral:
        out["neutral_matrix"] = neutral_matrix(cfg, profiles)
        out["generic_drift"] = generic_drift(cfg, profiles, base)
        if cfg.eval_steps:
            out["along_training"] = along_training(cfg, profiles)
    if cfg.finetuned_control:
        out["finetuned_matched"] = finetuned_matched(cfg, profiles)
    if cfg.methods:
        out["methods"] = method_arms(cfg, profiles, base)
    return out
