"""Plain-PyTorch per-example gradient statistics: the fallback backend and the fast PyTorch baseline.

Notation (one linear layer y = x W^T, W of shape (d_out, d_in)): x is (B, T, d_in), g = dL/dy is
(B, T, d_out). Example i's weight gradient is G_i = sum_t g_{i,t} x_{i,t}^T; it is never formed for
the whole batch at once:

  * ghost norm    ||G_i||^2 = sum_{t,s} (x_t . x_s)(g_t . g_s)       cost 2 B T^2 (d_in + d_out)
  * materialize   G_i for a few examples at a time, then square/dot  cost 2 B T d_in d_out
  * g-times-D     <G_i, D> = sum_t (g_t^T D) . x_t                   cost 2 k B T d_in d_out

Everything is computed in float32 whatever the input dtype (float64 inputs: in float64; inputs are
upcast chunk by chunk), so the only rounding is the accumulation; results are float32. Work is chunked over examples so that the extra memory is
bounded by `CHUNK_BYTES`, never proportional to B * d_in * d_out.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Upper bound on the temporary memory of one chunk (materialized gradients, Gram matrices).
CHUNK_BYTES = 256 * 2**20


# The backend interface (linear_stats.py calls these through one table, whatever the backend):
# triton_kernels.py defines the same three functions with the same signatures (a test compares
# them). Their keyword-only tuning parameters (splits, large_tiles, examples_per_load, flat) are
# launch options of the Triton kernels; here they are accepted and ignored, because the PyTorch
# formulas have one schedule each and split their work by CHUNK_BYTES instead.
TUNABLE = False  # no launch options to time: algorithm="auto" uses the cost model here


def _acc(t: Tensor) -> Tensor:
    """Upcast to the accumulation dtype: float32, or float64 for float64 inputs."""
    return t.double() if t.dtype == torch.float64 else t.float()


def zero_masked(g: Tensor, mask: Tensor) -> Tensor:
    """g (B, T, d) with the tokens where mask (B, T) is False set to exactly 0.

    torch.where, not g * mask: a masked token contributes nothing even when its g is NaN or inf
    (padding positions of a model's backward can hold either), where NaN * 0 = NaN would poison
    the whole example. The Triton kernels load masked tokens as 0 (tl.load other=0 / tl.where),
    so both backends give the same numbers."""
    return torch.where(mask[:, :, None], g, torch.zeros((), dtype=g.dtype, device=g.device))


def _masked(g: Tensor, mask: Tensor | None) -> Tensor:
    return g if mask is None else zero_masked(g, mask)


def accumulator(out: Tensor | None, shape: tuple, x: Tensor) -> Tensor:
    """Both backends ADD their statistics into their outputs: a given `out` must be zeroed (or hold
    a sum to add to), contiguous float32 of the right shape; else a fresh zero tensor."""
    if out is None:
        return torch.zeros(shape, dtype=torch.float32, device=x.device)
    if out.shape != shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != x.device:
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def _chunks(batch: int, bytes_per_example: int):
    """Yield example slices whose temporaries fit in CHUNK_BYTES (at least one example each)."""
    step = max(1, CHUNK_BYTES // max(1, bytes_per_example))
    for start in range(0, batch, step):
        yield slice(start, min(batch, start + step))


def ghost_sq_norm(x: Tensor, g: Tensor, *, mask: Tensor | None = None, with_bias: bool = False,
                  out_sq: Tensor | None = None, splits: int | None = None) -> tuple[Tensor, Tensor | None]:
    """||G_i||_F^2 from per-example Gram matrices (B, T, T), and the bias norm ||sum_t g_t||^2 if
    with_bias; x (B,T,d_in), g (B,T,d_out) -> ((B,), (B,) or None). mask (B, T) bool: False tokens
    count as g = 0. out_sq: (B,) float32 accumulator (see accumulator). splits: ignored (see top)."""
    g = _masked(g, mask)
    B, T, d_in = x.shape
    sq = accumulator(out_sq, (B,), x)
    for sl in _chunks(B, (2 * T * T + T * (d_in + g.shape[2])) * 4):  # Grams + fp32 copies
        xs, gs = _acc(x[sl]), _acc(g[sl])
        sq[sl] += (torch.bmm(xs, xs.transpose(1, 2)) * torch.bmm(gs, gs.transpose(1, 2))).sum((1, 2)).float()
    return sq, (bias_stats(g, None)[0] if with_bias else None)


def materialize_stats(x: Tensor, g: Tensor, directions: Tensor | None, *, mask: Tensor | None = None,
                      out_sq: Tensor | None = None, out_dot: Tensor | None = None,
                      examples_per_load: int | None = None, flat: bool = False) -> tuple[Tensor, Tensor | None]:
    """Form G_i for a chunk of examples, reduce to ||G_i||^2 (B,) and <G_i, D_k> (B, k) (None without
    directions); chunks bound memory. examples_per_load, flat: ignored (see top)."""
    g = _masked(g, mask)
    B, T, d_in = x.shape
    d_out = g.shape[2]
    sq = accumulator(out_sq, (B,), x)
    dots = None
    if directions is not None:
        k = directions.shape[0]
        dots = accumulator(out_dot, (B, k), x)
        d_flat = _acc(directions.reshape(k, d_out * d_in))
    for sl in _chunks(B, (d_in * d_out + T * (d_in + d_out)) * 4):
        gs, xs = _acc(g[sl]), _acc(x[sl])
        dt = torch.promote_types(gs.dtype, xs.dtype)
        grads = torch.bmm(gs.to(dt).transpose(1, 2), xs.to(dt))  # (b, d_out, d_in)
        rows = grads.reshape(grads.shape[0], -1)
        sq[sl] += (rows * rows).sum(1).float()
        if dots is not None:
            dots[sl] += (rows @ d_flat.to(rows.dtype).T).float()
    return sq, dots


def gd_dots(x: Tensor, g: Tensor, directions: Tensor, *, mask: Tensor | None = None,
            out_dot: Tensor | None = None, large_tiles: bool = False) -> Tensor:
    """<G_i, D_k> = sum_t (g_t^T D_k) . x_t, one direction at a time; (B, k). large_tiles: ignored
    (see top)."""
    g = _masked(g, mask)
    B, T, d_in = x.shape
    k = directions.shape[0]
    out = accumulator(out_dot, (B, k), x)
    for sl in _chunks(B, T * (3 * d_in + g.shape[2]) * 4):
        xs, gs = _acc(x[sl]), _acc(g[sl])
        for j in range(k):
            out[sl, j] += ((gs @ directions[j].to(gs.dtype)) * xs).sum((1, 2)).float()
    return out


# Not part of the interface: the bias statistics are tiny (B x d_out), and the embedding / tied-head
# formulas have no Triton version; both backends' callers use these.
def bias_stats(g: Tensor, directions: Tensor | None, *, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Bias gradient of example i is sum_t g_{i,t}: tiny, formed directly. g (B,T,d_out)."""
    per_example = _acc(_masked(g, mask)).sum(1)  # (B, d_out)
    sq = (per_example * per_example).sum(1).float()
    dots = (per_example @ directions.to(per_example.dtype).T).float() if directions is not None else None
    return sq, dots


def embedding_stats(
    idx: Tensor, e: Tensor, directions: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Embedding weight (V, d): G_i[v] = sum_{t: idx_t = v} e_t.

    ||G_i||^2 = sum_{t,s} [idx_t == idx_s] (e_t . e_s)  and  <G_i, D_k> = sum_t D_k[idx_t] . e_t.
    idx (B, T) integer, e (B, T, d) the gradient wrt the embedding output (padding rows already 0).
    """
    B, T, d = e.shape
    sq = torch.empty(B, dtype=torch.float32, device=e.device)
    for sl in _chunks(B, T * T * 4 * 2):
        es = _acc(e[sl])
        same = idx[sl, :, None] == idx[sl, None, :]
        sq[sl] = (torch.bmm(es, es.transpose(1, 2)) * same).sum((1, 2))
    dots = None
    if directions is not None:
        k = directions.shape[0]
        dots = torch.empty(B, k, dtype=torch.float32, device=e.device)
        for sl in _chunks(B, T * d * 4 * 2):
            es = _acc(e[sl])
            for j in range(k):
                dots[sl, j] = (directions[j][idx[sl]].to(es.dtype) * es).sum((1, 2))
    return sq, dots


def embedding_linear_cross(idx: Tensor, e: Tensor, x: Tensor, g: Tensor) -> Tensor:
    """<G_emb,i, G_lin,i> for a weight used both as an embedding table and as a linear layer (a tied
    output head). G_lin = sum_s g_s x_s^T with g in R^V, x in R^d, so the inner product is
    sum_{t,s} g_s[idx_t] (e_t . x_s). idx (B,T), e (B,T,d), x (B,S,d), g (B,S,V) -> (B,)."""
    B, T = idx.shape
    S = x.shape[1]
    out = torch.empty(B, dtype=torch.float32, device=e.device)
    for sl in _chunks(B, S * T * 4 * 2):
        b = idx[sl].shape[0]
        picked = _acc(torch.gather(g[sl], 2, idx[sl][:, None, :].expand(b, S, T)))  # (b, S, T)
        ex = torch.bmm(_acc(e[sl]), _acc(x[sl]).to(_acc(e[sl]).dtype).transpose(1, 2))  # (b, T, S)
        out[sl] = (picked.transpose(1, 2).to(ex.dtype) * ex).sum((1, 2))
    return out
