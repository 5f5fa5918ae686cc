"""The claims matrix: each published account of subliminal learning as one controlled MNIST arm set.

A claim is a list of student arms that all distill from the SAME trained teachers (paper settings
from ToyConfig): the arms differ only in where the student starts, its architecture or its
optimizer, so every comparison is paired model by model (student i of every arm imitates teacher
i on the same noise stream). What an arm can change:

- init: `shared` (the teacher's init, the paper's student), `independent` (a fresh init),
  `head_shared` (fresh hidden layers, the teacher's init output head copied: Brockers et al.),
  `body_shared` (the teacher's init hidden layers, a fresh head), `perturbed` (the teacher's init
  plus sigma x the layer's init std of Gaussian noise on the weights of `part`: all | body | head);
- depth: a student of another depth (same width, so the teacher's head still fits) whose hidden
  layers are fresh and whose head is copied (init head_shared);
- optimizer: Adam (torch, fused) or SGD with per-arm lr and momentum (ModelwiseSGD: plain
  elementwise updates, no adaptive state), so one ensemble can hold a whole lr grid.

The "fresh" parts of model i come from one generator per model, shared by every arm, and the
perturbation noise of model i is one draw for all layers, of which each arm applies its part:
arms differ only in what they say they differ in (tested). Every step records the theorem's
alignment of the student's own update with its teacher's, (theta_S(t) - theta_S(0)) . (theta_T -
theta_0), and its cosine, per model. Arms that share depth and optimizer train as one batched
ensemble (one (k*width, 784) first-layer matmul per teacher), like the toy's six arms.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from sublim.errors import ConfigError
from sublim.progress import progress

from . import cnn, losses
from .arms import PERTURB_OFFSET, init_std
from .config import ToyConfig
from .inputs import DistillInputs, make_generator, steps_per_epoch
from .mnist import MNIST
from .model import HandMLP, MLPSpec, Workspace, forward_fast, init_params, model_generator
from .train import check_finite, evaluate, hand_engine, resolve_device, students_kl_fm, train_teachers

# Fresh parts of a claims student (independent / re-initialized body or head) come from model
# indices far above any ensemble and above arms.py's offsets, so they coincide with no teacher.
FRESH_OFFSET = 3_000_000
INITS = ("shared", "independent", "head_shared", "body_shared", "perturbed")
PARTS = ("all", "body", "head")
OPTIMIZERS = ("adam", "sgd")
ARCHS = ("mlp", "cnn")
# Fields added after the first claims ran: written to config.json and the arm files only when not
# at their default, so every earlier claim's stored spec is still exactly what it asks for now
# (its run directory resumes, and its committed results stay what its arms produce).
LATER_FIELDS = {"arch": "mlp", "match": "", "cap_factor": 0}


@dataclass(frozen=True)
class ArmSpec:
    """One student arm of a claim (defaults: the paper's aux-only student)."""

    name: str
    init: str = "shared"
    part: str = "all"  # perturbed: which weights get noise
    sigma: float = 0.0  # perturbed: noise std in units of each layer's init std
    depth: int = 0  # 0 = the teacher's depth; another depth needs init head_shared or independent
    optimizer: str = "adam"
    lr: float = 0.0  # 0 = the base config's lr
    momentum: float = 0.0  # sgd only
    outputs: str = "aux"  # aux (the m aux logits) | all (10 + m)
    arch: str = "mlp"  # mlp | cnn (cnn.py; init head_shared or independent: nothing else to copy)
    # match: the claim's arm whose per-model aux-KL reduction this arm trains to (then stops);
    # cap_factor: its epoch cap, as a multiple of the base distill_epochs (the paper's 5)
    match: str = ""
    cap_factor: int = 0

    def __post_init__(self):
        if self.init not in INITS:
            raise ConfigError(f"arm {self.name}: init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.part not in PARTS:
            raise ConfigError(f"arm {self.name}: part must be one of {', '.join(PARTS)}, got {self.part!r}")
        if (self.init == "perturbed") != (self.sigma > 0) or not math.isfinite(self.sigma):
            raise ConfigError(f"arm {self.name}: sigma > 0 exactly when init=perturbed (got init={self.init}, sigma={self.sigma})")
        if self.depth < 0 or self.lr < 0 or not (0 <= self.momentum < 1):
            raise ConfigError(f"arm {self.name}: depth, lr >= 0 and momentum in [0, 1) (got {self.depth}, {self.lr}, {self.momentum})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"arm {self.name}: optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.momentum:
            raise ConfigError(f"arm {self.name}: momentum is for sgd (Adam has its own betas)")
        if self.outputs not in ("aux", "all"):
            raise ConfigError(f"arm {self.name}: outputs must be aux or all, got {self.outputs!r}")
        if self.arch not in ARCHS:
            raise ConfigError(f"arm {self.name}: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "cnn" and (self.init not in ("head_shared", "independent") or self.depth):
            raise ConfigError(f"arm {self.name}: a cnn student has only a head to copy: init head_shared or "
                              f"independent, no depth (got init={self.init}, depth={self.depth})")
        if bool(self.match) != (self.cap_factor > 0) or self.cap_factor < 0:
            raise ConfigError(f"arm {self.name}: match (an arm name) and cap_factor >= 1 go together "
                              f"(got match={self.match!r}, cap_factor={self.cap_factor})")
        if self.match and self.optimizer != "sgd":
            # a stopped model is frozen by a zero lr, which ModelwiseSGD has per model; Adam does not
            raise ConfigError(f"arm {self.name}: match (train to a KL reduction, then stop) is for sgd arms")

    def to_dict(self) -> dict:
        """The stored spec (config.json, arm files, summary rows): later fields only when set."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}

    def student_depth(self, cfg: ToyConfig) -> int:
        return self.depth or cfg.depth

    def check_against(self, cfg: ToyConfig) -> None:
        if self.student_depth(cfg) != cfg.depth and self.init not in ("head_shared", "independent"):
            raise ConfigError(f"arm {self.name}: a student of depth {self.depth} (teacher {cfg.depth}) has no "
                              f"{self.init} init to copy; use init head_shared or independent")
        if self.arch == "cnn" and cfg.fast_matmul != "off":
            raise ConfigError(f"arm {self.name}: a cnn student trains with autograd in cfg's dtype; use fast_matmul off")


# ---------------------------------------------------------------------------------------------
# Where each arm starts.
# ---------------------------------------------------------------------------------------------


def perturbation(spec: MLPSpec, seed: int, model: int) -> list[torch.Tensor]:
    """Model `model`'s unit noise, one (d_out, d_in) float64 tensor per layer, scaled by the layer's
    init std. Drawn exactly as arms.student_inits draws the toy's `perturbed` students (same
    generator, same order), so part=all at sigma s is the toy's student_init=perturbed (tested)."""
    g = model_generator(seed, PERTURB_OFFSET + model)
    return [torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) * init_std(spec, fan_in)
            for fan_in, fan_out in spec.layer_dims]


def arm_init(arm: ArmSpec, cfg: ToyConfig, teacher_init: list[torch.Tensor], model: int) -> list[torch.Tensor]:
    """The initial parameters of arm's student of teacher `model` (one model, float64 on CPU).

    teacher_init: that teacher's own init, [W0, b0, ...] without the models axis."""
    spec = replace(cfg.spec, depth=arm.student_depth(cfg))
    own = [p.detach().to("cpu", torch.float64).clone() for p in teacher_init]
    if arm.init == "shared":
        return own
    fresh = [p[0] for p in init_params(spec, [(cfg.seed, FRESH_OFFSET + model)], dtype=torch.float64)]
    if arm.arch == "cnn":  # its own fresh body; the teacher's init head, or the MLP arms' fresh head
        return cnn.fresh_body(cfg.spec, cfg.seed, model) + (own[-2:] if arm.init == "head_shared" else fresh[-2:])
    if arm.init == "independent":
        return fresh
    if arm.init == "head_shared":  # fresh body (any depth), the teacher's init head
        return fresh[:-2] + own[-2:]
    if arm.init == "body_shared":
        return own[:-2] + fresh[-2:]
    noise = perturbation(spec, cfg.seed, model)
    n_layers = len(noise)
    for layer, eps in enumerate(noise):
        is_head = layer == n_layers - 1
        if arm.part == "all" or (arm.part == "head") == is_head:
            own[2 * layer] += arm.sigma * eps
    return own


def group_inits(arms: list[ArmSpec], cfg: ToyConfig, teacher_init: list[torch.Tensor], models: list[int],
                device, dtype) -> list[torch.Tensor]:
    """Group-major ensemble: model g*k + a is arm a's student of teacher models[g]."""
    per_model = [[arm_init(a, cfg, [p[m] for p in teacher_init], m) for a in arms] for m in models]
    n_tensors = len(per_model[0][0])
    return [torch.stack([per_model[g][a][j] for g in range(len(models)) for a in range(len(arms))])
            .to(device=device, dtype=dtype).contiguous() for j in range(n_tensors)]


# ---------------------------------------------------------------------------------------------
# Optimizers.
# ---------------------------------------------------------------------------------------------


class ModelwiseSGD:
    """SGD with its own lr and momentum per model of a batched ensemble (torch.optim.SGD's update,
    dampening 0, no Nesterov: buf = mu buf + g; p -= lr buf; with mu = 0, p -= lr g exactly).
    No adaptive state: the only state is the momentum buffer, and only when some momentum > 0."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, momentum: torch.Tensor):
        self.params = params
        self.lr, self.momentum = lr, momentum
        self.state: dict[int, torch.Tensor] = {}
        self.uses_momentum = bool((momentum > 0).any())

    def step(self) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                shape = (-1,) + (1,) * (p.dim() - 1)
                g = p.grad
                if self.uses_momentum:
                    buf = self.state.get(i)
                    if buf is None:
                        buf = self.state[i] = torch.zeros_like(p)
                    buf.mul_(self.momentum.view(shape)).add_(g)
                    g = buf
                p.sub_(self.lr.view(shape) * g)


def group_optimizer(arms: list[ArmSpec], cfg: ToyConfig, params: list[torch.Tensor], n_groups: int):
    kinds = {a.optimizer for a in arms}
    if len(kinds) != 1:
        raise ValueError("one ensemble, one optimizer kind")
    if kinds == {"adam"}:
        lrs = {a.lr or cfg.lr for a in arms}
        if len(lrs) != 1:
            raise ValueError("Adam arms of one ensemble share their lr")
        return torch.optim.Adam(params, lr=lrs.pop(), fused=True)
    dev, dtype = params[0].device, params[0].dtype
    lr = torch.tensor([a.lr or cfg.lr for a in arms], device=dev, dtype=dtype).repeat(n_groups)
    mom = torch.tensor([a.momentum for a in arms], device=dev, dtype=dtype).repeat(n_groups)
    return ModelwiseSGD(params, lr, mom)


def ensemble_key(arm: ArmSpec, cfg: ToyConfig) -> tuple:
    """Arms with equal keys train as one batched ensemble."""
    return (arm.student_depth(cfg), arm.arch, arm.optimizer, (arm.lr or cfg.lr) if arm.optimizer == "adam" else 0.0,
            arm.cap_factor)


# ---------------------------------------------------------------------------------------------
# Training one ensemble of arms, with the per-step alignment.
# ---------------------------------------------------------------------------------------------


class Alignment:
    """Per step and model: (theta_S(t) - theta_S(0)) . Delta_T and its cosine, Delta_T = theta_T -
    theta_0 of the model's teacher. Accumulated on the device, read once at the end.

    The rows live in buffers allocated once for all `steps`: appending three small tensors per step
    between each step's large temporaries (the displacement, ~the students' size) kept glibc from
    returning the freed temporaries' heap, and a 100-epoch run grew by ~17 MB a step (10 GB, killed
    by the OOM killer, 2026-12-03)."""

    def __init__(self, students: list[torch.Tensor], delta_t: list[torch.Tensor], k: int, same_shape: bool,
                 steps: int):
        self.start = [p.detach().clone() for p in students]
        self.delta = [d.repeat_interleave(k, dim=0) for d in delta_t] if same_shape else None
        self.delta_norm = _norm(self.delta) if same_shape else None
        n, like = students[0].shape[0], students[0]
        self.rows = {name: like.new_empty((steps, n)) for name in (("norm", "dot", "cos") if same_shape else ("norm",))}
        self.t = 0

    @torch.no_grad()
    def record(self, students: list[torch.Tensor]) -> None:
        d = [p - s for p, s in zip(students, self.start)]
        n = _norm(d)
        self.rows["norm"][self.t] = n
        if self.delta is not None:  # another depth: no common parameter space, no dot product
            dot = sum((a * b).flatten(1).sum(1) for a, b in zip(d, self.delta))
            self.rows["dot"][self.t] = dot
            self.rows["cos"][self.t] = dot / (n * self.delta_norm).clamp_min(torch.finfo(n.dtype).tiny)
        self.t += 1

    def arrays(self) -> dict[str, np.ndarray]:
        names = {"norm": "update_norm", "dot": "dot", "cos": "cos"}
        return {names[k]: v[:self.t].cpu().double().numpy() for k, v in self.rows.items()}  # each (steps, n_students)


def _norm(ps: list[torch.Tensor]) -> torch.Tensor:
    return sum((p * p).flatten(1).sum(1) for p in ps).sqrt()


class StudentStep:
    """Forward, KL on each arm's outputs, backward, optimizer step: the hand engine on CPU fp32/fp64
    (MLP students), forward_fast / cnn.forward + autograd elsewhere (CUDA, bf16, CNN students)."""

    def __init__(self, cfg, arms, students, teachers, opt, ws, dev):
        self.cfg, self.students, self.opt = cfg, students, opt
        self.k = len(arms)
        self.aux = torch.tensor([a.outputs == "aux" for a in arms], device=dev)
        is_cnn = arms[0].arch == "cnn"
        self.hand = hand_engine(cfg, dev) and not is_cnn
        self.student_forward = cnn.forward if is_cnn else forward_fast
        if self.hand:
            self.s_net, self.t_net = HandMLP(students, ws, "claim_student"), HandMLP(teachers, ws, "claim_teacher")
        self.teachers = teachers

    def __call__(self, x: torch.Tensor, n_groups: int) -> torch.Tensor:
        n, k = self.cfg.spec.n_classes, self.k
        if self.hand:
            zt, zs = self.t_net.forward(x), self.s_net.forward(x)
            d_out, b = zs.shape[1:]
            loss, dz = students_kl_fm(zs.view(n_groups, k, d_out, b), zt.view(n_groups, 1, d_out, b), self.aux, n)
            self.s_net.backward(dz.view(n_groups * k, d_out, b))
            self.opt.step()
            return loss.reshape(-1)
        with torch.no_grad():
            zt = forward_fast(self.teachers, x).float().repeat_interleave(k, dim=0)
        zs = self.student_forward(self.students, x).float()
        aux = self.aux.repeat(n_groups)
        loss = torch.where(aux, losses.distill_kl(zs[..., n:], zt[..., n:]), losses.distill_kl(zs, zt))
        for p in self.students:
            p.grad = None
        loss.sum().backward()
        self.opt.step()
        return loss.detach()


class MatchStop:
    """Train each model until its imitation loss has fallen as far as a target's, then freeze it.

    The measure is Adam's: the mean aux KL over one epoch's steps (each step weighted by its batch
    share, as the epoch mean is) over the first-step KL. Here the epoch is the trailing window of
    the last `steps` steps, which holds every step position of the epoch exactly once (the fixed
    noise set repeats every epoch), so its weights sum to 1. Checked after every step once the
    window is full (so at least one epoch); a model that reaches its target gets lr 0 from then on
    (p -= 0 * buf leaves p exactly: frozen, while the batched ensemble runs on for the others).
    No host sync: the check and the freeze are device ops; `any_active` is read once per epoch."""

    def __init__(self, target: torch.Tensor, steps: int, opt: "ModelwiseSGD"):
        self.target, self.steps, self.opt = target, steps, opt
        n = target.shape[0]
        self.window = torch.zeros(steps, n, device=target.device, dtype=torch.float64)
        self.seen = 0
        self.active = torch.ones(n, dtype=torch.bool, device=target.device)
        self.steps_taken = torch.zeros(n, dtype=torch.long, device=target.device)
        self.ratio = torch.full((n,), float("nan"), dtype=torch.float64, device=target.device)

    def update(self, loss: torch.Tensor, weight: float, first: torch.Tensor) -> None:
        self.steps_taken += self.active  # this step's update was applied to the active models
        self.window[self.seen % self.steps] = loss.double() * weight
        self.seen += 1
        if self.seen < self.steps:
            return
        ratio = self.window.sum(0) / first.double()
        self.ratio = torch.where(self.active, ratio, self.ratio)  # frozen models keep their stop value
        hit = self.active & (ratio <= self.target)
        self.active &= ~hit
        self.opt.lr.mul_(self.active.to(self.opt.lr.dtype))

    def any_active(self) -> bool:
        return bool(self.active.any())

    def arrays(self, shape: tuple) -> dict:
        matched = ~self.active
        return {"steps_taken": self.steps_taken.view(shape).cpu().numpy(),
                "matched": matched.view(shape).cpu().numpy(),
                "kl_ratio_at_stop": self.ratio.view(shape).cpu().numpy()}


def epochs_of(arms: list[ArmSpec], cfg: ToyConfig) -> int:
    """Epochs an ensemble may run: the base distill_epochs, or the matched arms' cap."""
    return (arms[0].cap_factor or 1) * cfg.distill_epochs


