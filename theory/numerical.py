"""The theorem checked against autograd on the project's batched toy MLPs, in float64.

The teacher's direction dT = -grad of its loss (cross-entropy on the digit logits of an MNIST
batch) at the shared init theta0. The student distills from theta0 + eps dT on inputs from D
(uniform noise, gaussian noise, or MNIST images) with either loss (KL / half squared error) over
either the auxiliary logits or all logits. Its autograd step dS(eps) is compared with the
first-order prediction alpha eps K dT, K dT = E_x[J^T H J dT], computed by one JVP, the
analytic H, and one VJP (no Jacobian is ever materialized).

Every parameter list has a leading models axis, so each quantity comes out per model: a dot
product of two parameter lists is a (models,) vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from sublim.errors import ConfigError
from sublim.theory.checks import CheckResult
from sublim.seeding import torch_generator
from sublim.toymodels.losses import cross_entropy, distill_kl, half_squared_error
from sublim.toymodels.model import MLPSpec, forward, init_params

DISTRIBUTIONS = ("uniform", "gaussian", "mnist")
LOSSES = ("kl", "se")
OUTPUTS = ("aux", "all")
DTYPE = torch.float64


@dataclass(frozen=True)
class ToySetup:
    """A small instance of the paper's MNIST setup (784 -> width x depth -> 10 + m)."""

    width: int = 32
    depth: int = 2
    n_aux: int = 3
    n_models: int = 8
    seed: int = 0
    n_teacher: int = 256  # MNIST examples in the teacher's loss
    n_student: int = 256  # inputs from D in the imitation loss
    init: str = "normal"

    def spec(self) -> MLPSpec:
        return MLPSpec(d_in=784, width=self.width, depth=self.depth, n_classes=10, n_aux=self.n_aux, init=self.init)


@lru_cache(maxsize=1)
def _mnist():
    from sublim.toymodels.mnist import load_mnist

    return load_mnist()


def sample_inputs(dist: str, n: int, generator: torch.Generator, *, split: str = "test") -> torch.Tensor:
    """n inputs of dimension 784 in float64 from one of DISTRIBUTIONS."""
    if dist == "uniform":  # the paper's noise: U[-1, 1]^784
        return torch.rand(n, 784, generator=generator, dtype=DTYPE) * 2 - 1
    if dist == "gaussian":
        return torch.randn(n, 784, generator=generator, dtype=DTYPE)
    if dist == "mnist":
        data = _mnist()
        pool = data.x_test if split == "test" else data.x_train
        idx = torch.randint(0, pool.shape[0], (n,), generator=generator)
        return pool[idx].to(DTYPE)
    raise ConfigError(f"input distribution must be one of {DISTRIBUTIONS}, got {dist!r}")


def teacher_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    data = _mnist()
    idx = torch.randint(0, data.x_train.shape[0], (n,), generator=generator)
    return data.x_train[idx].to(DTYPE), data.y_train[idx]


# ---------------------------------------------------------------------------------------------
# Parameter-list arithmetic (per model).
# ---------------------------------------------------------------------------------------------


def pdot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """(models,) inner products of two parameter lists."""
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def pnorm(a: list[torch.Tensor]) -> torch.Tensor:
    return pdot(a, a).sqrt()


def pcos(a, b) -> torch.Tensor:
    return pdot(a, b) / (pnorm(a) * pnorm(b))


def padd(a, b, scale: float = 1.0):
    return [x + scale * y for x, y in zip(a, b)]


# ---------------------------------------------------------------------------------------------
# Losses and steps.
# ---------------------------------------------------------------------------------------------


def teacher_loss(params, x, y) -> torch.Tensor:
    """(models,) cross-entropy on the 10 digit logits."""
    return cross_entropy(forward(params, x)[..., :10], y)


