"""The toy's accuracy figure is a pure function of the result: its dots' jitter is seeded, and the
caller's numpy random state is left as it was."""

import numpy as np

from sublim.toymodels.config import ARM_LABELS, ToyConfig
from sublim.toymodels.results import bar_plot_png
from sublim.toymodels.train import ToyResult


def test_the_same_result_draws_the_same_png_and_leaves_numpy_state_alone():
    arms = list(ARM_LABELS)[:2]
    result = ToyResult(config=ToyConfig(), accuracy={a: np.array([0.5, 0.6, 0.7]) for a in arms})
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = bar_plot_png(result, "t")
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.rand(5)  # another global state: the figure must not depend on it
    assert bar_plot_png(result, "t") == first
