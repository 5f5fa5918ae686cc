"""A whole ensemble of MLPs as one set of batched tensors.

Weights of layer l have shape (models, d_out, d_in) and biases (models, d_out), so one einsum
runs every model at once: a single training loop trains the whole ensemble. Each model's init is
drawn from its own generator seeded by (seed, model index), so model i's init does not depend on
how many models are in the ensemble or on the device order of random draws.

Parameters are a plain list [W0, b0, W1, b1, ...] of tensors: that keeps the code friendly to
torch.func / autograd checks in theory/ (a flat list is easy to perturb, flatten and dot).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from sublim.errors import ConfigError
from sublim.seeding import torch_generator

INIT_SCHEMES = ("normal", "kaiming_normal", "torch_default")


@dataclass(frozen=True)
class MLPSpec:
    """Architecture: d_in -> width x depth (ReLU) -> n_classes + n_aux logits.

    init: "normal" is the paper's N(0, init_scale^2 / d_in); "kaiming_normal" is
    N(0, 2 init_scale^2 / d_in); "torch_default" is nn.Linear's U(-1/sqrt(d_in), 1/sqrt(d_in))
    for weights and biases (times init_scale). Paper biases are zero.
    """

    d_in: int = 784
    width: int = 256
    depth: int = 2
    n_classes: int = 10
    n_aux: int = 3
    init: str = "normal"
    init_scale: float = 1.0

    def __post_init__(self):
        for name in ("d_in", "width", "depth", "n_classes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_aux < 0:
            raise ConfigError(f"n_aux (m) must be >= 0, got {self.n_aux}")
        if self.init not in INIT_SCHEMES:
            raise ConfigError(f"init must be one of {INIT_SCHEMES}, got {self.init!r}")
        if not (self.init_scale > 0 and math.isfinite(self.init_scale)):
            raise ConfigError(f"init_scale must be positive and finite, got {self.init_scale}")

    @property
    def d_out(self) -> int:
        return self.n_classes + self.n_aux

    @property
    def layer_dims(self) -> list[tuple[int, int]]:
        """[(d_in, d_out)] for every linear layer."""
        dims = [self.d_in] + [self.width] * self.depth + [self.d_out]
        return list(zip(dims[:-1], dims[1:]))

    def n_params(self) -> int:
        return sum(i * o + o for i, o in self.layer_dims)

    def flops_per_example(self) -> int:
        """Multiply-adds x 2 of one forward pass of one model on one example."""
        return sum(2 * i * o for i, o in self.layer_dims)


def model_generator(seed: int, model_index: int) -> torch.Generator:
    """A CPU generator unique to (seed, model): model i's init is independent of the ensemble size."""
    # sha256 of the named parts (sublim.seeding): no two (seed, i) pairs share a stream, which
    # the former affine formula seed*1_000_003 + i*7919 only promised for "practical" sizes.
    return torch_generator("init", int(seed), int(model_index))