def teacher_direction(params, x, y) -> list[torch.Tensor]:
    """dT = -grad L_T(theta0), per model."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    g = torch.autograd.grad(teacher_loss(ps, x, y).sum(), ps)
    return [-t for t in g]


def _selected(logits: torch.Tensor, outputs: str) -> torch.Tensor:
    if outputs == "aux":
        return logits[..., 10:]
    if outputs == "all":
        return logits
    raise ConfigError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")


def imitation_loss(student_logits, teacher_logits, loss: str, outputs: str) -> torch.Tensor:
    zs, zt = _selected(student_logits, outputs), _selected(teacher_logits, outputs)
    if loss == "kl":
        return distill_kl(zs, zt)
    if loss == "se":
        return half_squared_error(zs, zt)
    raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")


def student_gradient(student_params, teacher_params, x, loss: str, outputs: str) -> list[torch.Tensor]:
    with torch.no_grad():
        zt = forward(teacher_params, x)
    ps = [p.detach().clone().requires_grad_(True) for p in student_params]
    return list(torch.autograd.grad(imitation_loss(forward(ps, x), zt, loss, outputs).sum(), ps))


def student_step(params0, teacher_params, x, loss: str, outputs: str, alpha: float) -> list[torch.Tensor]:
    """dS = -alpha grad of the imitation loss at the student's start (autograd, the real thing)."""
    return [-alpha * g for g in student_gradient(params0, teacher_params, x, loss, outputs)]


# ---------------------------------------------------------------------------------------------
# The first-order prediction K dT = E_x[J^T H J dT].
# ---------------------------------------------------------------------------------------------


def hessian_vp(z: torch.Tensor, u: torch.Tensor, loss: str, outputs: str) -> torch.Tensor:
    """H u for the theorem's H at the shared outputs z (models, batch, d_out), padded with zeros
    outside the distilled outputs: I for half-SE, diag(p) - p p^T for KL."""
    out = torch.zeros_like(u)
    sel = slice(10, None) if outputs == "aux" else slice(None)
    us = u[..., sel]
    if loss == "se":
        out[..., sel] = us
    else:
        p = torch.softmax(z[..., sel], dim=-1)
        out[..., sel] = p * (us - (p * us).sum(-1, keepdim=True))
    return out


def identity_hvp(z, u, loss, outputs):
    """A deliberately WRONG H (= I) for the softmax loss: tests check it is reported as FAIL."""
    return hessian_vp(z, u, "se", outputs)


def k_times(params0, direction, x, loss: str, outputs: str, hvp: Callable = hessian_vp) -> list[torch.Tensor]:
    """K v = mean over x of J^T H J v, per model, via one JVP and one VJP."""
    params0 = [p.detach() for p in params0]
    f = lambda *ps: forward(list(ps), x)  # noqa: E731
    z, u = torch.func.jvp(f, tuple(params0), tuple(d.detach() for d in direction))
    _, vjp = torch.func.vjp(f, *params0)
    return list(vjp(hvp(z, u, loss, outputs) / x.shape[0]))


# ---------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------


def build(setup: ToySetup, dist: str, *, seed_offset: int = 0):
    """(theta0, dT, student inputs x) for one setup and input distribution."""
    g = torch_generator("theory-build", setup.seed, seed_offset)
    params0 = init_params(setup.spec(), setup.n_models, seed=setup.seed + seed_offset, dtype=DTYPE)
    xt, yt = teacher_batch(setup.n_teacher, g)
    dT = teacher_direction(params0, xt, yt)
    x = sample_inputs(dist, setup.n_student, g)
    return params0, dT, x, (xt, yt)


def relative_error_curve(params0, dT, x, loss, outputs, eps_grid, *, alpha: float = 1.0, hvp: Callable = hessian_vp) -> np.ndarray:
    """(len(eps_grid), models) relative error ||dS(eps) - alpha eps K dT|| / ||alpha eps K dT||."""
    kdt = k_times(params0, dT, x, loss, outputs, hvp)
    rows = []
    for eps in eps_grid:
        dS = student_step(params0, padd(params0, dT, eps), x, loss, outputs, alpha)
        pred = [alpha * eps * t for t in kdt]
        rows.append((pnorm([a - b for a, b in zip(dS, pred)]) / pnorm(pred)).numpy())
    return np.stack(rows)


