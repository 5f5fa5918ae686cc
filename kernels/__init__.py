"""Per-example gradient statistics (squared norms, inner products with fixed directions) for linear
and embedding layers, without ever forming per-example gradients. See kernels/README.md."""

from sublim.kernels.linear_stats import LinearGradStats, choose_algorithm, linear_grad_stats
from sublim.kernels.model_stats import GradStatsResult, PerExampleGradStats, supported_param_names

__all__ = [
    "PerExampleGradStats",
    "GradStatsResult",
    "supported_param_names",
    "linear_grad_stats",
    "LinearGradStats",
    "choose_algorithm",
]