def init_params(
    spec: MLPSpec,
    model_seeds: list[tuple[int, int]] | int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Initialize an ensemble.

    model_seeds: either a count N (models are (seed, 0..N-1)) or an explicit list of
    (seed, index) pairs, which lets a caller rebuild exactly model k of another ensemble
    (e.g. a cross-model student gets the init of model perm[k]).
    Draws happen on CPU in float64 and are then cast, so every device and dtype starts from
    the same numbers (up to rounding).
    """
    if isinstance(model_seeds, int):
        if model_seeds <= 0:
            raise ConfigError(f"number of models must be positive, got {model_seeds}")
        model_seeds = [(seed, i) for i in range(model_seeds)]
    def one_model(seed_index: tuple[int, int]) -> list[torch.Tensor]:
        g = model_generator(*seed_index)
        out = []
        for fan_in, fan_out in spec.layer_dims:
            if spec.init == "normal":
                w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) * (spec.init_scale / math.sqrt(fan_in))
                b = torch.zeros(fan_out, dtype=torch.float64)
            elif spec.init == "kaiming_normal":
                w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) * (spec.init_scale * math.sqrt(2.0 / fan_in))
                b = torch.zeros(fan_out, dtype=torch.float64)
            else:  # torch_default: nn.Linear's kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
                bound = spec.init_scale / math.sqrt(fan_in)
                w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
                b = (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound
            # the cast is elementwise, so casting per model gives the same numbers as after stacking
            out += [w.to(dtype), b.to(dtype)]
        return out

    # Every model has its own generator, so models can be drawn in parallel threads (torch
    # releases the GIL) without changing a single number; 100 paper models took ~1 s serially.
    workers = min(len(model_seeds), os.cpu_count() or 1, 16)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            models = list(pool.map(one_model, model_seeds))
    else:
        models = [one_model(si) for si in model_seeds]
    return [torch.stack([m[j] for m in models]).to(device=device) for j in range(2 * len(spec.layer_dims))]


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of every model: (models, batch, d_out).

    x is (batch, d_in), shared by all models, or (models, batch, d_in), one batch per model.
    """
    h = x
    n_layers = len(params) // 2
    for l in range(n_layers):
        w, b = params[2 * l], params[2 * l + 1]
        if h.dim() == 2:
            h = torch.einsum("bi,moi->mbo", h, w)
        else:
            h = torch.einsum("mbi,moi->mbo", h, w)
        h = h + b[:, None, :]
        if l < n_layers - 1:
            h = torch.relu(h)
    return h


def split_logits(logits: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(digit logits, auxiliary logits) along the last axis."""
    return logits[..., :n_classes], logits[..., n_classes:]



def forward_fast(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """forward() for training: same numbers (up to rounding), fewer passes over memory.

    x is (batch, d_in) shared by all models, (models, batch, d_in), or (groups, batch, d_in) with
    models = groups * k, group-major: model g*k + a reads group g's batch. The k models of a group
    then run their first layer as ONE (batch, d_in) x (d_in, k*d_out) matmul instead of copying x
    k times (that is how all student arms of one teacher share its noise batch).
    The bias is fused into the matmul (baddbmm) and the ReLU runs in place. Tested against
    forward(params, x.repeat_interleave(k, 0)).
    """
    n_layers = len(params) // 2
    w0, b0 = params[0], params[1]
    models, d_hidden, d_in = w0.shape
    if x.dim() == 2:
        # one shared batch: a single (batch, d_in) x (d_in, models*d_out) matmul
        h = torch.addmm(b0.reshape(1, -1), x, w0.reshape(models * d_hidden, d_in).t())
        h = h.view(x.shape[0], models, d_hidden).transpose(0, 1)
    else:
        groups, batch, _ = x.shape
        if models % groups:
            raise ValueError(f"{models} models do not split into {groups} groups")
        k = models // groups
        if k == 1:
            h = torch.baddbmm(b0[:, None, :], x, w0.transpose(1, 2))
        else:
            # (g, b, k*o), bias fused, then regrouped to one (b, o) block per model
            h = torch.baddbmm(b0.reshape(groups, 1, k * d_hidden), x, w0.reshape(groups, k * d_hidden, d_in).transpose(1, 2))
            h = h.view(groups, batch, k, d_hidden).transpose(1, 2).reshape(models, batch, d_hidden)
    for l in range(1, n_layers):
        h = torch.relu_(h) if h.is_contiguous() else torch.relu(h)
        w, b = params[2 * l], params[2 * l + 1]
        h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
    return h


def _on_device(t: torch.Tensor, device: torch.device) -> bool:
    """t lives on `device`; a device without an index ("cuda") means the current one, as where
    torch.empty(device="cuda") allocates (t.device is then "cuda:0", which != torch.device("cuda"))."""
    if t.device.type != device.type:
        return False
    if device.index is None:
        return device.type != "cuda" or t.device.index == torch.cuda.current_device()
    return t.device.index == device.index


class Workspace:
    """Named scratch tensors reused across the steps, epochs and chunks of a run.

    Each name owns one flat storage, grown only when a request does not fit, and a request is a
    contiguous view of its head (so the short last batch reuses the full batches' memory). On CPU
    this matters: a fresh 40 MB tensor costs ~10 ms of page faults, ten times the ReLU that fills it.
    A view stays valid until the next request under the same name.
    """

    def __init__(self):
        self._store: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        n = math.prod(shape)
        t = self._store.get(name)
        if t is None or t.numel() < n or t.dtype != dtype or not _on_device(t, torch.device(device)):
            t = self._store[name] = torch.empty(n, dtype=dtype, device=device)
        return t[:n].view(shape)


class HandMLP:
    """Training forward and backward of an ensemble written out by hand (the CPU fp32/fp64 engine).

    Same numbers as forward_fast + autograd up to rounding, at close to the machine's matmul rate:
    - activations are feature-major, (models, features, batch). The k models of a group that
      share an input batch (student arms of one teacher) then get their first layer as ONE
      (k*width, d_in) @ (d_in, batch) matmul whose output is already k contiguous per-model
      blocks: no regrouping copy forward or backward, every other matmul reads views;
    - every activation and gradient goes to a Workspace buffer reused across steps (out=), and
      parameter gradients are written straight into p.grad (also workspace memory);
    - no input gradient for the first layer (the input is data), ReLU in place, the ReLU mask
      applied in place to the incoming gradient.
    x is (batch, d_in) shared by all models or (groups, batch, d_in) with models = groups * k,
    group-major, as in forward_fast. Call forward(x) then backward(dz) for the same x; the
    returned logits live in a reused buffer (valid until the next forward).
    """

    BLOCK_MODELS = 16

    def __init__(self, params: list[torch.Tensor], workspace: Workspace | None = None, name: str = "mlp",
                 block_groups: int = 0):
        self.params = params
        self.block_groups = block_groups  # 0: about BLOCK_MODELS models per block
        self.n_layers = len(params) // 2
        self.ws = workspace if workspace is not None else Workspace()
        self.name = name  # prefix of this network's buffers in a shared workspace
        self._x: torch.Tensor | None = None
        self._acts: list[torch.Tensor] = []

    def _buf(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self.ws.get(f"{self.name}.{name}", shape, self.params[0].dtype, self.params[0].device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, feature-major: (models, d_out, batch)."""
        x3 = x[None] if x.dim() == 2 else x
        groups, batch, _ = x3.shape
        models = self.params[0].shape[0]
        if models % groups:
            raise ValueError(f"{models} models do not split into {groups} groups")
        k = models // groups
        acts = [self._buf(f"h{l}", (models, self.params[2 * l].shape[1], batch)) for l in range(self.n_layers)]
        for g0, g1 in self._blocks(groups, k):
            self._forward_block(x3[g0:g1], slice(g0 * k, g1 * k), acts)
        self._x, self._acts = x3, acts
        return acts[-1]

    def _blocks(self, groups: int, k: int) -> list[tuple[int, int]]:
        """Groups of models run layer after layer in blocks of ~BLOCK_MODELS: a block's activations
        are still in cache when its next layer, ReLU and ReLU mask read them."""
        step = self.block_groups or max(1, round(HandMLP.BLOCK_MODELS / k))
        return [(g, min(g + step, groups)) for g in range(0, groups, step)]

    def _forward_block(self, x: torch.Tensor, ms: slice, acts: list[torch.Tensor]) -> None:
        groups, batch, d_in = x.shape
        w0, b0 = self.params[0][ms], self.params[1][ms]
        width = w0.shape[1]
        kw = w0.shape[0] // groups * width
        h = acts[0][ms]
        torch.baddbmm(b0.reshape(groups, kw, 1), w0.reshape(groups, kw, d_in), x.transpose(1, 2), out=h.view(groups, kw, batch))
        for l in range(1, self.n_layers):
            h.clamp_min_(0)
            w, b = self.params[2 * l][ms], self.params[2 * l + 1][ms]
            h = torch.baddbmm(b[:, :, None], w, h, out=acts[l][ms])

    @torch.no_grad()
    def backward(self, dz: torch.Tensor) -> None:
        """Gradients of sum(dz * logits) into p.grad of every parameter (overwritten, not accumulated).
        dz: (models, d_out, batch), like forward's output."""
        if self._x is None:
            raise RuntimeError("HandMLP.backward before forward")
        for i, p in enumerate(self.params):
            if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
                p.grad = self._buf(f"grad{i}", p.shape)
        x3 = self._x
        groups = x3.shape[0]
        k = self.params[0].shape[0] // groups
        for g0, g1 in self._blocks(groups, k):
            self._backward_block(x3[g0:g1], slice(g0 * k, g1 * k), dz[g0 * k:g1 * k])

    def _backward_block(self, x: torch.Tensor, ms: slice, dz: torch.Tensor) -> None:
        groups, batch, d_in = x.shape
        acts = [a[ms] for a in self._acts]
        d = dz
        for l in range(self.n_layers - 1, 0, -1):
            w = self.params[2 * l][ms]
            a = acts[l - 1]  # post-ReLU input of layer l
            torch.bmm(d, a.transpose(1, 2), out=self.params[2 * l].grad[ms])
            torch.sum(d, -1, out=self.params[2 * l + 1].grad[ms])
            d_prev = torch.bmm(w.transpose(1, 2), d, out=self._buf(f"d{l % 2}", a.shape))  # block-sized: stays in cache
            # ReLU backward in place: zero where the unit was off (a == relu(pre) <= 0)
            torch.ops.aten.threshold_backward.grad_input(d_prev, a, 0, grad_input=d_prev)
            d = d_prev
        width = d.shape[1]
        kw = d.shape[0] // groups * width
        torch.bmm(d.view(groups, kw, batch), x, out=self.params[0].grad[ms].view(groups, kw, d_in))
        torch.sum(d, -1, out=self.params[1].grad[ms])


class HandMLPBf16(HandMLP):
    """HandMLP with bf16 matmuls and float32 master weights (fast_matmul=bf16 on a CPU with bf16 units).

    Each forward casts the float32 masters into bf16 copies (workspace memory; `frozen` networks,
    the distillation teachers, cast once) and the input batch into bf16, then runs HandMLP's passes
    on the copies: activations and matmul outputs are bf16, every matmul accumulates in float32
    (oneDNN). The logits come back in the masters' dtype (float32) for the float32 losses; backward
    takes that dz, runs in bf16 and writes each master's gradient, converted to the master's dtype,
    into master.grad, so the optimizer and its state stay float32. Same interface as HandMLP.
    """

    def __init__(self, masters: list[torch.Tensor], workspace: Workspace | None = None, name: str = "mlp",
                 block_groups: int = 0, frozen: bool = False):
        ws = workspace if workspace is not None else Workspace()
        copies = [ws.get(f"{name}.bf16.{i}", tuple(p.shape), torch.bfloat16, p.device) for i, p in enumerate(masters)]
        super().__init__(copies, ws, name, block_groups)
        self.masters, self.frozen, self._fresh = masters, frozen, False

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.frozen and self._fresh):
            for c, m in zip(self.params, self.masters):
                c.copy_(m)
            self._fresh = True
        xb = self.ws.get(f"{self.name}.x_bf16", tuple(x.shape), torch.bfloat16, x.device)
        z = super().forward(xb.copy_(x))
        return self.ws.get(f"{self.name}.z_master", tuple(z.shape), self.masters[0].dtype, z.device).copy_(z)

    @torch.no_grad()
    def backward(self, dz: torch.Tensor) -> None:
        db = self.ws.get(f"{self.name}.dz_bf16", tuple(dz.shape), torch.bfloat16, dz.device)
        super().backward(db.copy_(dz))
        for i, (c, m) in enumerate(zip(self.params, self.masters)):
            if m.grad is None or m.grad.shape != m.shape or m.grad.dtype != m.dtype:
                m.grad = self.ws.get(f"{self.name}.grad_fp32.{i}", tuple(m.shape), m.dtype, m.device)
            m.grad.copy_(c.grad)
