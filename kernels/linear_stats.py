"""Per-example gradient statistics of one linear layer: input checks, algorithm choice, dispatch.

    linear_grad_stats(x, g, directions, bias=..., mask=...) -> LinearGradStats

x (B, d_in) or (B, T, d_in) is the layer input, g the gradient of the loss wrt its output (same
leading shape, last dim d_out). Returns per-example ||G_i||^2 and <G_i, D_k> for the weight (and the
bias), where G_i is example i's own gradient. Per-example gradients are never written to memory.

Algorithm (per example, in multiply-adds; see torch_backend.py for the formulas):
    ghost       T^2 (d_in + d_out)                        norm only
    materialize T d_in d_out + c (1 + k) d_in d_out        norm and k dots from on-chip tiles
    g-times-D   k T d_in d_out                            dots only
c weighs the elementwise square/dot reduction of each gradient tile, which runs on ordinary FMA
units rather than the matrix units (ELEMENTWISE_WEIGHT). With directions we take the cheaper of
materialize and ghost + g-times-D; without, the cheaper of ghost and materialize (choose_algorithm;
on CUDA, algorithm="auto" times the launch plans instead: measured_algorithm).
(docs/reference.md section 3 writes the switch as T^2 (d_in+d_out) > d_in d_out; counting the T sum that forming
G_i needs, the fair comparison is T (d_in + d_out) > d_in d_out.)

Dispatch: every backend (torch_backend.py, triton_kernels.py) defines the same functions with the
same signatures (BACKENDS below), so compute_checked picks a plan, then calls it the same way on
any backend.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from sublim.errors import ConfigError
from sublim.kernels import torch_backend

ELEMENTWISE_WEIGHT = 4.0
MAX_DIRECTIONS_PER_LAUNCH = 16
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class LinearGradStats:
    sq_norm: Tensor  # (B,) fp32, weight
    dot: Tensor | None  # (B, k) fp32, weight, None without directions
    bias_sq_norm: Tensor | None  # (B,) fp32, None without bias
    bias_dot: Tensor | None  # (B, k) fp32
    algorithm: str  # "ghost", "materialize" or "ghost+gd"
    backend: str  # "torch" or "triton"


@functools.lru_cache(maxsize=4096)
def choose_algorithm(T: int, d_in: int, d_out: int, k: int) -> str:
    """The plan with the fewest weighted multiply-adds per example (k = 0: no directions)."""
    ghost = T * T * (d_in + d_out)
    materialize = T * d_in * d_out + ELEMENTWISE_WEIGHT * (1 + k) * d_in * d_out
    if k == 0:
        return "ghost" if ghost <= materialize else "materialize"
    ghost_gd = ghost + k * T * d_in * d_out
    return "ghost+gd" if ghost_gd < materialize else "materialize"


# On CUDA, algorithm="auto" times every launch plan of a tunable backend once per shape (as cuBLAS
# heuristics and triton.autotune do) instead of trusting the cost model: which one wins depends on
# the card, the tile sizes and L2 behaviour more than on multiply-add counts.
# SUBLIM_KERNEL_AUTOTUNE=0 turns it off.
AUTOTUNE = os.environ.get("SUBLIM_KERNEL_AUTOTUNE", "1") != "0"
_MEASURED: dict[tuple, tuple[str, dict]] = {}
TUNING_REPS = 7
GHOST_SPLIT_CANDIDATES = (None, 1, 2, 4, 8)  # None: ghost_plan's one-wave rule
MATERIALIZE_EX_CANDIDATES = (1, 2, 4)


# Plans that pass the interpreter tests and compile for sm_90 but have not yet been checked on a GPU.
# The tuner only considers them with SUBLIM_KERNEL_EXPERIMENTAL=1: it times plans, it does not check
# their numbers, so a plan joins the default set only after the GPU tests and the benchmark's
# float64 comparison have passed on a device (benchmarks/device/kernels_tuned.sh runs both).
EXPERIMENTAL_PLANS = os.environ.get("SUBLIM_KERNEL_EXPERIMENTAL", "0") == "1"


def tuning_candidates(k: int, experimental: bool | None = None) -> list[tuple[str, dict]]:
    """(algorithm, launch options) pairs that auto-tuning times on CUDA (experimental: also the plans
    not yet validated on a GPU; None: SUBLIM_KERNEL_EXPERIMENTAL)."""
    experimental = EXPERIMENTAL_PLANS if experimental is None else experimental
    # not yet run on a GPU: the flattened example x token loop
    extra = [("materialize", {"flat": True})] if experimental else []
    if k == 0:
        return [("ghost", {"splits": s}) for s in GHOST_SPLIT_CANDIDATES] + [("materialize", {})] + extra
    # (materialize with 128 x 128 tiles is a norm-only plan: with directions it needs the most registers)
    return ([("ghost+gd", {}), ("ghost+gd", {"gd_large_tiles": True})]
            + [("materialize", {"examples_per_load": e}) for e in MATERIALIZE_EX_CANDIDATES] + extra)


def _tuning_key(x3: Tensor, g3: Tensor, directions: Tensor | None, mask: Tensor | None) -> tuple:
    B, T, d_in = x3.shape
    k = 0 if directions is None else directions.shape[0]
    return (B, T, d_in, g3.shape[2], k, x3.dtype, g3.dtype, None if directions is None else directions.dtype,
            mask is not None, x3.device)


def tuned_choice(x3: Tensor, g3: Tensor, directions: Tensor | None = None, mask: Tensor | None = None):
    """What auto-tuning picked for this shape so far, or None (for reports and benchmarks)."""
    return _MEASURED.get(_tuning_key(x3, g3, directions, mask))


def measured_algorithm(x3: Tensor, g3: Tensor, directions: Tensor | None, mask: Tensor | None,
                       backend: str = "triton") -> tuple[str, dict]:
    """The fastest (algorithm, launch options) of `backend` for this shape, timed on the device the
    first time it is seen (then cached for the process).

    Every candidate runs twice to compile and warm up, then TUNING_REPS times; its cost is the median
    of max(host time of the call, device time between CUDA events): a call costs whichever of the
    two is longer when calls are issued back to back, so for small layers (microseconds of GPU work,
    tens of microseconds of launching) the plan with fewer launches wins, as it should in a
    host-bound training step. A candidate that fails (compilation, out of resources or memory) is
    skipped with a warning; if all fail, the first error is raised. All candidates compute the same
    statistics (each is tested against the same float64 reference), so the choice changes speed only."""
    key = _tuning_key(x3, g3, directions, mask)
    k = key[4]
    choice = _MEASURED.get(key)
    if choice is not None:
        return choice
    candidates = tuning_candidates(k)
    times, errors = {}, []
    for i, (algorithm, options) in enumerate(candidates):
        try:
            run = functools.partial(compute_checked, x3, g3, directions, mask, backend, algorithm, tuning=options)
            run()
            run()
            ms = []
            for _ in range(TUNING_REPS):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                t0 = time.perf_counter()
                run()
                host_ms = (time.perf_counter() - t0) * 1e3
                end.record()
                end.synchronize()
                ms.append(max(host_ms, start.elapsed_time(end)))
            times[i] = sorted(ms)[len(ms) // 2]
        except Exception as e:  # noqa: BLE001 - Triton's compile/resource errors share no base class
            errors.append(e)
            warnings.warn(f"kernels: {algorithm} {options} failed for shape {key[:5]} and is skipped: {e!r}")
    if not times:
        raise errors[0]
    choice = _MEASURED[key] = candidates[min(times, key=times.get)]
    return choice


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA, or on CPU when TRITON_INTERPRET=1 was set before triton was imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and device.type == "cpu"


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _as_sequence(name: str, t: Tensor) -> Tensor:
    if t.dim() == 2:
        return t[:, None, :]
    if t.dim() == 3:
        return t
    raise ConfigError(f"{name} must have shape (B, d) or (B, T, d), got {tuple(t.shape)}")


def validate(x, g, directions, bias_directions, mask):
    """Shape/dtype/device checks; returns x, g as (B, T, d) views, mask as bool (B, T) or None."""
    _check_float("x", x)
    _check_float("g", g)
    if x.dim() != g.dim() or x.shape[:-1] != g.shape[:-1]:
        raise ConfigError(
            f"x {tuple(x.shape)} and g {tuple(g.shape)} must share their leading (B[, T]) dimensions"
        )
    if x.device != g.device:
        raise ConfigError(f"x is on {x.device} but g is on {g.device}")
    x3, g3 = _as_sequence("x", x), _as_sequence("g", g)
    B, T, d_in = x3.shape
    d_out = g3.shape[2]
    k = None
    if directions is not None:
        _check_float("directions", directions)
        if directions.dim() != 3 or directions.shape[1:] != (d_out, d_in) or directions.shape[0] < 1:
            raise ConfigError(
                f"directions must have shape (k, d_out={d_out}, d_in={d_in}), got {tuple(directions.shape)}"
            )
        if directions.device != x.device:
            raise ConfigError(f"directions are on {directions.device} but x is on {x.device}")
        k = directions.shape[0]
    if bias_directions is not None:
        _check_float("bias_directions", bias_directions)
        if bias_directions.dim() != 2 or bias_directions.shape[1] != d_out:
            raise ConfigError(
                f"bias_directions must have shape (k, d_out={d_out}), got {tuple(bias_directions.shape)}"
            )
        if k is not None and bias_directions.shape[0] != k:
            raise ConfigError(f"bias_directions has k={bias_directions.shape[0]} but directions has k={k}")
        if bias_directions.device != x.device:
            raise ConfigError(f"bias_directions are on {bias_directions.device} but x is on {x.device}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ConfigError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.shape != x.shape[:-1]:
            raise ConfigError(f"mask must have shape {tuple(x.shape[:-1])}, got {tuple(mask.shape)}")
        mask = (mask != 0).reshape(B, T).to(x.device)
    return x3, g3, mask


def linear_grad_stats(
    x: Tensor,
    g: Tensor,
    directions: Tensor | None = None,
    *,
    bias: bool = False,
    bias_directions: Tensor | None = None,
    mask: Tensor | None = None,
    backend: str = "auto",
    algorithm: str = "auto",
) -> LinearGradStats:
    """Per-example ||G_i||^2 and <G_i, D_k> of y = x W^T (+ b); see the module docstring.

    mask (B, T) or (B,): tokens where it is 0/False contribute nothing (their g is treated as 0).
    backend: "auto" (Triton on CUDA, else PyTorch), "triton", "torch".
    algorithm: "auto", "ghost", "materialize" or "ghost+gd" (the last two also give dots).
    """
    if algorithm not in ("auto", "ghost", "materialize", "ghost+gd"):
        raise ConfigError(f"unknown algorithm {algorithm!r} (auto, ghost, materialize, ghost+gd)")
    x3, g3, mask = validate(x, g, directions, bias_directions, mask)
    backend = resolve_backend(backend, x3, g3, directions)
    return compute_checked(x3, g3, directions, mask, backend, algorithm, bias, bias_directions)


# The backends: modules with the same functions and signatures (a test compares them),
#   ghost_sq_norm(x, g, *, mask, with_bias, out_sq, splits)       -> (sq (B,), bias_sq (B,) or None)
#   gd_dots(x, g, directions, *, mask, out_dot, large_tiles)       -> dots (B, k)
#   materialize_stats(x, g, directions, *, mask, out_sq, out_dot, examples_per_load, flat)
#                                                                  -> (sq (B,), dots (B, k) or None)
#   TUNABLE: whether algorithm="auto" times the launch plans (tuning_candidates) on CUDA,
# all ADDING into the given float32 accumulators (torch_backend.accumulator). A backend that has no
# use for a launch option accepts it and says why. Triton is imported only when asked for: it may
# be absent, and importing it is slow.
BACKENDS = {"torch": "sublim.kernels.torch_backend", "triton": "sublim.kernels.triton_kernels"}
BACKEND_OPS = ("ghost_sq_norm", "gd_dots", "materialize_stats")
# launch options a plan may carry (tuning_candidates): ghost_sq_norm's splits, gd_dots' large_tiles,
# materialize_stats' examples_per_load and flat
TUNING_KEYS = frozenset({"splits", "gd_large_tiles", "examples_per_load", "flat"})


@functools.cache
def backend_module(name: str) -> ModuleType:
    """The module implementing backend `name` ("torch" or "triton")."""
    return importlib.import_module(BACKENDS[name])


def compute_checked(
    x3: Tensor,
    g3: Tensor,
    directions: Tensor | None,
    mask: Tensor | None,
    backend: str,
    algorithm: str = "auto",
    bias: bool = False,
    bias_directions: Tensor | None = None,
    tuning: dict | None = None,
    out_sq: Tensor | None = None,
    out_dot: Tensor | None = None,
) -> LinearGradStats:
    """linear_grad_stats after validation: x3/g3 (B, T, d), mask bool (B, T) or None, backend
    resolved. The model-level hooks call this directly (their shapes come from the module).
    tuning: launch options of the plan (TUNING_KEYS); backends without launch options ignore them.
    out_sq (B,) / out_dot (B, k): optional contiguous float32 accumulators the weight statistics are
    ADDED to (the model-level hooks pass rows of one zeroed per-step buffer: one memset per step
    instead of one or two per layer); the returned tensors are then these accumulators."""
    impl = backend_module(backend)
    algorithm, tuning = _choose_plan(impl, backend, x3, g3, directions, mask, algorithm, tuning)
    sq, dot, bias_sq = _run_plan(impl, algorithm, tuning, x3, g3, directions, mask, bias, out_sq, out_dot)
    bias_dot = None
    # the bias gradient is tiny (B x d_out): formed directly in PyTorch, unless the plan gave its norm
    if bias and (bias_sq is None or bias_directions is not None):
        b_sq, bias_dot = torch_backend.bias_stats(g3, bias_directions, mask=mask)
        bias_sq = b_sq if bias_sq is None else bias_sq
    return LinearGradStats(sq, dot, bias_sq, bias_dot, algorithm, backend)


def _choose_plan(impl: ModuleType, backend: str, x3: Tensor, g3: Tensor, directions: Tensor | None,
                 mask: Tensor | None, algorithm: str, tuning: dict | None) -> tuple[str, dict]:
    """(algorithm, launch options): as given, else timed (tunable backend on CUDA) or the cost model."""
    unknown = tuning.keys() - TUNING_KEYS if tuning else None
    if unknown:
        raise ConfigError(f"unknown tuning options {sorted(unknown)} (known: {sorted(TUNING_KEYS)})")
    B, T, d_in = x3.shape
    k = 0 if directions is None else directions.shape[0]
    if algorithm == "auto":
        if impl.TUNABLE and x3.is_cuda and AUTOTUNE:
            algorithm, tuning = measured_algorithm(x3, g3, directions, mask, backend)
        else:
            algorithm = choose_algorithm(T, d_in, g3.shape[2], k)
    if algorithm == "ghost" and k:
        algorithm = "ghost+gd"  # ghost alone gives no dots
    return algorithm, tuning or {}


def _run_plan(impl: ModuleType, algorithm: str, tuning: dict, x3: Tensor, g3: Tensor, directions: Tensor | None,
              mask: Tensor | None, bias: bool, out_sq: Tensor | None, out_dot: Tensor | None):
    """(sq, dot or None, bias_sq or None) of one plan; bias_sq only where the plan gives it (ghost)."""
    if algorithm == "materialize":
        sq, dot = impl.materialize_stats(x3, g3, directions, mask=mask, out_sq=out_sq, out_dot=out_dot,
                                         examples_per_load=tuning.get("examples_per_load"),
                                         flat=tuning.get("flat", False))
        return sq, dot, None
    sq, bias_sq = impl.ghost_sq_norm(x3, g3, mask=mask, with_bias=bias, out_sq=out_sq, splits=tuning.get("splits"))
    dot = None
    if directions is not None:
        dot = impl.gd_dots(x3, g3, directions, mask=mask, out_dot=out_dot,
                           large_tiles=tuning.get("gd_large_tiles", False))
    return sq, dot, bias_sq


def resolve_backend(backend: str, x: Tensor, g: Tensor, directions: Tensor | None) -> str:
    """The backend to run: "auto" is Triton on CUDA for float32/bfloat16/float16, else PyTorch; an
    explicit "triton" is checked (device, dtypes) with a one-line error."""
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (auto, {', '.join(BACKENDS)})")
    dtypes_ok = x.dtype in TRITON_DTYPES and g.dtype in TRITON_DTYPES and (
        directions is None or directions.dtype in TRITON_DTYPES
    )
    if backend == "auto":
        return "triton" if x.device.type == "cuda" and dtypes_ok and triton_available(x.device) else "torch"
    if backend == "triton":
        if not triton_available(x.device):
            raise ConfigError(
                f"backend='triton' needs a CUDA tensor (got {x.device}) or TRITON_INTERPRET=1 set before "
                "triton is imported"
            )
        if not dtypes_ok:
            raise ConfigError(f"backend='triton' supports float32/bfloat16/float16, got {x.dtype}/{g.dtype}")
    return backend
