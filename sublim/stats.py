"""Confidence intervals used across the project.

- mean_ci95: mean and the half-width of the Student-t 95% interval, t(0.975, n-1) * sample std /
  sqrt(n), for per-model or per-seed accuracies. With 10 models t = 2.26 (not 1.96: the normal
  approximation is 13% too narrow there, 54% too narrow for a 3-model sweep cell); with 100 models
  the two agree to 1%. method="normal" gives the 1.96 convention of the public script.
- proportion_ci95: Wilson score interval for a rate k/n (e.g. "answered owl" out of N samples);
  unlike the normal approximation it behaves at 0% and 100%.
- bootstrap_ci95: percentile bootstrap for any statistic (AUCs, medians).
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
