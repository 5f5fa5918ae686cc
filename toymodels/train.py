"""The training engine: a whole ensemble of teachers, then all its students, as batched tensors.

For each chunk of models (all of them at once unless memory asks otherwise):
1. reference: evaluate the untrained inits;
2. teachers: cross-entropy on the 10 digit logits, real MNIST, each model its own shuffle;
3. students: all student arms of all models of the chunk train as ONE ensemble of
   (models x arms) networks. Each distillation batch is drawn once, the teachers' logits on it
   are computed once (no grad) and shared by every arm of that model; the aux-only arms take the
   KL over the m auxiliary logits, the all-logit arms over all 10 + m.
4. evaluate every arm on the 10,000 test digits.

Losses are per model and averaged per example (losses.py); their sum gives each model exactly its
own gradient. A non-finite loss is caught at the end of each epoch (one host sync per epoch,
not per step, so the GPU never waits) and raises NumericalError before anything is written.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from sublim.errors import ConfigError, NumericalError
from sublim.progress import progress

from . import losses
from .arms import derangement, student_inits
from .config import AUX_ARMS, ToyConfig
from .inputs import DistillInputs, batch_slice, epoch_orders, make_generator, steps_per_epoch
from .mnist import MNIST, load_mnist
from .model import HandMLP, HandMLPBf16, Workspace, forward, forward_fast, init_params

EVAL_BATCH = 1000
CPU_AUTO_CHUNK = 20


@dataclass
class ToyResult:
    """Per-model numbers of every arm (arrays of length n_models) and how long it took."""

    config: ToyConfig
    accuracy: dict[str, np.ndarray]
    final_loss: dict[str, np.ndarray] = field(default_factory=dict)  # last epoch's mean train loss
    derangement: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
    return dev


def chunk_size(cfg: ToyConfig, device: torch.device) -> int:
    if cfg.chunk_models:
        return min(cfg.chunk_models, cfg.n_models)
    return cfg.n_models if device.type == "cuda" else min(cfg.n_models, CPU_AUTO_CHUNK)


@contextlib.contextmanager
def matmul_mode(cfg: ToyConfig, device: torch.device):
    """TF32 for the duration of a run only (and restored), so exact fp32 stays the default."""
    if cfg.fast_matmul != "tf32":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast(cfg: ToyConfig, device: torch.device):
    if cfg.fast_matmul == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(cfg: ToyConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    # Both are elementwise, so batching models into one tensor keeps them independent.
    # fused: one pass over memory per step instead of ~8 (CPU and CUDA both have it).
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, fused=True)


def check_finite(bad: torch.Tensor, what: str, epoch: int, cfg: ToyConfig) -> None:
    if bool(bad):
        raise NumericalError(f"non-finite {what} loss in epoch {epoch + 1} (lr={cfg.lr}, optimizer={cfg.optimizer}); "
                             "lower lr or check the inputs")


@torch.no_grad()
def evaluate(params: list[torch.Tensor], data: MNIST, n_classes: int, cfg: ToyConfig) -> torch.Tensor:
    """(models,) test accuracy over the digit logits, as a device tensor (no host sync)."""
    correct = torch.zeros(params[0].shape[0], device=params[0].device)
    dev = params[0].device
    n_test = min(cfg.max_test_examples or data.x_test.shape[0], data.x_test.shape[0])
    for s in range(0, n_test, EVAL_BATCH):
        e = min(s + EVAL_BATCH, n_test)
        x = data.x_test[s:e].to(params[0].dtype)
        with autocast(cfg, dev):
            logits = forward(params, x)
        correct += (logits[..., :n_classes].argmax(-1) == data.y_test[s:e]).sum(-1)
    return correct / n_test


def hand_engine(cfg: ToyConfig, device: torch.device) -> bool:
    """The hand-written forward/backward (model.HandMLP) trains on CPU in exact fp32/fp64, and in
    bf16 matmuls with float32 masters (model.HandMLPBf16). CUDA keeps forward_fast + autograd
    (tf32 or bf16 autocast): its GPU numbers in FINDINGS were measured with it."""
    return device.type == "cpu" and cfg.fast_matmul in ("off", "bf16")


def hand_mlp(cfg: ToyConfig, params: list[torch.Tensor], ws: Workspace, name: str, frozen: bool = False) -> HandMLP:
    """The CPU engine for cfg's precision (frozen: weights that do not change, cast to bf16 once)."""
    if cfg.fast_matmul == "bf16":
        return HandMLPBf16(params, ws, name, frozen=frozen)
    return HandMLP(params, ws, name)


