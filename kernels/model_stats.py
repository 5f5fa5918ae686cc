"""Model-level per-example gradient statistics via forward/backward hooks.

    with PerExampleGradStats(model, directions) as st:
        loss_per_example.sum().backward()
    r = st.result()   # r.sq_norm[name] (B,), r.dot[name] (B, k), r.total_sq_norm, r.total_dot

How it works. A forward hook on every module that owns a tracked parameter keeps the module input
(autograd keeps it alive anyway) and puts a hook on the output that captures g = dL/d(output)
during backward. A hook on the parameter itself fires once its full gradient is ready, i.e. after
every use of it has delivered its g; the statistics of that parameter are computed right there and
the captured tensors are dropped, so at most one layer's g is held at a time (a tied
embedding/output-head weight holds the head's g until the embedding's g arrives).

Layer types. What a module type contributes is registered per type, as Opacus registers its grad
samplers: `@register_layer(nn.Linear, ...)` names the parameters the type can track and adds
their statistics from that type's uses; LAYER_HANDLERS holds nn.Linear (incl. peft LoRA's
lora_A / lora_B) and nn.Embedding. A module is handled by the first registered class in its MRO,
and only if it keeps that class's forward. Any other module owning a tracked parameter is refused
at construction with a one-line SublimError naming its type.

A parameter used several times (a module called twice, or a weight tied between an embedding and an
output head) gets the statistics of its TOTAL per-example gradient: linear uses are concatenated
along the token axis (G = sum over all tokens of all uses), and the cross term between two layer
types sharing a weight is added exactly (`@register_cross`; embedding x linear:
torch_backend.embedding_linear_cross), so norms are of the sum, never a sum of norms.

Not supported (clear error or documented): parameters used functionally
(F.linear(x, module.weight)) are caught when the parameter receives a gradient but its module's
forward never ran; gradient checkpointing (recomputed forwards) is not supported.
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from sublim.errors import ConfigError, SublimError
from sublim.kernels import torch_backend
from sublim.kernels.linear_stats import BACKENDS, compute_checked, resolve_backend


@dataclass
class GradStatsResult:
    sq_norm: dict[str, Tensor]  # name -> (B,) fp32, squared norm of example i's gradient
    dot: dict[str, Tensor]  # name -> (B, k) fp32, only parameters that have directions
    total_sq_norm: Tensor  # (B,) over all tracked parameters
    total_dot: Tensor  # (B, k); (B, 0) without directions


@dataclass
class _Use:
    """One call of a module during the forward: its input and (after backward) its output grad."""

    layer: type  # the registered layer type that handles the module
    module_name: str
    module: nn.Module
    inp: Tensor
    g: Tensor | None = None


@dataclass
class _Tracked:
    name: str
    param: nn.Parameter
    role: str  # "weight" or "bias"
    directions: Tensor | None = None
    uses: list = field(default_factory=list)
    index: int = 0  # row of the per-step result buffers


# ---- layer registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerHandler:
    """What PerExampleGradStats needs from one layer type."""

    # add(role, uses, B, directions, sq, dot, backend_for): ADD the statistics of the parameter
    # `role` over these uses (all of this type) into sq (B,) and dot (B, k) or None; returns the
    # operands of cross terms with other layer types (None when there are none). backend_for(x, g)
    # resolves the linear kernels' backend for this parameter.
    add: Callable
    roles: tuple[str, ...]  # the parameters of the type it can track
    min_input_dim: int  # the first positional input has at least this many dims (B first)
    check: Callable[[nn.Module], str | None]  # why a module of the type is not supported, or None


LAYER_HANDLERS: dict[type, LayerHandler] = {}
# (type a, type b) -> cross(operands of a, operands of b) = <G_a,i, G_b,i> (B,), for a weight they share
CROSS_TERMS: dict[tuple[type, type], Callable] = {}


def register_layer(module_type: type, *, roles: tuple[str, ...] = ("weight",), min_input_dim: int = 0,
                   check: Callable[[nn.Module], str | None] | None = None):
    """Decorator: `add` (see LayerHandler) computes the statistics of `module_type`'s parameters."""
    def deco(add: Callable) -> Callable:
        LAYER_HANDLERS[module_type] = LayerHandler(add, roles, min_input_dim, check or (lambda module: None))
        return add

    return deco


def register_cross(type_a: type, type_b: type):
    """Decorator: the per-example inner product of the gradients a weight gets as type_a and type_b."""
    def deco(cross: Callable) -> Callable:
        CROSS_TERMS[(type_a, type_b)] = cross
        return cross

    return deco


def _layer_type(module: nn.Module) -> type | None:
    """The registered class that handles `module`: the first one in its MRO."""
    return next((c for c in type(module).__mro__ if c in LAYER_HANDLERS), None)


