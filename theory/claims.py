"""What the first-order result says about each claims arm (toymodels/claims_run.py), computed on
the real MNIST MLP (784-256-256-(10+3)) by JVP/VJP in float64, as numerical.k_times does.

Derivation (KL on the aux logits; GD at rate alpha; teacher theta_0 + eps dT). A student that
starts at theta_S != theta_0 has the gradient E_x[J_S^T (p_S - p_T)], with J_S the Jacobian at
theta_S and p_T = p_0 + eps H_0 J_0 dT + O(eps^2) (p_0, H_0 = diag(p_0) - p_0 p_0^T, J_0 at
theta_0). Its first step is therefore

    dS = Z + alpha eps K_S dT + O(eps^2),   Z = -alpha E[J_S^T (p_S - p_0)],   K_S = E[J_S^T H_0 J_0].

- Z, the zeroth-order term, is the pull toward the teacher's INIT function: the same for every
  teacher from theta_0, so it carries no trait, and it vanishes only when f_S = f_0 on D (at
  theta_S = theta_0).
- K_S dT is the trait-carrying term. At theta_S = theta_0, K_S = K = E[J^T H J] is PSD and
  dT . K dT >= 0 (the theorem). At any other start K_S is not symmetric and the theorem says
  nothing about the sign of dT . K_S dT: this module MEASURES it, per model, as the ratio
  a = dT . K_S dT / dT . K dT (1 at the shared init) and as cos(K_S dT, dT).
- An arm of another architecture (other depth, a CNN) has no common parameter space with the
  teacher: the theorem does not apply (no dT to dot K_S dT with); nor does it speak about
  optimizers other than GD beyond the first step (dynamics.py treats Adam's first step). Even the
  one block a CNN shares with the teacher, the copied head, carries no first-order term: the
  teacher's CE moves only the head's 10 digit rows, the aux-only KL only its m aux rows, so
  dT_head . (K_S dT)_head = 0 exactly, for ANY student (the digit rows of every aux-only student's
  head never move: they stay the teacher's init digit rows throughout).
- What is computable for any architecture is the theorem's quantity read in function space: the
  first-order rate at which the trait-carrying term of the student's first step lowers the
  student's OWN digit loss, r = -g_S . K_S dT with g_S = grad of the student's digit CE on the
  teacher's batch at theta_S. At the shared init g_S = -dT, so r = dT . K dT >= 0: the theorem;
  normalized by it, r / dT.K dT = 1 there (heads_prediction: `digit_rate_trait`). Elsewhere the
  sign is measured, not guaranteed; the trait-free pull Z gets the same reading
  (`digit_rate_zeroth`, per unit teacher step).
The prediction the sigma figure draws is a(sigma) for part=all, over the measured transfer
(accuracy above the independent-init student, normalized to the shared-init student's).
This is a first-order, one-step prediction with dT = one gradient of the teacher's loss at theta_0,
whereas the measured students distill for 5 epochs from 5-epoch teachers: a shape to compare, not
a number to match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sublim.rundir import atomic_write_bytes, atomic_write_json, figure_png, read_json
from sublim.stats import mean_ci95
from sublim.theory.numerical import DTYPE, ToySetup, build, hessian_vp, imitation_loss, pcos, pdot, pnorm, student_gradient
from sublim.toymodels import cnn
from sublim.toymodels.claims import ArmSpec, arm_init
from sublim.toymodels.losses import cross_entropy
from sublim.toymodels.config import ToyConfig
from sublim.toymodels.model import forward

SIGMA_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
PART_GRID = (0.1, 0.3, 1.0)  # body only / head only


def teacher_side(theta_0, direction, x) -> torch.Tensor:
    """H_0 J_0 v / n for the aux-logit KL (one JVP at theta_0): the part of K_S v that every start shares."""
    f = lambda *ps: forward(list(ps), x)  # noqa: E731
    z0, u = torch.func.jvp(f, tuple(p.detach() for p in theta_0), tuple(d.detach() for d in direction))
    return hessian_vp(z0, u, "kl", "aux") / x.shape[0]


def cross_k_times(theta_s, theta_0, direction, x, hu: torch.Tensor | None = None, forward_s=forward) -> list[torch.Tensor]:
    """K_S v = E_x[J_S^T H_0 J_0 v] (aux-logit KL) per model: one JVP at theta_0 (or `hu`, its
    result from teacher_side), one VJP at theta_S through the student's own forward_s (the MLP's,
    or cnn.forward: the student may be of another architecture)."""
    hu = teacher_side(theta_0, direction, x) if hu is None else hu
    _, vjp = torch.func.vjp(lambda *ps: forward_s(list(ps), x), *[p.detach() for p in theta_s])
    return list(vjp(hu))


def zeroth_order(theta_s, theta_0, x) -> list[torch.Tensor]:
    """Z / alpha = -E[J_S^T (p_S - p_0)]: the student's step toward the teacher's init function."""
    return [-g for g in student_gradient(theta_s, theta_0, x, "kl", "aux")]


def zeroth_order_any(theta_s, theta_0, x, forward_s) -> list[torch.Tensor]:
    """zeroth_order for a student of any architecture (forward_s)."""
    with torch.no_grad():
        z0 = forward(list(theta_0), x)
    ps = [p.detach().clone().requires_grad_(True) for p in theta_s]
    return [-g for g in torch.autograd.grad(imitation_loss(forward_s(ps, x), z0, "kl", "aux").sum(), ps)]


def digit_gradient(theta_s, xt, yt, forward_s) -> list[torch.Tensor]:
    """g_S: the gradient of the student's own digit CE on the teacher's batch (at the shared init
    this is -dT: numerical.teacher_direction on the same batch)."""
    ps = [p.detach().clone().requires_grad_(True) for p in theta_s]
    return list(torch.autograd.grad(cross_entropy(forward_s(ps, xt)[..., :10], yt).sum(), ps))


def start_of(arm: ArmSpec, cfg: ToyConfig, params0: list[torch.Tensor]) -> list[torch.Tensor]:
    """The claims arm's start for every model of params0 (model i = the toy's model i)."""
    per = [arm_init(arm, cfg, [p[i] for p in params0], i) for i in range(params0[0].shape[0])]
    return [torch.stack([m[j] for m in per]).to(DTYPE) for j in range(len(per[0]))]  # a cnn has its own count


def first_order_terms(arm: ArmSpec, cfg: ToyConfig, params0, dT, x, k0_dot, hu) -> dict:
    theta_s = start_of(arm, cfg, params0)
    kdt = cross_k_times(theta_s, params0, dT, x, hu)
    z = zeroth_order(theta_s, params0, x)
    ratio = (pdot(dT, kdt) / k0_dot).numpy()
    znorm = pnorm(z)
    return {"arm": arm.name, "init": arm.init, "part": arm.part, "sigma": arm.sigma,
            "first_order_ratio": list(mean_ci95(ratio)), "first_order_ratio_per_model": ratio.tolist(),
            "cos_first_order": list(mean_ci95(pcos(kdt, dT).numpy())),
            "cos_zeroth_order": list(mean_ci95(pcos(z, dT).numpy())) if float(znorm.max()) > 0 else [0.0, 0.0],
            # the teacher step eps at which the trait term is as large as the init-pull term
            "eps_crossover": list(mean_ci95((znorm / pnorm(kdt)).numpy()))}


@dataclass(frozen=True)
class SigmaPrediction:
    n_models: int = 8
    n_inputs: int = 256  # uniform-noise inputs behind E_x
    n_teacher: int = 256  # MNIST examples in the teacher's gradient dT
    sigmas: tuple = SIGMA_GRID
    part_sigmas: tuple = PART_GRID
    parts: tuple = ("all", "body", "head")
    extra_arms: bool = True  # also the heads claim's same-depth arms (outside the theorem)


def predict(cfg: ToyConfig, pc: SigmaPrediction = SigmaPrediction()) -> dict:
    """First-order terms of every perturbed (and re-initialized) start, on cfg's architecture."""
    setup = ToySetup(width=cfg.width, depth=cfg.depth, n_aux=cfg.n_aux, n_models=pc.n_models, seed=cfg.seed,
                     n_teacher=pc.n_teacher, n_student=pc.n_inputs, init=cfg.init)
    params0, dT, x, _ = build(setup, "uniform")
    hu = teacher_side(params0, dT, x)
    k0_dot = pdot(dT, cross_k_times(params0, params0, dT, x, hu))
    rows = [{**first_order_terms(ArmSpec("shared"), cfg, params0, dT, x, k0_dot, hu), "part": "all"}]
    for part in pc.parts:
        for s in (pc.sigmas if part == "all" else pc.part_sigmas):
            if s > 0:
                arm = ArmSpec(f"{part}_s{s:g}", init="perturbed", part=part, sigma=s)
                rows.append(first_order_terms(arm, cfg, params0, dT, x, k0_dot, hu))
    extra = []
    if pc.extra_arms:
        for arm in (ArmSpec("independent", init="independent"), ArmSpec("head_shared", init="head_shared"),
                    ArmSpec("body_shared", init="body_shared")):
            extra.append(first_order_terms(arm, cfg, params0, dT, x, k0_dot, hu))
    return {"setup": asdict(setup), "prediction_config": asdict(pc), "rows": rows, "outside_theorem": extra,
            "k0_quadratic_form": list(mean_ci95(k0_dot.numpy()))}


