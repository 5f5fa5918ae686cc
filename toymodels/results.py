"""Turning a ToyResult into files: per-model CSV, summary JSON, a bar plot, a printed table.

Everything is written atomically (sublim.rundir), and summary.json is written LAST: its presence
marks a finished run, so an interrupted run never looks complete.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sublim.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text
from sublim.stats import ci_text, mean_ci95

from .config import ARM_LABELS
from .train import ToyResult


def summarize(result: ToyResult) -> dict:
    """{arm: {mean, ci95, n, min, max}} of test accuracy, plus run facts."""
    arms = {}
    for arm, values in result.accuracy.items():
        mean, half = mean_ci95(values)
        arms[arm] = {"label": ARM_LABELS[arm], "mean": mean, "ci95": half, "n": int(len(values)),
                     "min": float(np.min(values)), "max": float(np.max(values))}
    return {"arms": arms, "n_models": result.config.n_models, "wall_s": result.wall_s,
            "phase_s": result.phase_s, "derangement": result.derangement}


def per_model_rows(result: ToyResult) -> list[dict]:
    rows = []
    for arm, values in result.accuracy.items():
        losses = result.final_loss.get(arm)
        for i, acc in enumerate(values):
            row = {"model": i, "arm": arm, "test_accuracy": float(acc),
                   "final_train_loss": float(losses[i]) if losses is not None else float("nan")}
            if arm.startswith("cross"):
                row["init_of_model"] = result.derangement[i]
            rows.append(row)
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return buf.getvalue()


def format_table(summary: dict) -> str:
    lines = [f"{'arm':<28} {'test accuracy':>14}  95% CI (n={summary['n_models']})"]
    for arm, s in summary["arms"].items():
        lines.append(f"{s['label']:<28} {100 * s['mean']:>13.1f}%  +- {ci_text(s['ci95'], summary['n_models'], '.1f', 100)}")
    return "\n".join(lines)


def bar_plot_png(result: ToyResult, title: str) -> bytes:
    """Seaborn bars (mean, with Student-t 95% CI error bars) and every model as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(per_model_rows(result))
    df["arm"] = df["arm"].map(ARM_LABELS)
    df["test accuracy (%)"] = 100 * df["test_accuracy"]
    order = [ARM_LABELS[a] for a in result.accuracy]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    sns.barplot(data=df, x="arm", y="test accuracy (%)", order=order, errorbar=None, ax=ax, color="#9ecae1")
    # seaborn jitters the dots with numpy's GLOBAL generator: fix it here, so the same result draws
    # the same figure (byte-identical reruns), and restore the caller's state afterwards
    state = np.random.get_state()
    np.random.seed(0)
    try:
        sns.stripplot(data=df, x="arm", y="test accuracy (%)", order=order, ax=ax, color="#08306b", size=3, alpha=0.6)
    finally:
        np.random.set_state(state)
    for j, arm in enumerate(result.accuracy):
        mean, half = mean_ci95(result.accuracy[arm])
        ax.errorbar(j, 100 * mean, yerr=100 * half, color="black", capsize=5, lw=1.5)
        ax.text(j, 100 * mean + 100 * half + 2, f"{100 * mean:.1f}", ha="center", fontsize=9)
    ax.axhline(10, color="grey", ls="--", lw=1, label="chance (10%)")
    ax.set_ylim(0, 105)
    ax.set_xlabel("")
    ax.set_title(title)
    ax.legend(loc="upper right")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_run(run_dir: Path, result: ToyResult) -> dict:
    """per_model.csv, per_model.json, accuracy.png, then summary.json (last = the 'done' marker)."""
    run_dir = Path(run_dir)
    summary = summarize(result)
    rows = per_model_rows(result)
    atomic_write_text(run_dir / "per_model.csv", rows_to_csv(rows))
    atomic_write_json(run_dir / "per_model.json", rows)
    cfg = result.config
    title = (f"MNIST subliminal learning: {cfg.n_models} models, m={cfg.n_aux}, width {cfg.width}, "
             f"{cfg.distill_input} distillation (95% CI)")
    atomic_write_bytes(run_dir / "accuracy.png", bar_plot_png(result, title))
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