def _why_unsupported(module: nn.Module, role: str) -> str | None:
    """None if (module, role) is supported, else the reason why not (one line)."""
    layer = _layer_type(module)
    if layer is None:
        known = ", ".join(c.__name__ for c in LAYER_HANDLERS)
        return f"module type {type(module).__name__} is not supported (supported: {known})"
    if type(module).forward is not layer.forward:
        return f"{type(module).__name__} overrides {layer.__name__}.forward"
    handler = LAYER_HANDLERS[layer]
    if role not in handler.roles:
        return f"unexpected parameter {role!r} of {layer.__name__}"
    return handler.check(module)


def _why_untrackable(name: str, owners: list[tuple[str, nn.Module, str]]) -> str | None:
    """None if parameter `name` (with these (module name, module, role) owners) can be tracked."""
    for mname, mod, role in owners:
        why = _why_unsupported(mod, role)
        if why is not None:
            return f"parameter {name!r} (in module {mname!r}): {why}"
    roles = {r for _, _, r in owners}
    if len(roles) != 1:
        return f"parameter {name!r} is used as {sorted(roles)} in different modules"
    for a, b in itertools.combinations(dict.fromkeys(_layer_type(m) for _, m, _ in owners), 2):
        if (a, b) not in CROSS_TERMS and (b, a) not in CROSS_TERMS:
            return f"parameter {name!r} is shared by {a.__name__} and {b.__name__} modules: no cross term registered"
    return None


@register_layer(nn.Linear, roles=("weight", "bias"), min_input_dim=2)
def _linear_stats(role, uses, B, D, sq, dot, backend_for):
    """Weight: the tokens of every call concatenated (G = sum over all of them), through the kernels;
    bias: sum_t g_t, formed directly. Returns (x, g) for a tied embedding's cross term."""
    g = _cat_tokens([u.g for u in uses], B)
    if role == "bias":
        b_sq, b_dot = torch_backend.bias_stats(g, D)
        sq += b_sq
        if dot is not None:
            dot += b_dot
        return None
    x = _cat_tokens([_autocast_input(u.inp, u.g) for u in uses], B)
    if x.shape[1] != g.shape[1]:
        raise SublimError(f"module {uses[0].module_name!r}: input and output token counts differ")
    compute_checked(x, g, D, None, backend_for(x, g), out_sq=sq, out_dot=dot)
    return x, g


def _embedding_check(module: nn.Embedding) -> str | None:
    return "nn.Embedding(scale_grad_by_freq=True) is not supported" if module.scale_grad_by_freq else None


@register_layer(nn.Embedding, check=_embedding_check)
def _embedding_stats(role, uses, B, D, sq, dot, backend_for):
    """Row v of G_i sums the output grads of example i's tokens with index v (the padding_idx row
    gets none). Returns (idx, e) for a tied head's cross term."""
    idx = torch.cat([u.inp.reshape(B, -1) for u in uses], dim=1)
    e = torch.cat([_zero_padding(u, B) for u in uses], dim=1)
    e_sq, e_dot = torch_backend.embedding_stats(idx, e, D)
    sq += e_sq
    if dot is not None:
        dot += e_dot
    return idx, e


@register_cross(nn.Embedding, nn.Linear)
def _embedding_head_cross(emb, lin):
    (idx, e), (x, g) = emb, lin
    return torch_backend.embedding_linear_cross(idx, e, x, g)


def supported_param_names(model: nn.Module) -> list[str]:
    """Trainable parameters owned only by supported modules (e.g. all Linear/Embedding weights of an
    LLM, leaving out norm gains): a convenient `param_names` for a full fine-tune."""
    owners = _owners(model)
    return [n for n, p in model.named_parameters()
            if p.requires_grad and owners.get(id(p)) and _why_untrackable(n, owners[id(p)]) is None]


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    owners: dict[int, list] = {}
    for mname, mod in model.named_modules():
        for role, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mname, mod, role))
    return owners