def autograd_step(params: list[torch.Tensor], opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()


def train_teachers(cfg: ToyConfig, params: list[torch.Tensor], data: MNIST, chunk_start: int, bar,
                   ws: Workspace | None = None) -> torch.Tensor:
    """Train in place; returns the last epoch's mean CE per model (device tensor). ws: scratch memory
    shared with the other chunks of the run."""
    spec = cfg.spec
    dev = params[0].device
    n_models = params[0].shape[0]
    n_train = data.x_train.shape[0]
    n_ex = min(cfg.max_examples_per_epoch or n_train, n_train)
    steps = steps_per_epoch(n_ex, cfg.batch_size)
    groups = n_models if cfg.independent_batches else 1
    g = make_generator(dev, "teacher-data", cfg.seed, chunk_start)
    opt = make_optimizer(cfg, params)
    ws = ws if ws is not None else Workspace()
    hand = hand_mlp(cfg, params, ws, "teacher") if hand_engine(cfg, dev) else None
    epoch_loss = torch.zeros(n_models, device=dev)
    for epoch in range(cfg.teacher_epochs):
        order = epoch_orders(groups, n_train, n_ex, g, dev)
        epoch_loss = torch.zeros(n_models, device=dev)
        bad = torch.zeros((), dtype=torch.bool, device=dev)
        for step in range(steps):
            idx = order[:, batch_slice(step, n_ex, cfg.batch_size)]
            x_buf = ws.get("teacher.x", (idx.numel(), data.x_train.shape[1]), data.x_train.dtype, dev)
            x = torch.index_select(data.x_train, 0, idx.reshape(-1), out=x_buf)
            x, y = x.view(*idx.shape, -1).to(params[0].dtype), data.y_train[idx]
            if not cfg.independent_batches:
                x, y = x[0], y[0]
            if hand is not None:
                z = hand.forward(x)  # (models, d_out, batch)
                loss, dz_digits = losses.cross_entropy_fm(z[:, :spec.n_classes], y)
                dz = torch.zeros_like(z)  # the aux logits get no gradient from labels
                dz[:, :spec.n_classes] = dz_digits
                hand.backward(dz)
                opt.step()
            else:
                with autocast(cfg, dev):
                    logits = forward_fast(params, x)
                loss = losses.cross_entropy(logits[..., :spec.n_classes].float(), y)
                autograd_step(params, opt, loss)
            bad |= ~torch.isfinite(loss).all()
            epoch_loss += loss.detach() * (idx.shape[1] / n_ex)
            bar.update(1)
        check_finite(bad, "teacher", epoch, cfg)
    return epoch_loss


def students_kl_fm(zs: torch.Tensor, zt: torch.Tensor, aux_arm: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (groups, k) and d loss / d zs of every student arm, feature-major.

    zs (groups, k, d_out, b): arm a of group g; zt (groups, 1, d_out, b): that group's teacher,
    broadcast to its arms (no copy per arm); aux_arm (k,) bool: the arm distills on the aux logits only."""
    n = n_classes

    def aux_only():  # KL over the aux logits; the digit logits get no gradient
        loss, d_aux = losses.distill_kl_fm(zs[..., n:, :], zt[..., n:, :])
        return loss, torch.cat([torch.zeros_like(zs[..., :n, :]), d_aux], dim=-2)

    if bool(aux_arm.all()):
        return aux_only()
    loss, dz = losses.distill_kl_fm(zs, zt)
    if bool(aux_arm.any()):
        loss_aux, dz_aux = aux_only()
        loss = torch.where(aux_arm, loss_aux, loss)
        dz = torch.where(aux_arm[:, None, None], dz_aux, dz)
    return loss, dz


def train_students(cfg: ToyConfig, students: list[torch.Tensor], teachers: list[torch.Tensor], data: MNIST,
                   chunk_start: int, bar, ws: Workspace | None = None) -> torch.Tensor:
    """Distill all student arms of a chunk as one ensemble; returns last-epoch mean KL per student."""
    dev = students[0].device
    n_groups = teachers[0].shape[0]
    k = len(cfg.student_arms)
    n_students = students[0].shape[0]
    n_train = data.x_train.shape[0]
    n_ex = cfg.max_examples_per_epoch or n_train
    if cfg.distill_input in ("mnist", "shuffled_pixels"):
        n_ex = min(n_ex, n_train)
    steps = steps_per_epoch(n_ex, cfg.batch_size)
    g = make_generator(dev, "distill-data", cfg.seed, chunk_start)
    opt = make_optimizer(cfg, students)
    ws = ws if ws is not None else Workspace()
    step_fn = (HandStudentStep(cfg, students, teachers, opt, ws) if hand_engine(cfg, dev)
               else AutogradStudentStep(cfg, students, teachers, opt))
    epoch_loss = torch.zeros(n_students, device=dev)
    for epoch in range(cfg.distill_epochs):
        if not cfg.distill_resample:  # the same fixed set every epoch: replay the same stream
            g = make_generator(dev, "distill-data", cfg.seed, chunk_start)
        inputs = DistillInputs(cfg.distill_input, data.x_train, n_groups, n_ex, cfg.batch_size, g,
                               cfg.independent_batches, students[0].dtype, ws)
        epoch_loss = torch.zeros(n_students, device=dev)
        bad = torch.zeros((), dtype=torch.bool, device=dev)
        for step in range(steps):
            x = inputs.batch(step)
            loss = step_fn(x, n_groups, k)  # forward, backward and optimizer step
            bad |= ~torch.isfinite(loss).all()
            epoch_loss += loss.detach() * (x.shape[-2] / n_ex)
            bar.update(1)
        check_finite(bad, "distillation", epoch, cfg)
    return epoch_loss


class HandStudentStep:
    """One distillation step with the gradients by hand (model.HandMLP), optimizer included."""

    def __init__(self, cfg: ToyConfig, students: list[torch.Tensor], teachers: list[torch.Tensor], opt, ws: Workspace):
        dev = students[0].device
        self.opt = opt
        self.n_classes = cfg.spec.n_classes
        self.aux_arm = torch.tensor([a in AUX_ARMS for a in cfg.student_arms], device=dev)
        self.students = hand_mlp(cfg, students, ws, "student")
        self.teachers = hand_mlp(cfg, teachers, ws, "distill_teacher", frozen=True)

    def __call__(self, x: torch.Tensor, n_groups: int, k: int) -> torch.Tensor:
        zt = self.teachers.forward(x)  # once per batch, shared by all arms
        zs = self.students.forward(x)
        d_out, b = zs.shape[1:]
        loss, dz = students_kl_fm(zs.view(n_groups, k, d_out, b), zt.view(n_groups, 1, d_out, b),
                                  self.aux_arm, self.n_classes)
        self.students.backward(dz.view(n_groups * k, d_out, b))
        self.opt.step()
        return loss.view(-1)


class AutogradStudentStep:
    """One distillation step with forward_fast + autograd (CUDA, bf16 autocast), optimizer included."""

    def __init__(self, cfg: ToyConfig, students: list[torch.Tensor], teachers: list[torch.Tensor], opt):
        dev = students[0].device
        self.cfg, self.students, self.teachers, self.opt = cfg, students, teachers, opt
        self.is_aux = torch.tensor([a in AUX_ARMS for a in cfg.student_arms], device=dev).repeat(teachers[0].shape[0])
        self.any_aux, self.any_all = bool(self.is_aux.any()), not bool(self.is_aux.all())

    def __call__(self, x: torch.Tensor, n_groups: int, k: int) -> torch.Tensor:
        cfg, n = self.cfg, self.cfg.spec.n_classes
        dev = x.device
        with torch.no_grad(), autocast(cfg, dev):
            t_logits = forward_fast(self.teachers, x).float()  # once per batch, shared by all arms
        t_logits = t_logits.repeat_interleave(k, dim=0)  # (n_students, b, d_out), small
        with autocast(cfg, dev):
            s_logits = forward_fast(self.students, x)
        s_logits = s_logits.float()
        if self.any_aux and self.any_all:
            loss = torch.where(self.is_aux, losses.distill_kl(s_logits[..., n:], t_logits[..., n:]),
                               losses.distill_kl(s_logits, t_logits))
        elif self.any_aux:
            loss = losses.distill_kl(s_logits[..., n:], t_logits[..., n:])
        else:
            loss = losses.distill_kl(s_logits, t_logits)
        autograd_step(self.students, self.opt, loss)
        return loss


def total_steps(cfg: ToyConfig) -> int:
    n_ex = cfg.max_examples_per_epoch or 60000
    t = steps_per_epoch(min(n_ex, 60000), cfg.batch_size) * cfg.teacher_epochs if cfg.trains_teachers else 0
    if cfg.student_arms:
        d_ex = min(n_ex, 60000) if cfg.distill_input in ("mnist", "shuffled_pixels") else n_ex
        t += steps_per_epoch(d_ex, cfg.batch_size) * cfg.distill_epochs
    return t


def run_experiment(cfg: ToyConfig, data: MNIST | None = None, *, desc: str = "toy") -> ToyResult:
    """Train and evaluate every requested arm for cfg.n_models models."""
    t_start = time.perf_counter()
    dev = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    data = (data or load_mnist(cfg.mnist_path or None)).to(dev)
    N, spec = cfg.n_models, cfg.spec
    perm = derangement(N, cfg.seed) if any(a.startswith("cross") for a in cfg.arms) else []
    acc: dict[str, list[torch.Tensor]] = {a: [] for a in cfg.arms}
    final: dict[str, list[torch.Tensor]] = {}
    phase = {"init": 0.0, "teacher": 0.0, "student": 0.0, "eval": 0.0}
    C = chunk_size(cfg, dev)
    chunks = [(s, min(s + C, N)) for s in range(0, N, C)]
    ws = Workspace()  # scratch buffers of the training steps, reused by every chunk
    clock = _PhaseClock(phase, dev)

    with matmul_mode(cfg, dev), progress(total=total_steps(cfg) * len(chunks), desc=desc, unit="step") as bar:
        inits = init_params(spec, N, seed=cfg.seed, device=dev, dtype=dtype)
        clock.lap("init")
        for c0, c1 in chunks:
            ref = [p[c0:c1] for p in inits]
            if "reference" in cfg.arms:
                acc["reference"].append(evaluate(ref, data, spec.n_classes, cfg))
                clock.lap("eval")
            if not cfg.trains_teachers:
                continue
            teachers = [p.clone().requires_grad_(True) for p in ref]
            bar.set_description(f"{desc}: teachers {c0}-{c1 - 1}")
            final.setdefault("teacher", []).append(train_teachers(cfg, teachers, data, c0, bar, ws))
            teachers = [p.detach() for p in teachers]
            clock.lap("teacher")
            if "teacher" in cfg.arms:
                acc["teacher"].append(evaluate(teachers, data, spec.n_classes, cfg))
                clock.lap("eval")
            arms = cfg.student_arms
            if not arms:
                continue
            students = [p.requires_grad_(True) for p in
                        student_inits(cfg, list(range(c0, c1)), perm, inits, device=dev, dtype=dtype)]
            bar.set_description(f"{desc}: students {c0}-{c1 - 1}")
            s_loss = train_students(cfg, students, teachers, data, c0, bar, ws).view(c1 - c0, len(arms))
            clock.lap("student")
            s_acc = evaluate([p.detach() for p in students], data, spec.n_classes, cfg).view(c1 - c0, len(arms))
            for j, a in enumerate(arms):
                acc[a].append(s_acc[:, j])
                final.setdefault(a, []).append(s_loss[:, j])
            del students
            clock.lap("eval")
    return ToyResult(config=cfg, accuracy={a: torch.cat(v).cpu().double().numpy() for a, v in acc.items()},
                     final_loss={a: torch.cat(v).cpu().double().numpy() for a, v in final.items()},
                     derangement=perm, wall_s=time.perf_counter() - t_start, phase_s=phase)


class _PhaseClock:
    """Adds the time since the last lap to a phase's total (after the GPU has caught up)."""

    def __init__(self, phase: dict, dev: torch.device):
        self.phase, self.dev, self.t0 = phase, dev, time.perf_counter()

    def lap(self, name: str) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        now = time.perf_counter()
        self.phase[name] += now - self.t0
        self.t0 = now
