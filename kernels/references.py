"""Obviously-correct references for per-example gradient statistics (slow; for tests and baselines).

Three independent routes to the same numbers, each in float64 unless told otherwise:
  * micro_batch_*: run backward once per example (or form G_i = g_i^T x_i one example at a time)
    and read the gradient off directly: no algebra to get wrong.
  * einsum_*: the whole-batch einsum forms (materialize all G_i at once; ghost Gram form).
  * vmap_grad_*: torch.func.vmap(grad) over examples, as Opacus/functorch users would write it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn


def _seq(t: Tensor) -> Tensor:
    return t[:, None, :] if t.dim() == 2 else t


def micro_batch_linear(x, g, directions=None, mask=None, bias=False, bias_directions=None):
    """Loop over examples, form G_i = sum_t g_t x_t^T in float64; returns a dict of float64 tensors."""
    x, g = _seq(x).double(), _seq(g).double()
    if mask is not None:
        # where, not a product: a masked token contributes nothing even if its g is NaN or inf
        g = torch.where((mask.reshape(g.shape[:2]) != 0)[:, :, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
    out = {"sq_norm": [], "dot": [], "bias_sq_norm": [], "bias_dot": []}
    for i in range(x.shape[0]):
        G = g[i].T @ x[i]
        out["sq_norm"].append((G * G).sum())
        if directions is not None:
            out["dot"].append((directions.double() * G).sum((1, 2)))
        if bias:
            gb = g[i].sum(0)
            out["bias_sq_norm"].append((gb * gb).sum())
            if bias_directions is not None:
                out["bias_dot"].append(bias_directions.double() @ gb)
    return {k: torch.stack(v) for k, v in out.items() if v}


def einsum_materialize(x, g, directions=None):
    """All per-example gradients at once (B, d_out, d_in): memory grows with B d_in d_out."""
    x, g = _seq(x).double(), _seq(g).double()
    G = torch.einsum("bto,bti->boi", g, x)
    sq = G.pow(2).sum((1, 2))
    dot = torch.einsum("boi,koi->bk", G, directions.double()) if directions is not None else None
    return sq, dot


def einsum_ghost(x, g):
    """Ghost norm: sum_{t,s} (x_t . x_s)(g_t . g_s) from the two per-example Gram matrices."""
    x, g = _seq(x).double(), _seq(g).double()
    return (torch.einsum("bti,bsi->bts", x, x) * torch.einsum("bto,bso->bts", g, g)).sum((1, 2))


def einsum_gd(x, g, directions):
    """<G_i, D_k> = sum_t g_t^T D_k x_t."""
    x, g = _seq(x).double(), _seq(g).double()
    return torch.einsum("bto,koi,bti->bk", g, directions.double(), x)


def vmap_grad_linear(x, g, directions=None):
    """torch.func: per-example gradient of sum_t <g_t, W x_t> wrt W (equals G_i), via vmap(grad)."""
    from torch.func import grad, vmap

    x, g = _seq(x).double(), _seq(g).double()
    W = torch.zeros(g.shape[2], x.shape[2], dtype=torch.float64, device=x.device)

    def surrogate(W, xi, gi):  # d/dW of sum_t g_t . (W x_t) is sum_t g_t x_t^T
        return (gi * (xi @ W.T)).sum()

    G = vmap(grad(surrogate), in_dims=(None, 0, 0))(W, x, g)
    sq = G.pow(2).sum((1, 2))
    dot = torch.einsum("boi,koi->bk", G, directions.double()) if directions is not None else None
    return sq, dot


def micro_batch_model(
    model: nn.Module,
    loss_of_example: Callable[[int], Tensor],
    batch: int,
    param_names: list[str],
    directions: Mapping[str, Tensor] | None = None,
):
    """Model-level reference: backward example by example, read param.grad, square and dot in
    float64. loss_of_example(i) must run the model on the full batch (so batch-dependent layers
    behave the same) and return example i's loss. Returns (sq: {name: (B,)}, dot: {name: (B,k)})."""
    params = dict(model.named_parameters())
    sq = {n: torch.zeros(batch, dtype=torch.float64) for n in param_names}
    dot = {n: [] for n in (directions or {})}
    for i in range(batch):
        model.zero_grad(set_to_none=True)
        loss_of_example(i).backward()
        for n in param_names:
            gr = params[n].grad
            gr = torch.zeros_like(params[n]) if gr is None else gr
            sq[n][i] = gr.double().pow(2).sum().cpu()
            if directions and n in directions:
                D = directions[n].double().to(gr.device)
                dot[n].append((D * gr.double()).reshape(D.shape[0], -1).sum(1).cpu())
    model.zero_grad(set_to_none=True)
    return sq, {n: torch.stack(v) for n, v in dot.items()}