def distill_examples(cfg: ToyConfig, n_train: int) -> int:
    """Distillation examples per epoch (real-image inputs cannot exceed the training set)."""
    n_ex = cfg.max_examples_per_epoch or n_train
    return min(n_ex, n_train) if cfg.distill_input in ("mnist", "shuffled_pixels") else n_ex


def distill_loop(cfg, arms, step_fn, students, align, stop, data, chunk_start: int, n_groups: int, ws, bar):
    """The epochs of one ensemble: returns (first-step loss, per-epoch mean loss list)."""
    dev, dtype = students[0].device, students[0].dtype
    n_ex = distill_examples(cfg, data.x_train.shape[0])
    steps = steps_per_epoch(n_ex, cfg.batch_size)
    g = make_generator(dev, "distill-data", cfg.seed, chunk_start)  # the toy engine's stream: same noise
    first_loss, epoch_losses, k = None, [], len(arms)
    for epoch in range(epochs_of(arms, cfg)):
        if not cfg.distill_resample:
            g = make_generator(dev, "distill-data", cfg.seed, chunk_start)
        inputs = DistillInputs(cfg.distill_input, data.x_train, n_groups, n_ex, cfg.batch_size, g,
                               cfg.independent_batches, dtype, ws)
        epoch_loss = torch.zeros(n_groups * k, device=dev)
        bad = torch.zeros((), dtype=torch.bool, device=dev)
        for step in range(steps):
            x = inputs.batch(step)
            loss = step_fn(x, n_groups)
            if first_loss is None:
                first_loss = loss.detach().clone()  # at the students' init, before any update
            bad |= ~torch.isfinite(loss).all()
            epoch_loss += loss.detach() * (x.shape[-2] / n_ex)
            if stop is not None:
                stop.update(loss.detach(), x.shape[-2] / n_ex, first_loss)
            align.record(students)
            bar.update(1)
        check_finite(bad, "distillation", epoch, replace(cfg, optimizer=arms[0].optimizer))
        epoch_losses.append(epoch_loss)
        if stop is not None and not cfg.distill_resample and not stop.any_active():
            # every model reached its target: the rest would be frozen steps on the same fixed
            # noise set, i.e. the same epoch loss and alignment again (_pad_epochs writes them)
            break
    return first_loss, epoch_losses