class PerExampleGradStats:
    """Per-example ||grad_i||^2 and <grad_i, D_k> for the parameters of a model (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        directions: Mapping[str, Tensor] | None = None,
        *,
        param_names: Iterable[str] | None = None,
        backend: str = "auto",
    ):
        if backend != "auto" and backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r} (auto, {', '.join(BACKENDS)})")
        self.model = model
        self.backend = backend
        named = dict(model.named_parameters())
        if param_names is None:
            names = [n for n, p in named.items() if p.requires_grad]
        else:
            names = list(param_names)
            for n in names:
                if n not in named:
                    raise ConfigError(f"param_names: {n!r} is not a parameter of the model")
                if not named[n].requires_grad:
                    raise ConfigError(f"param_names: {n!r} does not require grad")
        if not names:
            raise ConfigError("no trainable parameters to track")
        self._track(named, names)
        self.k = self._set_directions(directions or {})
        self._handles: list = []
        self._backends: dict = {}
        self._reset()

    def _track(self, named: dict[str, nn.Parameter], names: list[str]) -> None:
        """The tracked parameters (by id) and the modules to hook: id -> (name, module, layer type,
        the tracked parameters it owns)."""
        owners = _owners(self.model)
        self._tracked: dict[int, _Tracked] = {}
        self._modules: dict[int, tuple[str, nn.Module, type, list[_Tracked]]] = {}
        for n in names:
            p = named[n]
            mods = owners.get(id(p), [])
            why = _why_untrackable(n, mods)
            if why is not None:
                raise SublimError(why)
            t = _Tracked(n, p, mods[0][2], index=len(self._tracked))
            self._tracked[id(p)] = t
            for mname, mod, _role in mods:
                entry = self._modules.setdefault(id(mod), (mname, mod, _layer_type(mod), []))
                entry[3].append(t)

    def _set_directions(self, directions: Mapping[str, Tensor]) -> int:
        """Attach each parameter's directions (k, *shape); returns their common k (0 without)."""
        if not directions:
            return 0
        ks = set()
        by_name = {t.name: t for t in self._tracked.values()}
        for n, d in directions.items():
            if n not in by_name:
                raise ConfigError(f"directions: {n!r} is not a tracked parameter")
            t = by_name[n]
            if not isinstance(d, Tensor) or not d.is_floating_point():
                raise ConfigError(f"directions[{n!r}] must be a floating-point tensor")
            if d.dim() != t.param.dim() + 1 or d.shape[1:] != t.param.shape:
                raise ConfigError(
                    f"directions[{n!r}] must have shape (k, {', '.join(map(str, t.param.shape))}), "
                    f"got {tuple(d.shape)}"
                )
            ks.add(d.shape[0])
            t.directions = d.detach().to(t.param.device)
        if len(ks) != 1 or min(ks) < 1:
            raise ConfigError(f"all directions must share one k >= 1, got k values {sorted(ks)}")
        return ks.pop()

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "PerExampleGradStats":
        self._reset()
        for mname, mod, layer, _tracked in self._modules.values():
            self._handles.append(mod.register_forward_hook(self._make_forward_hook(mname, layer)))
        for t in self._tracked.values():
            self._handles.append(t.param.register_hook(self._make_param_hook(t)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _reset(self) -> None:
        # host (Python) time spent in this object's hooks since the step began: tells whether the
        # statistics' overhead is launch/Python-bound or device-bound
        self.hook_host_seconds = 0.0
        # One zeroed buffer per step for all parameters' statistics (rows = parameters): the kernels
        # add into their row, so a step costs one memset instead of one or two per layer.
        self._sq_buf: Tensor | None = None  # (n_params, B)
        self._dot_buf: Tensor | None = None  # (n_params, B, k)
        self._done: set[str] = set()
        self._batch: int | None = None
        self._device = None
        self._backward_seen = False
        self._error: str | None = None
        for t in self._tracked.values():
            t.uses = []

    # -- hooks ----------------------------------------------------------------------------------
    def _make_forward_hook(self, mname: str, layer: type):
        min_dim = LAYER_HANDLERS[layer].min_input_dim

        def hook(mod, inputs, output):
            if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad:
                return
            t0 = time.perf_counter()
            if self._backward_seen:  # a new step began: forget the previous one
                self._reset()
            if not inputs or inputs[0].dim() < min_dim:
                if self._error is None:
                    self._error = (
                        f"module {mname!r} must be called with a positional input of shape (B, ..., d); "
                        "the first dimension is the batch"
                    )
                return
            inp = inputs[0]
            use = _Use(layer, mname, mod, inp.detach())
            batch = inp.shape[0] if inp.dim() > 0 else 1
            if self._batch is None:
                self._batch, self._device = batch, output.device
                self._sq_buf = torch.zeros(len(self._tracked), batch, dtype=torch.float32, device=output.device)
                if self.k:
                    self._dot_buf = torch.zeros(len(self._tracked), batch, self.k, dtype=torch.float32,
                                                device=output.device)
            elif batch != self._batch and self._error is None:
                self._error = (
                    f"module {mname!r} saw batch size {batch} but an earlier module saw {self._batch}; "
                    "the first input dimension must be the batch"
                )
            for t in self._modules[id(mod)][3]:
                t.uses.append(use)

            def grad_hook(grad):
                use.g = grad.detach()

            output.register_hook(grad_hook)
            self.hook_host_seconds += time.perf_counter() - t0

        return hook

    def _make_param_hook(self, t: _Tracked):
        def hook(_grad):
            t0 = time.perf_counter()
            self._backward_seen = True
            try:
                if self._error is None:  # after an error (e.g. a batch mismatch) the buffers may not fit
                    with torch.no_grad():
                        self._compute(t)
            except SublimError as e:
                if self._error is None:
                    self._error = str(e)
            t.uses = []  # drop captured inputs/grads as soon as this parameter is done
            self.hook_host_seconds += time.perf_counter() - t0

        return hook

    # -- statistics -----------------------------------------------------------------------------
    def _compute(self, t: _Tracked) -> None:
        if t.name in self._done:
            raise SublimError(
                f"{t.name!r} received a second gradient before result(); use one backward per result"
            )
        uses = [u for u in t.uses if u.g is not None]
        if not uses:
            raise SublimError(
                f"parameter {t.name!r} received a gradient but none of its modules' forward ran with "
                "autograd (is it used functionally, e.g. F.linear(x, module.weight)?)"
            )
        self._done.add(t.name)
        sq = self._sq_buf[t.index]  # this parameter's rows of the step's buffers (zeros until now)
        dot = self._dot_buf[t.index] if t.directions is not None else None
        by_layer: dict[type, list[_Use]] = {}
        for u in uses:
            by_layer.setdefault(u.layer, []).append(u)
        backend_for = functools.partial(self._backend_for, t)
        operands = {}
        for layer, handler in LAYER_HANDLERS.items():  # registration order: the same sums every step
            if layer in by_layer:
                operands[layer] = handler.add(t.role, by_layer[layer], self._batch, t.directions, sq, dot, backend_for)
        if len(operands) > 1:  # a weight shared by layer types: add the cross terms of its total gradient
            for (a, b), cross in CROSS_TERMS.items():
                if operands.get(a) is not None and operands.get(b) is not None:
                    sq += 2.0 * cross(operands[a], operands[b])

    def _backend_for(self, t: _Tracked, x: Tensor, g: Tensor) -> str:
        """Resolve "auto"/"triton" once per (parameter, dtypes, device): checks are not free."""
        key = (t.name, x.dtype, g.dtype, x.device)
        backend = self._backends.get(key)
        if backend is None:
            if not x.is_floating_point() or not g.is_floating_point():
                raise SublimError(f"parameter {t.name!r}: module input/grad must be floating point, got {x.dtype}")
            backend = self._backends[key] = resolve_backend(self.backend, x, g, t.directions)
        return backend

    def result(self) -> GradStatsResult:
        """Statistics of the last backward (call after ONE backward of loss_per_example.sum())."""
        if self._error is not None:
            raise SublimError(self._error)
        if not self._backward_seen:
            raise SublimError("no gradient reached a tracked parameter: run backward inside the `with` block")
        B, dev = self._batch, self._device
        # rows of parameters that got no gradient this step are still zero
        sq = {t.name: self._sq_buf[t.index] for t in self._tracked.values()}
        dot = {t.name: self._dot_buf[t.index] for t in self._tracked.values() if t.directions is not None}
        total_sq = self._sq_buf.sum(0)
        # rows of parameters without directions are never written, so they add zero
        total_dot = self._dot_buf.sum(0) if self._dot_buf is not None else torch.zeros(B, 0, dtype=torch.float32, device=dev)
        return GradStatsResult(sq, dot, total_sq, total_dot)


def _autocast_input(x: Tensor, g: Tensor) -> Tensor:
    """Under autocast a Linear receives an fp32 input but computes (and backpropagates) with its
    bf16/fp16 copy, and its output gradient is bf16/fp16: the weight gradient autograd forms is
    g^T x_low. Using the same rounded x reproduces it (and keeps the kernels on the fast path)."""
    if x.dtype == torch.float32 and g.dtype in (torch.bfloat16, torch.float16):
        return x.to(g.dtype)
    return x


def _cat_tokens(tensors: list[Tensor], B: int) -> Tensor:
    """(B, ..., d) tensors -> one (B, T_total, d) tensor; a single use is only reshaped."""
    flat = [t.reshape(B, -1, t.shape[-1]) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _zero_padding(u: _Use, B: int) -> Tensor:
    """nn.Embedding never sends gradient to its padding_idx row: zero those tokens' g."""
    e = u.g.reshape(B, -1, u.g.shape[-1])
    if u.module.padding_idx is None:
        return e
    keep = (u.inp.reshape(B, -1) != u.module.padding_idx).to(e.dtype)
    return e * keep[:, :, None]