def measured_curve(summary: dict) -> dict:
    """Normalized measured transfer per arm: (acc - acc_independent) / (acc_shared - acc_independent)."""
    rows = {r["arm"]: r for r in summary["rows"]}
    lo, hi = rows["independent"]["mean"], rows["shared"]["mean"]
    out = {}
    for name, r in rows.items():
        out[name] = {"sigma": r["sigma"], "part": r["part"], "init": r["init"],
                     "normalized": (r["mean"] - lo) / (hi - lo), "ci95": r["ci95"] / abs(hi - lo)}
    return out


def write_sigma_prediction(out: Path, cfg: ToyConfig, summary: dict, pc: SigmaPrediction | None = None) -> dict:
    """sigma_prediction.json and sigma.png beside the sigma claim's measured results."""
    if pc is None:
        pc = SigmaPrediction(n_models=min(8, cfg.n_models), n_inputs=128 if cfg.width < 256 else 256)
    path = Path(out) / "sigma_prediction.json"
    pred = None
    if path.exists():  # computed earlier for this config (a rerun, or precompute_prediction): kept
        old = read_json(path)["prediction"]
        if old.get("prediction_config") == json.loads(json.dumps(asdict(pc))) and old.get("toy_config") == cfg.to_dict():
            pred = old
    if pred is None:
        pred = {**predict(cfg, pc), "toy_config": cfg.to_dict()}
    meas = measured_curve(summary) if summary is not None else None
    atomic_write_json(path, {"prediction": pred, "measured_normalized": meas})
    if meas is not None:
        atomic_write_bytes(Path(out) / "sigma.png", sigma_png(pred, meas))
    return pred


