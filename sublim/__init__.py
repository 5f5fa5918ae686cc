"""sublim: a lab for studying subliminal learning.

The code lives in top-level folders named for what they hold and is imported under this
namespace (the folder `kernels/` is `sublim.kernels`, so nothing collides with PyPI packages):

    sublim.theory          theory/          symbolic + numerical gradient-alignment theorem
    sublim.toymodels       toymodels/       batched MLP/MNIST teacher-student experiments
    sublim.kernels         kernels/         Triton per-example gradient statistics
    sublim.llm_validation  llm_validation/  teacher -> numbers -> filter -> student on causal LMs

Shared helpers (errors, run directories, statistics, progress bars) live in this package.
"""

__version__ = "0.1.0"