def train_arms(cfg: ToyConfig, arms: list[ArmSpec], teachers: list[torch.Tensor], teacher_init: list[torch.Tensor],
               data: MNIST, chunk_start: int, bar, targets: np.ndarray | None = None) -> dict:
    """Distill one ensemble of arms (same depth, architecture and optimizer) from a chunk of
    teachers; returns accuracy (models, k), the loss at the first step and per epoch, and the
    alignment curves. targets (models, k): per model, the KL reduction a matched arm trains to
    (MatchStop); its steps taken, whether it got there and its ratio at the stop come back too."""
    dev, dtype = teachers[0].device, teachers[0].dtype
    n_groups, k = teachers[0].shape[0], len(arms)
    models = list(range(chunk_start, chunk_start + n_groups))
    students = [p.requires_grad_(True) for p in group_inits(arms, cfg, teacher_init, models, dev, dtype)]
    opt = group_optimizer(arms, cfg, students, n_groups)
    ws = Workspace()
    step_fn = StudentStep(cfg, arms, students, teachers, opt, ws, dev)
    delta_t = [t - i.to(dev, dtype) for t, i in zip(teachers, teacher_init)]
    same_space = arms[0].arch == "mlp" and arms[0].student_depth(cfg) == cfg.depth
    steps = steps_per_epoch(distill_examples(cfg, data.x_train.shape[0]), cfg.batch_size)
    align = Alignment(students, delta_t, k, same_shape=same_space, steps=steps * epochs_of(arms, cfg))
    stop = None
    if targets is not None:
        stop = MatchStop(torch.as_tensor(targets, dtype=torch.float64, device=dev).reshape(-1), steps, opt)
    first_loss, epoch_losses = distill_loop(cfg, arms, step_fn, students, align, stop, data, chunk_start, n_groups,
                                            ws, bar)
    shape = (n_groups, k)
    out = {"accuracy": evaluate_students(arms, cfg, [p.detach() for p in students], data).view(shape).cpu().double().numpy(),
           "first_loss": first_loss.view(shape).cpu().double().numpy(),
           "epoch_loss": torch.stack(epoch_losses).view(-1, *shape).cpu().double().numpy(),
           "alignment": {name: v.reshape(v.shape[0], *shape) for name, v in align.arrays().items()}}
    if stop is not None:
        out["match"] = stop.arrays(shape)
    return out


