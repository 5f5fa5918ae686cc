"""Comparisons, confidence intervals, tables and plots for per-example alignment scores.

Input: {data set name: AlignmentScores} (e.g. "teacher", "base", "shuffled", "cross_family").
Everything here is plain numpy on the per-example arrays, so it is cheap and testable:
- per data set and direction: mean a_i, mean a_i per completion token, mean cosine, share of
  a_i > 0 (Wilson CI), mean gradient norm; 95% CIs from sublim.stats;
- differences of means against a reference data set (normal CI: sqrt(se1^2 + se2^2));
- ROC AUC of a_i separating two data sets (Mann-Whitney form, percentile-bootstrap CI);
- per-layer means with CIs, and early-half vs late-half sums;
- per-example CSV, JSON summary, PNG plots (distributions, per-layer bars).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sublim.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text
from sublim.stats import Z95, auc_with_ci, diff_of_means, mean_ci95, mean_ci_dict, proportion_ci95

from sublim.llm_validation.core.scores import AlignmentScores, short_name


def dataset_summary(s: AlignmentScores) -> dict:
    a, cos = s.alignment, s.cosine
    per_tok = a / np.maximum(s.n_tokens[:, None], 1)
    out = {"n_examples": len(s.ids), "mean_loss": mean_ci_dict(s.loss), "mean_n_tokens": mean_ci_dict(s.n_tokens),
           "grad_norm": mean_ci_dict(s.grad_norm), "directions": {}}
    for j, lab in enumerate(s.labels):
        k_pos = int((a[:, j] > 0).sum())
        rate, lo, hi = proportion_ci95(k_pos, len(a))
        out["directions"][lab] = {"alignment": mean_ci_dict(a[:, j]), "alignment_per_token": mean_ci_dict(per_tok[:, j]),
                                  "cosine": mean_ci_dict(cos[:, j]), "share_positive": {"rate": rate, "low": lo, "high": hi}}
    return out


def per_layer_summary(s: AlignmentScores) -> dict:
    """Per decoder block: mean alignment and cosine with CIs; early-half vs late-half sums."""
    layers, a, _sq, cos = s.per_layer()
    out = {"layers": layers, "directions": {}}
    blocks = [i for i, li in enumerate(layers) if li >= 0]
    half = len(blocks) // 2
    early, late = blocks[:half], blocks[half:]
    for j, lab in enumerate(s.labels):
        rows = [{"layer": li, "alignment": mean_ci_dict(a[:, i, j]), "cosine": mean_ci_dict(cos[:, i, j])} for i, li in enumerate(layers)]
        out["directions"][lab] = {
            "per_layer": rows,
            "early_half_alignment": mean_ci_dict(a[:, early, j].sum(1)) if early else None,
            "late_half_alignment": mean_ci_dict(a[:, late, j].sum(1)) if late else None,
        }
    return out


def compare(scores: Mapping[str, AlignmentScores], reference: str = "teacher", *, n_boot: int = 1000) -> dict:
    """The full summary: every data set, and every other data set against `reference`."""
    out: dict = {"datasets": {n: dataset_summary(s) for n, s in scores.items()},
                 "per_layer": {n: per_layer_summary(s) for n, s in scores.items()}, "vs_reference": {}}
    if reference not in scores:
        return out
    ref = scores[reference]
    for name, s in scores.items():
        if name == reference:
            continue
        comp = {}
        for j, lab in enumerate(ref.labels):
            if lab not in s.labels:
                continue
            jj = s.labels.index(lab)
            a_r, a_o = ref.alignment[:, j], s.alignment[:, jj]
            t_r, t_o = a_r / np.maximum(ref.n_tokens, 1), a_o / np.maximum(s.n_tokens, 1)
            _, la_r, _, _ = ref.per_layer()
            layers, la_o, _, _ = s.per_layer()
            comp[lab] = {
                "alignment_diff": diff_of_means(a_r, a_o),
                "alignment_per_token_diff": diff_of_means(t_r, t_o),
                "cosine_diff": diff_of_means(ref.cosine[:, j], s.cosine[:, jj]),
                "auc_alignment": auc_with_ci(a_r, a_o, n_boot=n_boot),
                "auc_alignment_per_token": auc_with_ci(t_r, t_o, n_boot=n_boot),
                "per_layer_diff": [{"layer": li, **diff_of_means(la_r[:, i, j], la_o[:, i, jj])} for i, li in enumerate(layers)],
            }
        out["vs_reference"][f"{reference}_vs_{name}"] = comp
    return out


def specificity(s: AlignmentScores, target: str) -> dict | None:
    """With several animal directions: per-example a_target minus the mean of the other animals'
    a_i (does the data push toward ITS animal more than toward animals in general?)."""
    if target not in s.labels or s.alignment.shape[1] < 2:
        return None
    j = s.labels.index(target)
    others = [i for i in range(len(s.labels)) if i != j]
    return mean_ci_dict(s.alignment[:, j] - s.alignment[:, others].mean(1))


def correlation_with_ci(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson r with a Fisher-z 95% CI, and Spearman rho (alignment vs behavioral transfer)."""
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3:
        return {"n": n, "pearson_r": None, "note": "fewer than 3 points"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "pearson_r": None, "note": "a constant variable: correlation undefined"}
    r = float(pearsonr(x, y)[0])
    if n > 3 and abs(r) < 1:
        z, se = math.atanh(r), 1 / math.sqrt(n - 3)
        lo, hi = math.tanh(z - Z95 * se), math.tanh(z + Z95 * se)
    else:
        lo, hi = float("nan"), float("nan")
    return {"n": n, "pearson_r": r, "low": lo, "high": hi, "spearman_rho": float(spearmanr(x, y)[0])}


