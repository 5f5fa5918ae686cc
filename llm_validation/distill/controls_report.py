"""summary.md sections and controls.png for the controlled readings of controls.py."""

from __future__ import annotations

from sublim.rundir import save_figure
from sublim.stats import ci_text


def _cell(r: dict) -> str:
    if "mean" not in r:
        return "missing"
    return f"{r['mean']:+.4f} +- {ci_text(r['ci_half'], r['n'], '.4f')}"


def _det(r: dict) -> str:
    return ci_text(r["detectable"], r["n"], ".4f") if "mean" in r else ""


def _matrix_md(m: dict) -> list[str]:
    animals = m["animals"]
    lines = ["", "Specificity matrix: log-odds shift of each measured animal (columns) in the student of each "
                 "animal's system-prompt teacher (rows), minus the neutral teacher's student (paired by seed and "
                 "context; 95% CI over seeds). `own - others` = the diagonal cell minus the row's other cells' mean:", "",
             "| teacher | " + " | ".join(animals) + " | own - others | detectable |",
             "| --- |" + " --- |" * (len(animals) + 2)]
    for t in animals:
        row = m["cells"][t]
        spec = m["specificity"].get(t, {})
        cells = [("**" + _cell(row[a]) + "**") if a == t else _cell(row[a]) for a in animals]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {_cell(spec) if spec else ''} | {_det(spec) if spec else ''} |")
    if m["diagonal_beats_row"]:  # None: one row has no off-diagonal to beat
        lines.append(f"\nDiagonal above its row's off-diagonal mean: {m['diagonal_beats_row']} animals.")
    return lines


def controls_markdown(ctl: dict, c) -> str:
    lines = []
    if "neutral_matrix" in ctl:
        lines += _matrix_md(ctl["neutral_matrix"])
        lines += ["", "Generic drift: the neutral teacher's student minus the base model (95% CI over seeds):", "",
                  "| animal | shift | detectable |", "| --- | --- | --- |"]
        lines += [f"| {a} | {_cell(r)} | {_det(r)} |" for a, r in ctl["generic_drift"].items()]
    if ctl.get("along_training"):
        lines += ["", "Along training: each animal teacher's student, its own animal's shift vs the neutral "
                      "teacher's student after k optimizer steps (95% CI over seeds):", "",
                  "| animal | step | shift | detectable |", "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {k} | {_cell(r)} | {_det(r)} |" for a, curve in ctl["along_training"].items()
                  for k, r in curve.items()]
    if "finetuned_matched" in ctl:
        f = ctl["finetuned_matched"]
        lines += ["", f"Matched fine-tuned teachers: student of {c.target}_finetuned minus student of "
                      f"{c.other}_finetuned (same records, schedule and seed; 95% CI over seeds):", "",
                  "| animal | difference | detectable |", "| --- | --- | --- |"]
        lines += [f"| {a} | {_cell(r)} | {_det(r)} |" for a, r in f["difference"].items()]
        lines += ["", "Recovered fraction <theta_S - theta_0, Delta> / ||Delta||^2 and cosine (95% CI over seeds):", "",
                  "| student of | step | direction | fraction | cosine |", "| --- | --- | --- | --- | --- |"]
        for teacher, steps in f["recovered"].items():
            for step, dirs in steps.items():
                lines += [f"| {teacher} | {step} | {d} | {v['fraction']['mean']:+.3e} +- "
                          f"{ci_text(v['fraction']['ci_half'], v['fraction']['n'], '.1e')} | {v['cosine']['mean']:+.4f} +- "
                          f"{ci_text(v['cosine']['ci_half'], v['cosine']['n'], '.4f')} |" for d, v in dirs.items()]
    if "methods" in ctl:
        lines += _methods_md(ctl["methods"], c)
    return "\n".join(lines) + "\n"


def _methods_md(m: dict, c) -> list[str]:
    lines = ["", f"Students of {c.target}_system_prompt by method (methods.py): {c.target} log-odds shift vs the "
                 f"{m['reference']}, the same minus the full arm's (paired by seed), and the KL reduction "
                 "1 - last loss / first loss (95% CI over seeds):", "",
             "| method | shift | detectable | minus full | KL reduction |", "| --- | --- | --- | --- | --- |"]
    for method, r in m.items():
        if method == "reference":
            continue
        minus = _cell(r["minus_full"]) if "minus_full" in r else ""
        lines.append(f"| {method} | {_cell(r['shift'])} | {_det(r['shift'])} | {minus} | {_cell(r['kl_reduction'])} |")
    return lines


def controls_figure(ctl: dict, c, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    m = ctl.get("neutral_matrix")
    if m:
        animals = m["animals"]
        grid = np.array([[m["cells"][t][a].get("mean", np.nan) for a in animals] for t in animals])
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = axes[0].imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0].set_xticks(range(len(animals)), animals)
        axes[0].set_yticks(range(len(animals)), [f"{t} teacher" for t in animals])
        for i in range(len(animals)):
            for j in range(len(animals)):
                axes[0].text(j, i, f"{grid[i, j]:+.3f}", ha="center", va="center", fontsize=8)
        axes[0].set_xlabel("animal measured (log-odds shift vs neutral teacher's student)")
        fig.colorbar(im, ax=axes[0], fraction=0.046)
        axes[0].set_title(f"specificity matrix (diagonal wins: {m['diagonal_beats_row']})")
    for a, curve in ctl.get("along_training", {}).items():
        if curve:
            ks = [int(k) for k in curve]
            axes[1].errorbar(ks, [r["mean"] for r in curve.values()], yerr=[r["ci_half"] for r in curve.values()],
                             marker="o", capsize=3, label=a)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_xlabel("optimizer steps")
    axes[1].set_ylabel("own-animal log-odds shift vs neutral student")
    axes[1].set_title("dose-response along training (95% CI over seeds)")
    if ctl.get("along_training"):
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
