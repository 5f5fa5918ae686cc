"""Per-example gradient statistics (squared norms, inner products with fixed directions) for linear
and embedding layers, without ever forming per-example gradients. See kernels/README.md."""

if __name__ != "sublim.kernels":
    # This folder is the package `sublim.kernels`. When the repository root is on sys.path
    # (`python -c ...` or `python -m ...` run from the root), Python can also find it under the bare
    # name `kernels`, which belongs to an unrelated PyPI package. transformers probes for that
    # package by importing `kernels` when no metadata is found; seen on the GPU image
    # (transformers 5.17), where this made `import transformers` fail. Under a foreign name, look
    # like an empty PEP 420 namespace (no __file__, no contents), which such probes read as
    # "not installed", instead of importing our code a second time.
    __file__ = None  # noqa: F811
    __all__: list[str] = []
else:
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