def sigma_png(pred: dict, meas: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"all": "tab:blue", "body": "tab:orange", "head": "tab:green"}
    for part in ("all", "body", "head"):
        rows = [r for r in pred["rows"] if r["part"] == part and r["sigma"] > 0]
        if rows:
            s = np.array([r["sigma"] for r in rows])
            m = np.array([r["first_order_ratio"][0] for r in rows])
            h = np.array([r["first_order_ratio"][1] for r in rows])
            ax.plot(s, m, "--", color=colors[part], label=f"theorem, first order: dT.K_S dT / dT.K dT ({part})")
            ax.fill_between(s, m - h, m + h, color=colors[part], alpha=0.12)
        pts = [v for v in meas.values() if v["init"] == "perturbed" and v["part"] == part]
        if pts:
            pts.sort(key=lambda v: v["sigma"])
            ax.errorbar([v["sigma"] for v in pts], [v["normalized"] for v in pts], yerr=[v["ci95"] for v in pts],
                        fmt="o-", color=colors[part], capsize=4, label=f"MNIST measured transfer ({part})")
    ax.set_xscale("log")
    ax.set_ylim(-0.5, 1.5)  # the first-order ratio's CI at sigma 3 spans +-3: clipped, kept in the JSON
    ax.axhline(1, color="grey", lw=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("sigma (x each layer's init std)")
    ax.set_ylabel("relative to the shared init (1) / independent init (0)")
    ax.set_title("student init = theta_0 + sigma noise: first-order prediction vs measured", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig, dpi=110)


# ---------------------------------------------------------------------------------------------
# heads_cnn: the first-order terms of students of any architecture, read in function space.
# ---------------------------------------------------------------------------------------------

HEADS_ARMS = (ArmSpec("shared"), ArmSpec("independent", init="independent"), ArmSpec("head_shared", init="head_shared"),
              ArmSpec("body_shared", init="body_shared"), ArmSpec("cnn_head_copied", init="head_shared", arch="cnn"),
              ArmSpec("cnn_fresh_head", init="independent", arch="cnn"))


@dataclass(frozen=True)
class HeadsPrediction:
    n_models: int = 8
    n_inputs: int = 256  # uniform-noise inputs behind E_x
    n_teacher: int = 256  # MNIST examples in dT and in the student's digit gradient g_S


def digit_rate_terms(arm: ArmSpec, cfg: ToyConfig, params0, dT, x, batch, k0_dot, hu) -> dict:
    """r / dT.K dT with r = -g_S . K_S dT (trait term) and -g_S . Z (init pull), per model; for
    arms in the teacher's parameter space also the parameter-space ratio a = dT.K_S dT / dT.K dT,
    and for every arm the head block of it (0 for the aux-only KL: see the module docstring)."""
    fs = cnn.forward if arm.arch == "cnn" else forward
    theta_s = start_of(arm, cfg, params0)
    kdt = cross_k_times(theta_s, params0, dT, x, hu, fs)
    z = zeroth_order_any(theta_s, params0, x, fs)
    g = digit_gradient(theta_s, *batch, fs)
    row = {"arm": arm.name, "init": arm.init, "arch": arm.arch,
           "digit_rate_trait": list(mean_ci95((-pdot(g, kdt) / k0_dot).numpy())),
           "digit_rate_trait_per_model": (-pdot(g, kdt) / k0_dot).numpy().tolist(),
           "digit_rate_zeroth": list(mean_ci95((-pdot(g, z) / k0_dot).numpy())),
           "head_block_ratio": list(mean_ci95((pdot(dT[-2:], kdt[-2:]) / k0_dot).numpy()))}
    if arm.arch == "mlp":
        row["first_order_ratio"] = list(mean_ci95((pdot(dT, kdt) / k0_dot).numpy()))
    return row


def predict_heads(cfg: ToyConfig, pc: HeadsPrediction = HeadsPrediction()) -> dict:
    setup = ToySetup(width=cfg.width, depth=cfg.depth, n_aux=cfg.n_aux, n_models=pc.n_models, seed=cfg.seed,
                     n_teacher=pc.n_teacher, n_student=pc.n_inputs, init=cfg.init)
    params0, dT, x, batch = build(setup, "uniform")
    hu = teacher_side(params0, dT, x)
    k0_dot = pdot(dT, cross_k_times(params0, params0, dT, x, hu))
    rows = [digit_rate_terms(a, cfg, params0, dT, x, batch, k0_dot, hu) for a in HEADS_ARMS]
    return {"setup": asdict(setup), "prediction_config": asdict(pc), "rows": rows,
            "k0_quadratic_form": list(mean_ci95(k0_dot.numpy()))}


def write_heads_prediction(out: Path, cfg: ToyConfig, pc: HeadsPrediction | None = None) -> dict:
    """heads_prediction.json beside the heads_cnn claim's results (kept when computed for this config)."""
    if pc is None:
        pc = HeadsPrediction(n_models=min(8, cfg.n_models), n_inputs=128 if cfg.width < 256 else 256)
    path = Path(out) / "heads_prediction.json"
    if path.exists():
        old = read_json(path)
        if old.get("prediction_config") == json.loads(json.dumps(asdict(pc))) and old.get("toy_config") == cfg.to_dict():
            return old
    pred = {**predict_heads(cfg, pc), "toy_config": cfg.to_dict()}
    atomic_write_json(path, pred)
    return pred
