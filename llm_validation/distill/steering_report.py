"""summary.json's "steering" section, its summary.md table and steering.png (--steering; steer.py).

For each variant (paper, suffix) and direction (the target teacher's prompt change; with the neutral
teacher also "trait" = target change minus neutral change), per layer l and seed s:

    target(l, s)   = cos(student change at l, direction at l) for the target teacher's full student
    control(l, s)  = the same cosine (the SAME direction) for the control teacher's full student: the
                     neutral teacher's when the run has one (the same template with no animal: what
                     any "You love X" prompt does), else the other animal's
    difference     = target - control, paired by seed (the same batches in the same order)

each as the mean over seeds with a Student-t 95% CI and the smallest difference the seeds could
detect (2.8 SE). A seed whose change is exactly zero at a layer has no cosine there (None) and is
left out of that layer (n says how many remain). With --methods, each method's student's cosine
minus the full student's (paired by seed, mean over layers): Blank et al.'s optimizer claim says
sgd should learn less of the direction than Adam.
"""

from __future__ import annotations

import numpy as np

from sublim.rundir import read_json, save_figure
from sublim.stats import ci_text

from sublim.llm_validation.distill.arms import StudentSpec
from sublim.llm_validation.distill.controls import seed_ci
from sublim.llm_validation.distill.steer import VARIANTS, reads
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher


def read_readouts(d, specs) -> dict[str, dict]:
    """{student key: steering.json} for every read student whose readout exists."""
    return {s.name: read_json(p) for s in specs if reads(s) and (p := d / "students" / s.name / "steering.json").exists()}


def control_teacher(cfg) -> str | None:
    if cfg.neutral:
        return SystemPromptTeacher(NEUTRAL).name
    return SystemPromptTeacher(cfg.other).name if cfg.other else None


def _cosines(readouts: dict, teacher: str | None, method: str, seeds, variant: str, direction: str) -> dict:
    """{seed: [cosine or None per layer]} of the students that have this readout."""
    out = {}
    for s in seeds:
        r = readouts.get(StudentSpec(teacher, method, 0.0, s).name) if teacher else None
        if r is not None and direction in r["variants"][variant]:
            out[s] = [row["cosine"] for row in r["variants"][variant][direction]]
    return out


def _ci(per_seed: dict) -> dict:
    return seed_ci(per_seed.values()) | {"per_seed": per_seed} if per_seed else {"missing": True}


def layer_table(a: dict, b: dict) -> list[dict]:
    """Per layer: target (a), control (b) and their paired difference, over the seeds defined there."""
    n_layers = len(next(iter(a.values())))
    rows = []
    for layer in range(n_layers):
        ta = {s: v[layer] for s, v in a.items() if v[layer] is not None}
        tb = {s: v[layer] for s, v in b.items() if v[layer] is not None}
        diff = {s: ta[s] - tb[s] for s in ta if s in tb}
        rows.append({"layer": layer, "target": _ci(ta), "control": _ci(tb), "difference": _ci(diff)})
    return rows


def _method_rows(cfg, readouts: dict, teacher: str) -> dict:
    """{method: CI over seeds of mean over layers of (cos method - cos full)}, paper variant, target direction."""
    full = _cosines(readouts, teacher, "full", cfg.seeds, "paper", teacher)
    out = {}
    for method in cfg.methods:
        other = _cosines(readouts, teacher, method, cfg.seeds, "paper", teacher)
        per = {}
        for s in set(other) & set(full):
            d = [x - y for x, y in zip(other[s], full[s]) if x is not None and y is not None]
            if d:
                per[s] = float(np.mean(d))
        out[method] = _ci(per)
    return out


def steering_summary(cfg, d, specs) -> dict:
    readouts = read_readouts(d, specs)
    target, control = SystemPromptTeacher(cfg.target).name, control_teacher(cfg)
    out = {"target": target, "control": control, "students_read": len(readouts), "variants": {}}
    for variant in VARIANTS:
        for direction in (target, "trait"):
            a = _cosines(readouts, target, "full", cfg.seeds, variant, direction)
            if a:
                b = _cosines(readouts, control, "full", cfg.seeds, variant, direction)
                out["variants"].setdefault(variant, {})[direction] = layer_table(a, b)
    if cfg.methods:
        out["methods"] = _method_rows(cfg, readouts, target)
    if readouts:
        out["positions"] = next(iter(readouts.values()))["positions"]
    return out


def _cell(r: dict) -> str:
    return f"{r['mean']:+.4f} +- {ci_text(r['ci_half'], r['n'], '.4f')}" if "mean" in r else "missing"


def _det(r: dict) -> str:
    return ci_text(r["detectable"], r["n"], ".4f") if "mean" in r else ""


def steering_markdown(st: dict) -> str:
    t, c = st["target"], st["control"] or "no control teacher"
    paper = st["variants"].get("paper", {})
    if t not in paper:
        return f"\nSteering-vector readout: no readout of {t}'s students ({st['students_read']} students read).\n"
    extra = [("trait direction: difference", st["variants"]["paper"].get("trait")),
             ("suffix variant: difference", st["variants"].get("suffix", {}).get(t))]
    extra = [(name, rows) for name, rows in extra if rows]
    lines = ["", f"Steering-vector readout (Blank et al.; distill/steer.py): per decoder layer, the cosine between a "
                 f"student's mean activation change vs the base model (every prompt position) and {t}'s prompt "
                 f"change at the last prompt token (the paper's positions), for the full students of {t} and of "
                 f"{c} (the same direction for both), and their difference paired by seed (95% CI over seeds; "
                 "detectable = 2.8 SE of the difference):", "",
             "| layer | target students | control students | difference | detectable | "
             + " | ".join(name for name, _ in extra) + (" |" if extra else ""),
             "| --- |" + " --- |" * (4 + len(extra))]
    for i, r in enumerate(paper[t]):
        lines.append(f"| {r['layer']} | {_cell(r['target'])} | {_cell(r['control'])} | {_cell(r['difference'])} | "
                     f"{_det(r['difference'])} |" + "".join(f" {_cell(rows[i]['difference'])} |" for _, rows in extra))
    if st.get("methods"):
        lines += ["", f"By method: cosine with {t}'s change minus the full student's, paired by seed, mean over layers "
                      "(paper variant; 95% CI over seeds):", "", "| method | minus full | detectable |", "| --- | --- | --- |"]
        lines += [f"| {m} | {_cell(r)} | {_det(r)} |" for m, r in st["methods"].items()]
    return "\n".join(lines) + "\n"


def steering_figure(st: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = st["target"]
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(12, 4.2), sharey=True)
    for ax, variant in zip(axes, VARIANTS):
        rows = st["variants"].get(variant, {}).get(t, [])
        for key, label, style in (("target", f"students of {t}", "-o"), ("control", f"students of {st['control']}", "-s"),
                                  ("difference", "difference (paired by seed)", "--^")):
            pts = [(r["layer"], r[key]) for r in rows if "mean" in r[key]]
            if pts:
                ax.errorbar([x for x, _ in pts], [o["mean"] for _, o in pts], yerr=[o["ci_half"] for _, o in pts],
                            fmt=style, capsize=3, label=label, markersize=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("decoder layer")
        ax.set_title(f"{variant} positions")
        if rows:
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"cos(student change, {t} prompt change)\n(95% CI over seeds)")
    fig.tight_layout()
    save_figure(fig, path)
