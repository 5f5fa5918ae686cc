"""Model-level per-example gradient statistics via forward/backward hooks.

    with PerExampleGradStats(model, directions) as st:
        loss_per_example.sum().backward()
    r = st.result()   # r.sq_norm[name] (B,), r.dot[name] (B, k), r.total_sq_norm, r.total_dot

How it works. A forward hook on every nn.Linear / nn.Embedding that owns a tracked parameter keeps
the module input (autograd keeps it alive anyway) and puts a hook on the output that captures
g = dL/d(output) during backward. A hook on the parameter itself fires once its full gradient is
ready, i.e. after every use of it has delivered its g; the statistics of that parameter are computed
right there and the captured tensors are dropped, so at most one layer's g is held at a time (a tied
embedding/output-head weight holds the head's g until the embedding's g arrives).

A parameter used several times (a module called twice, or a weight tied between an embedding and an
output head) gets the statistics of its TOTAL per-example gradient: linear uses are concatenated
along the token axis (G = sum over all tokens of all uses), and the embedding/linear cross term of a
tied head is added exactly (torch_backend.embedding_linear_cross), so norms are of the sum, never a
sum of norms.

Not supported (clear error or documented): modules other than nn.Linear / nn.Embedding owning a
tracked parameter; Linear subclasses with their own forward; parameters used functionally
(F.linear(x, module.weight)) are caught when the parameter receives a gradient but its module's
forward never ran; gradient checkpointing (recomputed forwards) is not supported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from sublim.errors import ConfigError, SublimError
from sublim.kernels import torch_backend
from sublim.kernels.linear_stats import compute_checked, resolve_backend


@dataclass
class GradStatsResult:
    sq_norm: dict[str, Tensor]  # name -> (B,) fp32, squared norm of example i's gradient
    dot: dict[str, Tensor]  # name -> (B, k) fp32, only parameters that have directions
    total_sq_norm: Tensor  # (B,) over all tracked parameters
    total_dot: Tensor  # (B, k); (B, 0) without directions


@dataclass
class _Use:
    """One call of a module during the forward: its input and (after backward) its output grad."""

    kind: str  # "linear" or "embedding"
    module_name: str
    inp: Tensor
    padding_idx: int | None = None
    g: Tensor | None = None


@dataclass
class _Tracked:
    name: str
    param: nn.Parameter
    role: str  # "weight" or "bias"
    directions: Tensor | None = None
    uses: list = field(default_factory=list)
    index: int = 0  # row of the per-step result buffers


def _supported(module: nn.Module, role: str) -> str | None:
    """None if (module, role) is supported, else the reason why not."""
    if isinstance(module, nn.Linear):
        if type(module).forward is not nn.Linear.forward:
            return f"{type(module).__name__} overrides nn.Linear.forward"
        return None
    if isinstance(module, nn.Embedding):
        if type(module).forward is not nn.Embedding.forward:
            return f"{type(module).__name__} overrides nn.Embedding.forward"
        if module.scale_grad_by_freq:
            return "nn.Embedding(scale_grad_by_freq=True) is not supported"
        return None if role == "weight" else f"unexpected parameter {role!r} of nn.Embedding"
    return f"module type {type(module).__name__} is not supported (only nn.Linear and nn.Embedding)"


def supported_param_names(model: nn.Module) -> list[str]:
    """Trainable parameters owned only by supported modules (e.g. all Linear/Embedding weights of an
    LLM, leaving out norm gains): a convenient `param_names` for a full fine-tune."""
    owners = _owners(model)
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and owners.get(id(p)) and all(_supported(m, r) is None for _, m, r in owners[id(p)])
    ]


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
        if backend not in ("auto", "triton", "torch"):
            raise ConfigError(f"unknown backend {backend!r} (auto, triton, torch)")
        self.model = model
        self.backend = backend
        named = dict(model.named_parameters())
        owners = _owners(model)
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

        self._tracked: dict[int, _Tracked] = {}
        self._modules: dict[int, tuple[str, nn.Module, list[_Tracked]]] = {}
        for n in names:
            p = named[n]
            mods = owners.get(id(p), [])
            roles = {r for _, _, r in mods}
            for mname, mod, role in mods:
                why = _supported(mod, role)
                if why is not None:
                    raise SublimError(f"parameter {n!r} (in module {mname!r}): {why}")
            if len(roles) != 1:
                raise SublimError(f"parameter {n!r} is used as {sorted(roles)} in different modules")
            t = _Tracked(n, p, roles.pop(), index=len(self._tracked))
            self._tracked[id(p)] = t
            for mname, mod, role in mods:
                entry = self._modules.setdefault(id(mod), (mname, mod, []))
                entry[2].append(t)

        self.k = 0
        if directions:
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
            self.k = ks.pop()
        self._handles: list = []
        self._backends: dict = {}
        self._reset()

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "PerExampleGradStats":
        self._reset()
        for _, (mname, mod, _tracked) in self._modules.items():
            self._handles.append(mod.register_forward_hook(self._make_forward_hook(mname)))
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
    def _make_forward_hook(self, mname: str):
        def hook(mod, inputs, output):
            if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad:
                return
            t0 = time.perf_counter()
            if self._backward_seen:  # a new step began: forget the previous one
                self._reset()
            if not inputs or (not isinstance(mod, nn.Embedding) and inputs[0].dim() < 2):
                if self._error is None:
                    self._error = (
                        f"module {mname!r} must be called with a positional input of shape (B, ..., d); "
                        "the first dimension is the batch"
                    )
                return
            inp = inputs[0]
            if isinstance(mod, nn.Embedding):
                use = _Use("embedding", mname, inp.detach(), mod.padding_idx)
            else:
                use = _Use("linear", mname, inp.detach())
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
            for t in self._modules[id(mod)][2]:
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
        B = self._batch
        lin = [u for u in uses if u.kind == "linear"]
        emb = [u for u in uses if u.kind == "embedding"]
        D = t.directions
        sq = self._sq_buf[t.index]  # this parameter's rows of the step's buffers (zeros until now)
        dot = self._dot_buf[t.index] if D is not None else None
        if t.role == "weight" and len(lin) == 1 and not emb:
            # the common case (one nn.Linear call per step): no concatenation, no re-checks
            x, g = _autocast_input(lin[0].inp, lin[0].g), lin[0].g
            x = x.reshape(B, -1, x.shape[-1])
            g = g.reshape(B, -1, g.shape[-1])
            if x.shape[1] != g.shape[1]:
                raise SublimError(f"module {lin[0].module_name!r}: input and output token counts differ")
            compute_checked(x, g, D, None, self._backend_for(t, x, g), out_sq=sq, out_dot=dot)
            return

        if t.role == "bias":
            g = torch.cat([u.g.reshape(B, -1, u.g.shape[-1]) for u in lin], dim=1)
            b_sq, b_dot = torch_backend.bias_stats(g, D)
            sq += b_sq
            if dot is not None:
                dot += b_dot
        else:
            x = g = None
            if lin:
                x = _cat_tokens([_autocast_input(u.inp, u.g) for u in lin], B)
                g = _cat_tokens([u.g for u in lin], B)
                compute_checked(x, g, D, None, self._backend_for(t, x, g), out_sq=sq, out_dot=dot)
            if emb:
                idx = torch.cat([u.inp.reshape(B, -1) for u in emb], dim=1)
                e = torch.cat([_zero_padding(u, B) for u in emb], dim=1)
                e_sq, e_dot = torch_backend.embedding_stats(idx, e, D)
                sq += e_sq
                if dot is not None:
                    dot += e_dot
                if lin:
                    sq += 2.0 * torch_backend.embedding_linear_cross(idx, e, x, g)

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
    if u.padding_idx is None:
        return e
    keep = (u.inp.reshape(B, -1) != u.padding_idx).to(e.dtype)
    return e * keep[:, :, None]
