"""Predictions researchers can use, compared with simulation, and what happens over many steps.

predict_vs_simulate: for each input distribution and each choice of distilled outputs (m aux
logits, or all), the theory's cos(dS, dT) and first-order change of the teacher's loss for the
student, from a large sample of D, next to the values measured on the first real step of a toy
run (a fresh minibatch, finite eps and alpha), for GD and for Adam (the experiments' optimizer;
its first step is lr * sign(gradient), so the prediction becomes lr * sign(K dT)).

multistep: the teacher trains T steps; the student distills for n steps. Per step: alignment
cos(theta_S - theta0, theta_T - theta0), the teacher's loss on held-out digits for the student,
and (GD) the linearized prediction theta_n - theta0 = [I - (I - alpha K)^n](theta_T - theta0)
(run on the same minibatches as the real student, so the gap between the two is the nonlinearity
of the model and of the loss, not sampling noise).
It reports where the one-step guarantee stops describing what happens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from sublim.seeding import torch_generator
from sublim.stats import mean_ci95
from sublim.theory.numerical import (
    DTYPE, ToySetup, build, k_times, kink_onset, padd, pcos, pdot, sample_inputs, student_gradient,
    teacher_batch, teacher_direction, teacher_loss,
)
from sublim.toymodels.model import forward, init_params


def _ci(t: torch.Tensor) -> list[float]:
    return list(mean_ci95(t.detach().numpy().tolist()))


def adam_steps(params, grad_fn, lr: float, n: int, callback=None) -> list[torch.Tensor]:
    """n steps of torch.optim.Adam (default betas) from params; grad_fn(params) -> grads."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = torch.optim.Adam(ps, lr=lr)
    for i in range(n):
        opt.zero_grad()
        for p, g in zip(ps, grad_fn([q.detach() for q in ps])):
            p.grad = g.clone()
        opt.step()
        if callback is not None:
            callback(i + 1, [q.detach() for q in ps])
    return [q.detach() for q in ps]


@dataclass(frozen=True)
class PredictConfig:
    loss: str = "kl"
    eps_gd: float = 0.05  # teacher's GD step size
    alpha_gd: float = 1.0  # student's GD step size
    lr_adam: float = 3e-4  # the paper's Adam rate, both teacher and student
    n_predict: int = 1024  # samples of D behind the theory's expectation
    n_sim: int = 256  # the simulated student's minibatch (independent of the above)


def predict_vs_simulate(setup: ToySetup, dists=("uniform", "gaussian", "mnist"), variants=(("aux", 3), ("aux", 10), ("all", 3)), cfg: PredictConfig = PredictConfig()) -> list[dict]:
    rows = []
    for dist in dists:
        for outputs, m in variants:
            su = replace(setup, n_aux=m)
            params0, dT, _, (xt, yt) = build(su, dist)
            g = torch_generator("theory-predict", su.seed)
            x_pred = sample_inputs(dist, cfg.n_predict, g)
            x_sim = sample_inputs(dist, cfg.n_sim, g)
            lt0 = teacher_loss(params0, xt, yt)
            # GD: dS ~ alpha eps K dT, dL_T ~ -alpha eps dT.K dT
            kdt = k_times(params0, dT, x_pred, cfg.loss, outputs)
            pred_cos = pcos(kdt, dT)
            pred_dlt = -cfg.alpha_gd * cfg.eps_gd * pdot(dT, kdt)
            dS = [-cfg.alpha_gd * t for t in student_gradient(params0, padd(params0, dT, cfg.eps_gd), x_sim, cfg.loss, outputs)]
            meas_cos = pcos(dS, dT)
            meas_dlt = teacher_loss(padd(params0, dS), xt, yt) - lt0
            # The sign claim is first order: measure it with a step inside every model's smooth
            # regime on x_sim (half the first ReLU flip), where the theorem's Taylor expansion holds.
            # That eps is small (7e-8 .. 7e-6 for the default setups) but the theory runs in float64:
            # the teacher-student output gap ~ eps * |J dT| stays >= 1e7 ulps above rounding.
            eps_sign = min(cfg.eps_gd, 0.5 * float(kink_onset(params0, dT, x_sim).min()))
            dS_small = student_gradient(params0, padd(params0, dT, eps_sign), x_sim, cfg.loss, outputs)
            sign_cos = pcos([-t for t in dS_small], dT)
            # m = 1 aux logit: softmax over one logit is constant, H = diag(1) - 1 = 0, so the theory
            # predicts dS = 0 exactly (no signal at all); the norms let the report check that.
            rows.append(dict(dist=dist, outputs=outputs, m=m, optimizer="gd", pred_cos=_ci(pred_cos), meas_cos=_ci(meas_cos),
                             pred_dLT=_ci(pred_dlt), meas_dLT=_ci(meas_dlt), frac_meas_cos_positive=float((meas_cos > 0).double().mean()),
                             eps_sign=eps_sign, frac_sign_cos_positive=float((sign_cos > 0).double().mean()),
                             pred_norm_max=float(torch.sqrt(pdot(kdt, kdt)).max()), meas_norm_max=float(torch.sqrt(pdot(dS, dS)).max())))
            # Adam, first step: the teacher moves by Delta = -lr sign(grad L_T); the student's
            # gradient is ~ -K Delta, so its first step is ~ lr sign(K Delta).
            tgrad = lambda ps: [-t for t in teacher_direction(ps, xt, yt)]  # noqa: E731
            theta_T = adam_steps(params0, tgrad, cfg.lr_adam, 1)
            delta = [a - b for a, b in zip(theta_T, params0)]
            kd = k_times(params0, delta, x_pred, cfg.loss, outputs)
            pred_step = [cfg.lr_adam * torch.sign(t) for t in kd]
            sgrad = lambda ps: student_gradient(ps, theta_T, x_sim, cfg.loss, outputs)  # noqa: E731
            theta_S = adam_steps(params0, sgrad, cfg.lr_adam, 1)
            dS = [a - b for a, b in zip(theta_S, params0)]
            rows.append(dict(dist=dist, outputs=outputs, m=m, optimizer="adam", pred_cos=_ci(pcos(pred_step, delta)), meas_cos=_ci(pcos(dS, delta)),
                             pred_dLT=_ci(teacher_loss(padd(params0, pred_step), xt, yt) - lt0), meas_dLT=_ci(teacher_loss(theta_S, xt, yt) - lt0),
                             frac_meas_cos_positive=float((pcos(dS, delta) > 0).double().mean())))
    return rows


