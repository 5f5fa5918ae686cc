"""Confidence intervals used across the project.

- mean_ci95: mean and the half-width of the Student-t 95% interval, t(0.975, n-1) * sample std /
  sqrt(n), for per-model or per-seed accuracies. With 10 models t = 2.26 (not 1.96: the normal
  approximation is 13% too narrow there, 54% too narrow for a 3-model sweep cell); with 100 models
  the two agree to 1%. method="normal" gives the 1.96 convention of the public script.
- proportion_ci95: Wilson score interval for a rate k/n (e.g. "answered owl" out of N samples);
  unlike the normal approximation it behaves at 0% and 100%.
- bootstrap_ci95: percentile bootstrap for any statistic (AUCs, medians).
- roc_auc / auc_with_ci: the Mann-Whitney AUC and its bootstrap CI ({auc, low, high, n_pos, n_neg});
  diff_of_means: {diff, ci95} with a normal CI from the two standard errors.

CI dicts: a mean with a symmetric interval is {"mean", "ci95" (the half-width), "n"}
(mean_ci_dict). Two writers keep the older key `ci_half` for the same half-width, because their
files are committed results that must stay byte-identical: distill's summary.json / alignment.json
(llm_validation/results/distill_*) and core/evaluate.py's next-token preference (eval/<arm>.json).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054


def mean_ci95(values: Sequence[float], method: str = "t") -> tuple[float, float]:
    """(mean, half-width of the 95% CI of the mean) with the sample std (ddof=1).

    method "t" (default): Student-t critical value with n - 1 degrees of freedom; "normal": 1.96.
    n = 1 has no spread estimate: half-width 0 (callers report n beside it)."""
    if method not in ("t", "normal"):
        raise ValueError(f"mean_ci95: method must be 't' or 'normal', got {method!r}")
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci95 of an empty sequence")
    if x.size == 1:
        return float(x[0]), 0.0
    crit = t95(x.size - 1) if method == "t" else Z95
    return float(x.mean()), float(crit * x.std(ddof=1) / math.sqrt(x.size))


def ci_text(half: float, n: int, fmt: str = ".2g", scale: float = 1.0) -> str:
    """A CI half-width for a table: "n/a" when n < 2. A single value has no spread estimate, and
    mean_ci95's 0.0 there would read as certainty."""
    return f"{half * scale:{fmt}}" if n >= 2 else "n/a"


def t95(dof: int) -> float:
    """Two-sided 95% critical value of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def proportion_ci95(k: int, n: int) -> tuple[float, float, float]:
    """(rate, low, high): Wilson score interval for k successes out of n."""
    if n <= 0:
        raise ValueError("proportion_ci95 needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"proportion_ci95: k={k} outside [0, {n}]")
    p = k / n
    z2 = Z95 * Z95
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp to [0, p] and [p, 1]: at k = 0 or k = n, rounding can put the bound a hair past p
    # (e.g. low = 5.6e-17 > 0 = p), which makes plotted error bars negative.
    return p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def bootstrap_ci95(
    data: Sequence | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap over the first axis of `data`."""
    arr = np.asarray(data)
    if arr.shape[0] == 0:
        raise ValueError("bootstrap_ci95 of empty data")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, arr.shape[0], arr.shape[0])
        stats[b] = statistic(arr[idx])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(statistic(arr)), float(lo), float(hi)


def mean_ci_dict(values: Sequence[float]) -> dict:
    """{"mean", "ci95": half-width of the Student-t 95% interval, "n"}: the one CI dict schema."""
    m, h = mean_ci95(values)
    return {"mean": m, "ci95": h, "n": int(len(values))}


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random pos > score of a random neg) + 0.5 P(tie): the Mann-Whitney AUC."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata  # here, not at the top: scipy costs ~0.3 s and few callers rank

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_with_ci(pos: np.ndarray, neg: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC with a percentile-bootstrap 95% CI (rows resampled jointly with their class label)."""
    data = np.concatenate([np.stack([pos, np.ones(len(pos))], 1), np.stack([neg, np.zeros(len(neg))], 1)])

    def stat(rows: np.ndarray) -> float:
        lab = rows[:, 1] > 0.5
        if lab.all() or not lab.any():  # a resample with one class only (tiny n): uninformative
            return 0.5
        return roc_auc(rows[lab, 0], rows[~lab, 0])

    auc, lo, hi = bootstrap_ci95(data, stat, n_boot=n_boot, seed=seed)
    return {"auc": auc, "low": lo, "high": hi, "n_pos": int(len(pos)), "n_neg": int(len(neg))}


def diff_of_means(x: np.ndarray, y: np.ndarray) -> dict:
    """mean(x) - mean(y) with a normal 95% CI from the two standard errors."""
    se = math.sqrt((np.var(x, ddof=1) / len(x) if len(x) > 1 else 0.0) + (np.var(y, ddof=1) / len(y) if len(y) > 1 else 0.0))
    return {"diff": float(np.mean(x) - np.mean(y)), "ci95": float(Z95 * se)}