def fit_loglog_slope(eps_grid, errors: np.ndarray) -> np.ndarray:
    """Least-squares slope of log10(error) vs log10(eps), one per model (column)."""
    lx = np.log10(np.asarray(eps_grid, dtype=np.float64))
    ly = np.log10(np.maximum(errors, 1e-300))
    A = np.stack([lx, np.ones_like(lx)], 1)
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    return coef[0]


DEFAULT_EPS_GRID = tuple(float(e) for e in np.logspace(-6.5, -2.5, 9))
# Where the measured error is linear depends on D: MNIST's margins are smaller (kinks start
# earlier) and its float64 rounding floor is lower, so its 4-decade window sits lower.
EPS_GRIDS = {"uniform": DEFAULT_EPS_GRID, "gaussian": DEFAULT_EPS_GRID, "mnist": tuple(float(e) for e in np.logspace(-7.5, -3.5, 9))}


def kink_onset(params0, dT, x) -> torch.Tensor:
    """(models,) the eps at which the first ReLU of the sample changes state, to first order:
    min over hidden units and inputs of |pre-activation| / |d pre-activation along dT|.
    Below it f(theta0 + eps dT, x) is smooth in eps and the Taylor expansion applies; above it
    the piecewise-linear net adds kink terms the theorem (for differentiable f) does not cover."""
    n_layers = len(params0) // 2

    def pre(*ps):
        h, outs = x, []
        for l in range(n_layers):
            h = torch.einsum("bi,moi->mbo" if h.dim() == 2 else "mbi,moi->mbo", h, ps[2 * l]) + ps[2 * l + 1][:, None, :]
            if l < n_layers - 1:
                outs.append(h)
                h = torch.relu(h)
        return torch.cat([o.flatten(1) for o in outs], 1)

    a, da = torch.func.jvp(pre, tuple(p.detach() for p in params0), tuple(d.detach() for d in dT))
    return (a.abs() / da.abs()).min(1).values


def check_slope(setup: ToySetup, dist: str, loss: str, outputs: str, *, eps_grid=None, hvp: Callable = hessian_vp,
                tol: float = 0.1, min_decades: float = 4.0) -> CheckResult:
    """Relative error of the first-order prediction falls like eps^1: per model, the log-log slope
    over the grid points inside that model's smooth regime (eps <= kink onset / 2) is within tol
    of 1. Models whose smooth regime spans < min_decades of the grid are reported and left out of
    the slope claim; PASS needs at least 2 models to qualify, and every qualifying slope within
    tol. A wrong H leaves an O(1) error in EVERY model: slope ~ 0, so two qualifying models already
    make the check FAIL. (It asked for half the models until 2026-11-29: on MNIST inputs ~40% of
    models have < 4 smooth decades, so that rule failed 3 of 12 seeds of a correct implementation.)"""
    eps_grid = EPS_GRIDS[dist] if eps_grid is None else eps_grid
    params0, dT, x, _ = build(setup, dist)
    errs = relative_error_curve(params0, dT, x, loss, outputs, eps_grid, hvp=hvp)
    kinks = kink_onset(params0, dT, x).numpy()
    grid = np.asarray(eps_grid)
    slopes, decades, excluded = [], [], []
    for m in range(setup.n_models):
        inside = grid <= kinks[m] / 2
        dec = float(np.log10(grid[inside].max() / grid[inside].min())) if inside.sum() >= 2 else 0.0
        decades.append(dec)
        if dec + 1e-9 < min_decades:
            excluded.append(m)
            slopes.append(float("nan"))
            continue
        slopes.append(float(fit_loglog_slope(grid[inside], errs[inside, m:m + 1])[0]))
    qual = [sl for sl in slopes if sl == sl]
    ok = len(qual) >= min(2, setup.n_models) and all(abs(sl - 1) <= tol for sl in qual)
    return CheckResult(
        f"autograd vs first order ({loss}, {outputs} logits, x~{dist}): log-log slope of relative error = 1 +- {tol} over >= {min_decades:g} decades "
        f"({len(qual)}/{setup.n_models} models; slopes {min(qual, default=float('nan')):.3f}..{max(qual, default=float('nan')):.3f})",
        ok,
        {"eps_grid": list(eps_grid), "slope_per_model": slopes, "smooth_decades_per_model": decades, "kink_onset_per_model": kinks.tolist(),
         "excluded_models_short_smooth_regime": excluded, "rel_error_per_eps_per_model": errs.tolist(),
         "hvp": getattr(hvp, "__name__", str(hvp)), "n_models": setup.n_models, "n_student_inputs": setup.n_student},
        section="numerical: first order",
    )