# ----------------------------------------------------------------------------- files
def scores_table(scores: Mapping[str, AlignmentScores]):
    """One row per (data set, example): totals per direction; per-layer alignment columns for the
    first direction (the target) and teacher_delta only, to keep the file small (every direction's
    per-weight-matrix numbers are in scores_<set>.npz)."""
    import pandas as pd

    frames = []
    for name, s in scores.items():
        layers, la, lsq, _ = s.per_layer()
        cols = {"dataset": name, "id": s.ids, "n_tokens": s.n_tokens.astype(int), "loss": s.loss, "grad_norm": s.grad_norm}
        a, cos = s.alignment, s.cosine
        for j, lab in enumerate(s.labels):
            cols[f"align_{lab}"] = a[:, j]
            cols[f"cos_{lab}"] = cos[:, j]
        for j, lab in enumerate(s.labels):
            if j > 0 and lab != "teacher_delta":
                continue
            for i, li in enumerate(layers):
                cols[f"align_{lab}_L{li}"] = la[:, i, j]
        for i, li in enumerate(layers):
            cols[f"grad_norm_L{li}"] = np.sqrt(lsq[:, i])
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def write_outputs(out_dir, scores: Mapping[str, AlignmentScores], summary: dict) -> list[str]:
    """per_example_scores.csv, summary.json, and the plots; returns the written file names."""
    out_dir = Path(out_dir)
    table = scores_table(scores)
    atomic_write_text(out_dir / "per_example_scores.csv", table.to_csv(index=False, float_format="%.7g"))
    atomic_write_json(out_dir / "summary.json", summary)
    written = ["per_example_scores.csv", "summary.json"]
    written += plot_all(out_dir, scores)
    return written


def plot_all(out_dir, scores: Mapping[str, AlignmentScores]) -> list[str]:
    import matplotlib  # plotting libraries load only when plotting (seconds of imports)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(Path(out_dir) / name, buf.getvalue())
        return name

    written = []
    labels = next(iter(scores.values())).labels
    for j, lab in enumerate(labels):
        rows = []
        for name, s in scores.items():
            if lab in s.labels:
                jj = s.labels.index(lab)
                rows.append(pd.DataFrame({"dataset": name, "alignment": s.alignment[:, jj], "cosine": s.cosine[:, jj],
                                          "alignment per token": s.alignment[:, jj] / np.maximum(s.n_tokens, 1)}))
        df = pd.concat(rows, ignore_index=True)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, col in zip(axes, ["alignment", "alignment per token", "cosine"]):
            sns.histplot(df, x=col, hue="dataset", stat="density", common_norm=False, element="step", fill=False, ax=ax)
            ax.axvline(0, color="k", lw=0.8)
        fig.suptitle(f"per-example alignment a_i = <-grad loss_i, D_{lab}> (unit D)")
        written.append(save(fig, f"alignment_distribution_{lab}.png"))

        rows = []
        for name, s in scores.items():
            if lab not in s.labels:
                continue
            jj = s.labels.index(lab)
            layers, la, _, _ = s.per_layer()
            for i, li in enumerate(layers):
                m, h = mean_ci95(la[:, i, jj])
                rows.append({"dataset": name, "layer": li, "mean": m, "ci95": h})
        df = pd.DataFrame(rows)
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * df["layer"].nunique() * len(scores)), 4))
        names = list(dict.fromkeys(df["dataset"]))
        layers = sorted(df["layer"].unique())
        width = 0.8 / len(names)
        for n_i, name in enumerate(names):
            sub = df[df["dataset"] == name].set_index("layer").reindex(layers)
            ax.bar(np.arange(len(layers)) + n_i * width, sub["mean"], width, yerr=sub["ci95"], label=name, capsize=2)
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
        ax.set_xticklabels([str(li) if li >= 0 else "emb" for li in layers])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("decoder block")
        ax.set_ylabel("mean a_i in the block (95% CI)")
        ax.set_title(f"per-layer alignment with D_{lab}")
        ax.legend()
        written.append(save(fig, f"alignment_per_layer_{lab}.png"))
    return written


__all__ = ["dataset_summary", "per_layer_summary", "compare",
           "specificity", "correlation_with_ci", "scores_table", "write_outputs", "plot_all", "short_name"]