@dataclass(frozen=True)
class MultistepConfig:
    dist: str = "uniform"
    loss: str = "kl"
    outputs: str = "aux"
    teacher_steps: tuple = (1, 30)
    student_steps: int = 40
    lr_gd_teacher: float = 0.05
    lr_gd_student: float = 1.0
    lr_adam: float = 1e-3
    batch: int = 256
    n_eval: int = 1000


def multistep(setup: ToySetup, cfg: MultistepConfig = MultistepConfig()) -> list[dict]:
    """Curves of alignment and teacher loss over student steps, per optimizer and teacher length."""
    params0 = init_params(setup.spec(), setup.n_models, seed=setup.seed, dtype=DTYPE)
    from sublim.theory.numerical import _mnist

    data = _mnist()
    x_eval, y_eval = data.x_test[: cfg.n_eval].to(DTYPE), data.y_test[: cfg.n_eval]
    lt0 = teacher_loss(params0, x_eval, y_eval)
    out = []
    for opt in ("gd", "adam"):
        for T in cfg.teacher_steps:
            g = torch_generator("theory-multistep", setup.seed)
            tb = [teacher_batch(cfg.batch, g) for _ in range(T)]
            tgrad_i = iter(range(T))

            def tgrad(ps):
                xt, yt = tb[next(tgrad_i)]
                return [-t for t in teacher_direction(ps, xt, yt)]

            if opt == "gd":
                theta_T = params0
                for _ in range(T):
                    theta_T = padd(theta_T, tgrad(theta_T), -cfg.lr_gd_teacher)
            else:
                theta_T = adam_steps(params0, tgrad, cfg.lr_adam, T)
            delta = [a - b for a, b in zip(theta_T, params0)]
            xs = [sample_inputs(cfg.dist, cfg.batch, g) for _ in range(cfg.student_steps)]
            curve = {"cos": [], "dLT": [], "acc": [], "cos_linearized": []}
            lin = [torch.zeros_like(p) for p in params0]

            def record(n, ps):
                nonlocal lin
                ds = [a - b for a, b in zip(ps, params0)]
                curve["cos"].append(_ci(pcos(ds, delta)))
                curve["dLT"].append(_ci(teacher_loss(ps, x_eval, y_eval) - lt0))
                curve["acc"].append(_ci((forward(ps, x_eval)[..., :10].argmax(-1) == y_eval).double().mean(1)))
                if opt == "gd":  # c_{n+1} = c_n + alpha K_n (Delta - c_n), K_n frozen at theta0, same minibatch as the real step
                    lin = padd(lin, k_times(params0, [d - c for d, c in zip(delta, lin)], xs[n - 1], cfg.loss, cfg.outputs), cfg.lr_gd_student)
                    curve["cos_linearized"].append(_ci(pcos(lin, delta)))
                curve.setdefault("min_cos", []).append(float(pcos(ds, delta).min()))

            step_i = iter(range(cfg.student_steps))
            sgrad = lambda ps: student_gradient(ps, theta_T, xs[next(step_i)], cfg.loss, cfg.outputs)  # noqa: E731
            if opt == "gd":
                ps = params0
                for n in range(cfg.student_steps):
                    ps = padd(ps, sgrad(ps), -cfg.lr_gd_student)
                    record(n + 1, ps)
            else:
                adam_steps(params0, sgrad, cfg.lr_adam, cfg.student_steps, callback=record)
            out.append(dict(optimizer=opt, teacher_steps=T, teacher_move_norm=float(np.mean(torch.sqrt(pdot(delta, delta)).numpy())), curve=curve,
                            **_milestones(curve), final_cos=curve["cos"][-1], final_dLT=curve["dLT"][-1], final_acc=curve["acc"][-1],
                            config={**cfg.__dict__, "setup": setup.__dict__}))
    return out


def _milestones(curve: dict) -> dict:
    """The first student step (1-based) at which a curve crosses each line the theorem draws."""
    first_negative = next((i + 1 for i, v in enumerate(curve["min_cos"]) if v < 0), None)
    dlt = [c[0] for c in curve["dLT"]]
    first_loss_up = next((i + 1 for i, v in enumerate(dlt) if v > 0), None)
    diverge = None
    if curve["cos_linearized"]:
        diverge = next((i + 1 for i, (a, b) in enumerate(zip(curve["cos"], curve["cos_linearized"]))
                        if abs(a[0] - b[0]) > 0.1 * max(abs(b[0]), 1e-12)), None)
    return dict(first_step_any_model_cos_negative=first_negative, first_step_mean_teacher_loss_up=first_loss_up,
                first_step_linearized_off_by_10pct=diverge)
