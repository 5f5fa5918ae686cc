"""Confidence intervals (sublim/stats.py): known values, edge cases, and coverage by simulation."""

import math

import numpy as np
import pytest

from sublim.stats import Z95, bootstrap_ci95, mean_ci95, proportion_ci95, t95


def test_mean_ci95_known_values():
    x = np.arange(10.0)  # mean 4.5, sample std sqrt(55/6)
    s = math.sqrt(55 / 6)
    m, h = mean_ci95(x)
    assert m == 4.5
    assert h == pytest.approx(2.2621571628 * s / math.sqrt(10), rel=1e-9)  # t(0.975, 9)
    m, h = mean_ci95(x, method="normal")
    assert h == pytest.approx(1.959963985 * s / math.sqrt(10), rel=1e-9)
    assert t95(1) == pytest.approx(12.7062047, rel=1e-7) and t95(10**6) == pytest.approx(Z95, rel=1e-5)


def test_mean_ci95_edge_cases():
    assert mean_ci95([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])
    with pytest.raises(ValueError):
        mean_ci95([1.0, 2.0], method="z")


def test_t_interval_covers_95_percent_for_three_samples_and_normal_does_not():
    """3-sample cells (a small sweep): the t interval covers the true mean ~95% of the time, the
    1.96 interval only ~80% (the reason the default is t)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(0.5, 0.1, size=(4000, 3))
    cover = {meth: np.mean([abs(mean_ci95(d, meth)[0] - 0.5) <= mean_ci95(d, meth)[1] for d in draws])
             for meth in ("t", "normal")}
    assert 0.935 <= cover["t"] <= 0.965
    assert cover["normal"] < 0.85


def test_proportion_ci95_wilson():
    p, lo, hi = proportion_ci95(0, 50)
    assert p == 0.0 and lo == 0.0 and 0.05 < hi < 0.09  # Wilson upper bound for 0/50 is ~0.071
    p, lo, hi = proportion_ci95(50, 50)
    assert p == 1.0 and hi == 1.0 and 0.91 < lo < 0.95
    p, lo, hi = proportion_ci95(30, 100)
    assert lo < 0.3 < hi and hi - lo == pytest.approx(0.1786, abs=2e-3)
    with pytest.raises(ValueError):
        proportion_ci95(3, 2)


def test_bootstrap_ci95_is_seeded_and_brackets_the_statistic():
    x = np.random.default_rng(1).normal(size=200)
    a = bootstrap_ci95(x, np.median, seed=3)
    assert a == bootstrap_ci95(x, np.median, seed=3)
    stat, lo, hi = a
    assert lo <= stat <= hi and hi - lo < 0.5


def test_ci_text_says_na_for_one_value():
    from sublim.stats import ci_text, mean_ci95

    _, half = mean_ci95([0.5])
    assert ci_text(half, 1) == "n/a"  # 0.0 would read as certainty
    _, half = mean_ci95([0.5, 0.7])
    assert ci_text(half, 2, ".1f", 100) == f"{100 * half:.1f}" != "n/a"