def check_sign(setup: ToySetup, dists=DISTRIBUTIONS, losses=LOSSES, outputs_list=OUTPUTS, *, seeds=(0, 1), eps: float = 1e-3, alpha: float = 1.0) -> CheckResult:
    """dS . dT > 0 (real autograd step at small eps) and dT . K dT >= 0 for every sampled model,
    seed, input distribution, loss and output set."""
    rows = []
    for dist in dists:
        for s in seeds:
            params0, dT, x, _ = build(setup, dist, seed_offset=s)
            for loss in losses:
                for outputs in outputs_list:
                    dS = student_step(params0, padd(params0, dT, eps), x, loss, outputs, alpha)
                    quad = pdot(dT, k_times(params0, dT, x, loss, outputs))
                    rows.append({"dist": dist, "seed": s, "loss": loss, "outputs": outputs,
                                 "min_dS_dot_dT": float(pdot(dS, dT).min()), "min_quadratic_form": float(quad.min()),
                                 "min_cos": float(pcos(dS, dT).min()), "n_models": setup.n_models})
    ok = all(r["min_dS_dot_dT"] > 0 and r["min_quadratic_form"] >= 0 for r in rows)
    n = len(rows) * setup.n_models
    return CheckResult(
        f"sign: dS . dT > 0 for all {n} (model, seed, distribution, loss, outputs) cases at eps={eps}",
        ok,
        {"cases": rows, "min_cos_overall": min(r["min_cos"] for r in rows)},
        section="numerical: sign",
    )


def check_cross_init(setup: ToySetup, dist: str = "uniform", loss: str = "kl", outputs: str = "aux", *, eps: float = 1e-3, alpha: float = 1.0) -> CheckResult:
    """Cross-model students (a derangement: student i starts from model (i+1) mod M's init): the
    zeroth-order term dominates and dS . dT takes both signs. PASS means the theory's prediction
    (no sign guarantee; a negative case exists) is borne out, and the first negative case is kept
    as a reproducible counterexample on the real toy MLP."""
    params0, dT, x, _ = build(setup, dist)
    perm = [(i + 1) % setup.n_models for i in range(setup.n_models)]
    start = [p[perm] for p in params0]
    dS = student_step(start, padd(params0, dT, eps), x, loss, outputs, alpha)
    dots = pdot(dS, dT)
    dS_shared = student_step(params0, padd(params0, dT, eps), x, loss, outputs, alpha)
    neg = [i for i in range(setup.n_models) if dots[i] < 0]
    return CheckResult(
        f"cross-init on the toy MLP ({loss}, {outputs}, x~{dist}): dS . dT < 0 for {len(neg)}/{setup.n_models} deranged students (shared init: {int((pdot(dS_shared, dT) > 0).sum())}/{setup.n_models} positive)",
        len(neg) > 0 and bool((pdot(dS_shared, dT) > 0).all()),
        {"cos_cross": pcos(dS, dT).tolist(), "cos_shared": pcos(dS_shared, dT).tolist(),
         "counterexample": None if not neg else {"setup": setup.__dict__, "dist": dist, "loss": loss, "outputs": outputs, "eps": eps, "alpha": alpha,
                                                 "student_model": neg[0], "starts_from_model": perm[neg[0]], "dS_dot_dT": float(dots[neg[0]])}},
        section="numerical: cross-init",
    )