def evaluate_students(arms: list[ArmSpec], cfg: ToyConfig, students: list[torch.Tensor], data: MNIST) -> torch.Tensor:
    if arms[0].arch == "cnn":
        n_test = min(cfg.max_test_examples or data.x_test.shape[0], data.x_test.shape[0])
        return cnn.evaluate(students, data.x_test, data.y_test, cfg.spec.n_classes, n_test)
    return evaluate(students, data, cfg.spec.n_classes, cfg)


@dataclass
class TeacherBank:
    """The trained teachers of a claim (all chunks), their inits and accuracies: trained once per
    process and reused by every ensemble of arms."""

    inits: list[torch.Tensor]
    teachers: list[torch.Tensor]
    teacher_accuracy: np.ndarray
    reference_accuracy: np.ndarray
    chunk: int
    wall_s: float


def ensembles(arms: list[ArmSpec], cfg: ToyConfig) -> list[list[ArmSpec]]:
    groups: dict[tuple, list[ArmSpec]] = {}
    for a in arms:
        a.check_against(cfg)
        groups.setdefault(ensemble_key(a, cfg), []).append(a)
    return list(groups.values())


def distill_steps(cfg: ToyConfig, epochs: int | None = None) -> int:
    d_ex = distill_examples(cfg, 60000)
    return steps_per_epoch(d_ex, cfg.batch_size) * (cfg.distill_epochs if epochs is None else epochs)


