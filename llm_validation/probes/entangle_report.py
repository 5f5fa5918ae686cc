"""The entanglement scan's contrasts, with 95% CIs two ways (JSON-ready, no torch).

Per animal a, with E_a its entangled numbers, R the random numbers, lo[p][a] the per-context
log-odds under system prompt p (the same 55 contexts for every prompt):
- over contexts (paired by context, Student-t over the 55): the mean over a number set of lo,
  minus the comparison's lo, per context;
- over numbers: per-number means over contexts; E vs R by Welch's t (two independent samples of
  numbers), E vs a fixed control by a one-sample t over E's numbers (the control's contexts are
  the same for every number, so its mean enters as a constant).
The CI over contexts says how sure the mean is for THESE numbers; the CI over numbers says whether
the set of numbers matters beyond its members, the question entanglement asks.
"""

from __future__ import annotations

import math

import numpy as np

from sublim.stats import mean_ci95, t95


# the smallest true effect a two-sided 5% test detects with 80% power: (1.96 + 0.84) standard errors
DETECTABLE_SE = 2.8


def number_prompt_name(n: int) -> str:
    return f"number:{n}"


def welch_ci(x, y) -> dict:
    """mean(x) - mean(y) with Welch's t 95% interval (Welch-Satterthwaite degrees of freedom)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if se > 0 else len(x) + len(y) - 2
    return {"mean": float(x.mean() - y.mean()), "ci95": float(t95(max(dof, 1.0)) * se),
            "n": [int(len(x)), int(len(y))], "dof": float(dof), "detectable": DETECTABLE_SE * se}


def _ctx(values) -> dict:
    m, h = mean_ci95(values)
    n = len(values)
    return {"mean": m, "ci95": h, "n": int(n), "detectable": DETECTABLE_SE * h / t95(n - 1) if n > 1 else None}


def _set_mean(lo: dict, numbers, animal: str) -> np.ndarray:
    """(contexts,) mean over the numbers' prompts of the per-context log-odds."""
    return np.mean([lo[number_prompt_name(n)][animal] for n in numbers], axis=0)


def _per_number(lo: dict, numbers, animal: str) -> np.ndarray:
    return np.array([np.mean(lo[number_prompt_name(n)][animal]) for n in numbers])


def animal_contrasts(lo: dict, animal: str, entangled, random_numbers, other_entangled=()) -> dict:
    """Every contrast of the module docstring for one animal (other_entangled: another animal's
    candidates, the specificity check: they should not raise this animal beyond random)."""
    e_ctx, r_ctx = _set_mean(lo, entangled, animal), _set_mean(lo, random_numbers, animal)
    free, none = np.asarray(lo["number_free"][animal]), np.asarray(lo["none"][animal])
    e_num, r_num = _per_number(lo, entangled, animal), _per_number(lo, random_numbers, animal)
    out = {
        "levels": {"none": float(none.mean()), "number_free": float(free.mean()),
                   "random_numbers": float(r_ctx.mean()), "entangled_numbers": float(e_ctx.mean()),
                   "trait_prompt": float(np.mean(lo[f"trait:{animal}"][animal]))},
        "entangled_minus_random": {"over_contexts": _ctx(e_ctx - r_ctx), "over_numbers": welch_ci(e_num, r_num)},
        "entangled_minus_number_free": {"over_contexts": _ctx(e_ctx - free),
                                        "over_numbers": _ctx(e_num - free.mean())},
        "random_minus_number_free": {"over_contexts": _ctx(r_ctx - free), "over_numbers": _ctx(r_num - free.mean())},
        "number_free_minus_none": {"over_contexts": _ctx(free - none)},
        "entangled_minus_none": {"over_contexts": _ctx(e_ctx - none), "over_numbers": _ctx(e_num - none.mean())},
        "per_number": {str(n): float(v) for n, v in zip([*entangled, *random_numbers], [*e_num, *r_num])},
    }
    if len(other_entangled) >= 2:
        o_num = _per_number(lo, other_entangled, animal)
        out["other_animals_entangled_minus_random"] = {
            "over_contexts": _ctx(_set_mean(lo, other_entangled, animal) - r_ctx), "over_numbers": welch_ci(o_num, r_num)}
    return out


def _cell(d: dict) -> str:
    det = f" (detectable {d['detectable']:.3f})" if d.get("detectable") is not None else ""
    return f"{d['mean']:+.3f} +- {d['ci95']:.3f}{det}"


def markdown(summary: dict) -> str:
    """The summary table: one row per animal and contrast."""
    lines = ["Log-odds differences, mean +- 95% CI (detectable: 2.8 SE, 80% power at 5%).", "",
             "| animal | contrast | over contexts (n) | over numbers |", "| --- | --- | --- | --- |"]
    for animal, c in summary["contrasts"].items():
        for key in ("entangled_minus_random", "entangled_minus_number_free", "random_minus_number_free",
                    "number_free_minus_none", "entangled_minus_none", "other_animals_entangled_minus_random"):
            if key in c:
                row = c[key]
                nums = _cell(row["over_numbers"]) if "over_numbers" in row else ""
                lines.append(f"| {animal} | {key} | {_cell(row['over_contexts'])}, n {row['over_contexts']['n']} | {nums} |")
    lines.append("")
    lines.append("Levels (mean log-odds over contexts): " + "; ".join(
        f"{a}: " + ", ".join(f"{k} {v:+.2f}" for k, v in c["levels"].items()) for a, c in summary["contrasts"].items()))
    lines.append("Candidates: " + "; ".join(f"{a}: {', '.join(map(str, v))}" for a, v in summary["entangled"].items())
                 + f"; random: {', '.join(map(str, summary['random']))}")
    return "\n".join(lines) + "\n"