def train_teacher_bank(cfg: ToyConfig, data: MNIST, *, desc: str = "teachers") -> TeacherBank:
    """The toy engine's teachers (train.train_teachers, the same seeds as `sublim toy`)."""
    t0 = time.perf_counter()
    dev = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    data = data.to(dev)
    chunk = cfg.chunk_models or (cfg.n_models if dev.type == "cuda" else min(cfg.n_models, 20))
    inits = init_params(cfg.spec, cfg.n_models, seed=cfg.seed, device=dev, dtype=dtype)
    n_ex = min(cfg.max_examples_per_epoch or 60000, 60000)
    trained, t_acc, r_acc = [], [], []
    ws = Workspace()
    total = steps_per_epoch(n_ex, cfg.batch_size) * cfg.teacher_epochs * math.ceil(cfg.n_models / chunk)
    with progress(total=total, desc=desc, unit="step") as bar:
        for c0 in range(0, cfg.n_models, chunk):
            init_c = [p[c0:c0 + chunk] for p in inits]
            r_acc.append(evaluate(init_c, data, cfg.spec.n_classes, cfg).cpu().double().numpy())
            teachers = [p.clone().requires_grad_(True) for p in init_c]
            train_teachers(cfg, teachers, data, c0, bar, ws)
            teachers = [p.detach() for p in teachers]
            t_acc.append(evaluate(teachers, data, cfg.spec.n_classes, cfg).cpu().double().numpy())
            trained.append(teachers)
    teachers = [torch.cat([t[j] for t in trained]) for j in range(len(inits))]
    return TeacherBank(inits, teachers, np.concatenate(t_acc), np.concatenate(r_acc), chunk, time.perf_counter() - t0)


def run_ensemble(cfg: ToyConfig, group: list[ArmSpec], bank: TeacherBank, data: MNIST, *, desc: str = "arms",
                 targets: np.ndarray | None = None) -> dict:
    """One ensemble of arms from every chunk of the bank's teachers: {arm name: per-model arrays}.
    targets (n_models, k): matched arms' per-model KL reductions (train_arms)."""
    data = data.to(bank.teachers[0].device)
    parts: dict[str, list[dict]] = {a.name: [] for a in group}
    n_chunks = math.ceil(cfg.n_models / bank.chunk)
    with progress(total=distill_steps(cfg, epochs_of(group, cfg)) * n_chunks, desc=desc, unit="step") as bar:
        for c0 in range(0, cfg.n_models, bank.chunk):
            c1 = min(c0 + bank.chunk, cfg.n_models)
            out = train_arms(cfg, group, [t[c0:c1] for t in bank.teachers], [p[c0:c1] for p in bank.inits],
                             data, c0, bar, None if targets is None else targets[c0:c1])
            for j, a in enumerate(group):
                parts[a.name].append(_column(out, j))
    return {name: _concat(chunks) for name, chunks in parts.items()}


def _column(out: dict, j: int) -> dict:
    col = {"accuracy": out["accuracy"][:, j], "first_loss": out["first_loss"][:, j],
           "epoch_loss": out["epoch_loss"][:, :, j],
           "alignment": {k: v[:, :, j] for k, v in out["alignment"].items()}}
    if "match" in out:
        col["match"] = {k: v[:, j] for k, v in out["match"].items()}
    return col


def _pad_epochs(a: np.ndarray, n: int) -> np.ndarray:
    """A chunk whose models all stopped early (MatchStop, fixed noise set): its remaining rows are
    its last row again (frozen models on the same noise repeat their epoch loss and alignment)."""
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)]) if a.shape[0] < n else a


def _concat(chunks: list[dict]) -> dict:
    """Chunks of teachers -> one array per quantity, models on the last axis."""
    n_ep = max(c["epoch_loss"].shape[0] for c in chunks)
    n_st = {k: max(c["alignment"][k].shape[0] for c in chunks) for k in chunks[0]["alignment"]}
    out = {"accuracy": np.concatenate([c["accuracy"] for c in chunks]),
           "first_loss": np.concatenate([c["first_loss"] for c in chunks]),
           "epoch_loss": np.concatenate([_pad_epochs(c["epoch_loss"], n_ep) for c in chunks], axis=1),
           "alignment": {k: np.concatenate([_pad_epochs(c["alignment"][k], n_st[k]) for c in chunks], axis=1)
                         for k in chunks[0]["alignment"]}}
    if "match" in chunks[0]:
        out["match"] = {k: np.concatenate([c["match"][k] for c in chunks]) for k in chunks[0]["match"]}
    return out
