"""Triton kernels for per-example gradient statistics of a linear layer (see linear_stats.py).

Three kernels, each one pass over x and g, fp32 accumulation, nothing of size d_in * d_out * B
written to memory (outputs are (B,) and (B, k) fp32, accumulated with atomics):

  ghost (2 kernels)    program = (example i, pair of token tiles (t, s) with s >= t, split of the
                       features). Builds the Gram tiles X_t X_s^T and G_t G_s^T with tl.dot over
                       its slice of d_in / d_out; the split partials (B x T x T fp32 per split,
                       small next to x and g) are summed, multiplied elementwise and reduced by a
                       second kernel: ||G_i||^2 = sum_{t,s} (x_t.x_s)(g_t.g_s). Off-diagonal pairs
                       count twice (symmetry). The bias norm ||sum_t g_t||^2 is the sum of the
                       G G^T entries, so it comes free. With one split and small tiles a single
                       fused kernel does everything.
  _materialize_kernel  program = (tile of d_out x d_in, group of examples). For EX examples at a
                       time (1, 2 or 4; one flattened example x token loop in the flat variant),
                       forms the gradient
                       tiles G_e[rows, cols] = g_e[:, rows]^T x_e[:, cols] with one batched tl.dot
                       over tokens, then reduces sum(G^2) and sum(G * D_k) on chip: each direction
                       tile is loaded once per EX examples, and the per-direction sums stay row
                       sums in registers until one cross-warp reduction per tile and EX examples.
  _gd_kernel           program = (block of tokens, block of d_in, direction k). acc = g D_k (tl.dot
                       over d_out), then rows of acc . x give per-token <g_t, D_k x_t>, scattered
                       into their example with atomics. Best for short sequences (T ~ 1).

fp32 inputs use input_precision="ieee" (TF32 would cost ~3 decimal digits); fp16/bf16 use the
tensor cores with fp32 accumulation. The launchers below choose tile sizes from the shape.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from sublim.kernels.torch_backend import accumulator

# The backend interface: ghost_sq_norm, gd_dots and materialize_stats below have the signatures of
# their torch_backend.py twins (a test compares them), so linear_stats.py calls either backend the
# same way. Their launch options (splits, large_tiles, examples_per_load, flat) are what
# algorithm="auto" times on CUDA (linear_stats.measured_algorithm).
TUNABLE = True

_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


# Triton's CPU interpreter (3.9) computes tl.dot on bfloat16 operands wrongly (it multiplies the raw
# bits); there we upcast bf16 to fp32 before tl.dot, which is exact, so results are unchanged.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """One dtype for the operands of a tl.dot: the common one, else float32."""
    dts = {t.dtype for t in tensors if t is not None}
    dt = dts.pop() if len(dts) == 1 else torch.float32
    if _INTERPRET and dt == torch.bfloat16:
        dt = torch.float32
    return dt


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    if not torch.cuda.is_available():
        return 4  # interpreter: any small number
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sms(t: Tensor) -> int:
    return _sm_count(t.device.index or 0) if t.is_cuda else 4


@functools.lru_cache(maxsize=64)
def _pair_table(n: int, device: str) -> tuple[Tensor, Tensor]:
    ts, ss = zip(*[(a, b) for a in range(n) for b in range(a, n)])
    return (
        torch.tensor(ts, dtype=torch.int32, device=device),
        torch.tensor(ss, dtype=torch.int32, device=device),
    )


def _mask_arg(mask: Tensor | None, x: Tensor):
    """The mask as int8 (B, T) with its strides, or a dummy pointer when there is none."""
    if mask is None:
        return x, 0, 0
    m = mask.to(torch.int8)
    return m, m.stride(0), m.stride(1)


# ------------------------------------------------------------------------------------------------
# ghost norm
# ------------------------------------------------------------------------------------------------
# Phase 1: program (example i, token-tile pair p, feature split s) forms the Gram tiles
# X_t X_s^T over its slice of d_in and G_t G_s^T over its slice of d_out. With one split and small
# tiles (FUSED) it reduces sum(XX * GG) at once; otherwise it stores both partial tiles and phase 2
# sums the splits, multiplies and reduces. Splitting d gives enough programs to saturate memory
# bandwidth when B is small, and still reads each element of x and g once (with a single token
# tile, DIAG_ONLY, the second operand is the transpose of the first: one load).
@triton.jit
def _ghost_partial_kernel(
    x_ptr, g_ptr, mask_ptr, pair_t_ptr, pair_s_ptr, px_ptr, pg_ptr, out_w_ptr, out_b_ptr,
    B, T, D_IN, D_OUT, CH_IN, CH_OUT, N_PAIRS,
    sxb, sxt, sxd, sgb, sgt, sgd, smb, smt,
    FUSED: tl.constexpr, DIAG_ONLY: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, PREC_X: tl.constexpr, PREC_G: tl.constexpr,
    CDT_X: tl.constexpr, CDT_G: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    sp = tl.program_id(2)
    ti = tl.load(pair_t_ptr + p)
    si = tl.load(pair_s_ptr + p)
    rt = ti * BT + tl.arange(0, BT)
    rs = si * BT + tl.arange(0, BT)
    vt = rt < T
    vs = rs < T

    xx = _gram_tile(x_ptr + i * sxb, sxt, sxd, rt, rs, vt, vs, sp * CH_IN, CH_IN, D_IN, DIAG_ONLY, BT, BK, PREC_X, CDT_X)
    tile = tl.arange(0, BT)[:, None] * BT + tl.arange(0, BT)[None, :]
    part = ((sp * B + i) * N_PAIRS + p) * (BT * BT)
    if not FUSED:
        tl.store(px_ptr + part + tile, xx)
    gg = _gram_tile(g_ptr + i * sgb, sgt, sgd, rt, rs, vt, vs, sp * CH_OUT, CH_OUT, D_OUT, DIAG_ONLY, BT, BK, PREC_G, CDT_G)

    if FUSED:
        _ghost_reduce(xx, gg, mask_ptr, out_w_ptr, out_b_ptr, i, ti, si, rt, rs, vt, vs, smb, smt, HAS_MASK, HAS_BIAS)
    else:
        tl.store(pg_ptr + part + tile, gg)


@triton.jit
def _gram_tile(base, st, sd, rt, rs, vt, vs, lo, CH, D, DIAG_ONLY: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               PREC: tl.constexpr, CDT: tl.constexpr):
    """A[rt] A[rs]^T over features [lo, lo + CH) of one example's (T, D) matrix A at `base`, fp32
    (the X X^T or G G^T tile of the ghost norm). DIAG_ONLY: rt == rs, the second operand is the
    transpose of the first (one load)."""
    kk = tl.arange(0, BK)
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    hi = tl.minimum(lo + CH, D)
    for k0 in range(lo, hi, BK):
        vk = (k0 + kk) < hi
        a = tl.load(base + rt[:, None] * st + (k0 + kk)[None, :] * sd, mask=vt[:, None] & vk[None, :], other=0.0)
        a = a.to(CDT)
        if DIAG_ONLY:
            b = tl.trans(a)
        else:
            b = tl.load(base + rs[None, :] * st + (k0 + kk)[:, None] * sd, mask=vk[:, None] & vs[None, :], other=0.0)
            b = b.to(CDT)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def _ghost_reduce(xx, gg, mask_ptr, out_w_ptr, out_b_ptr, i, ti, si, rt, rs, vt, vs, smb, smt,
                  HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr):
    """sum(XX * GG) of one token-tile pair (masked tokens have g = 0), doubled off the diagonal."""
    if HAS_MASK:
        mt = tl.load(mask_ptr + i * smb + rt * smt, mask=vt, other=0) != 0
        ms = tl.load(mask_ptr + i * smb + rs * smt, mask=vs, other=0) != 0
        gg = tl.where(mt[:, None] & ms[None, :], gg, 0.0)
    factor = tl.where(ti == si, 1.0, 2.0)
    tl.atomic_add(out_w_ptr + i, tl.sum(tl.sum(xx * gg, axis=1), axis=0) * factor)
    if HAS_BIAS:
        tl.atomic_add(out_b_ptr + i, tl.sum(tl.sum(gg, axis=1), axis=0) * factor)


@triton.jit
def _ghost_combine_kernel(
    px_ptr, pg_ptr, mask_ptr, pair_t_ptr, pair_s_ptr, out_w_ptr, out_b_ptr,
    B, T, N_SPLITS, N_PAIRS, smb, smt,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, BT: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    ti = tl.load(pair_t_ptr + p)
    si = tl.load(pair_s_ptr + p)
    rt = ti * BT + tl.arange(0, BT)
    rs = si * BT + tl.arange(0, BT)
    tile = tl.arange(0, BT)[:, None] * BT + tl.arange(0, BT)[None, :]
    xx = tl.zeros((BT, BT), dtype=tl.float32)
    gg = tl.zeros((BT, BT), dtype=tl.float32)
    for sp in range(0, N_SPLITS):
        part = ((sp * B + i) * N_PAIRS + p) * (BT * BT)
        xx += tl.load(px_ptr + part + tile)
        gg += tl.load(pg_ptr + part + tile)
    _ghost_reduce(xx, gg, mask_ptr, out_w_ptr, out_b_ptr, i, ti, si, rt, rs, rt < T, rs < T, smb, smt,
                  HAS_MASK, HAS_BIAS)


def ghost_plan(B: int, T: int, d_in: int, d_out: int, sms: int, splits: int | None = None) -> tuple[int, int, int]:
    """(token tile BT, number of tile pairs, feature splits S) for the ghost kernels.

    Large layers: BT covers the whole sequence up to 128 tokens (one tile: each x/g element is
    loaded once), else 128-token tiles; the features are split so that there are about one wave of
    programs, keeping at least 2048 features per split so the partial Gram tiles stay small next to
    x and g. Small layers (one split): one fused kernel with tiles of at most 64 tokens (both Gram
    tiles must fit in registers); its re-reads of x and g hit L2."""
    BT = min(128, max(16, triton.next_power_of_2(T)))
    n = triton.cdiv(T, BT)
    pairs = n * (n + 1) // 2
    # at most one wave: a second, mostly empty wave costs as much as the first
    S = splits or max(1, min(sms // (B * pairs), (d_in + d_out) // 2048))
    if S == 1 and BT > 64:
        BT = 64
        n = triton.cdiv(T, BT)
        pairs = n * (n + 1) // 2
    return BT, pairs, S


@functools.lru_cache(maxsize=1024)
def _ghost_launch_plan(B: int, T: int, d_in: int, d_out: int, device: torch.device, sms: int, splits: int | None):
    """Everything about a ghost launch that depends only on the shape (cached: the model-level hooks
    call this once per layer per step, and host time per call matters there)."""
    BT, n_pairs, S = ghost_plan(B, T, d_in, d_out, sms, splits)
    BK = 64 if device.type == "cuda" else 16
    fused = S == 1 and BT <= 64
    ch_in = triton.cdiv(triton.cdiv(d_in, S), BK) * BK
    ch_out = triton.cdiv(triton.cdiv(d_out, S), BK) * BK
    pt, ps = _pair_table(triton.cdiv(T, BT), str(device))
    return BT, n_pairs, S, BK, fused, ch_in, ch_out, pt, ps


def ghost_sq_norm(x: Tensor, g: Tensor, *, mask: Tensor | None = None, with_bias: bool = False,
                  out_sq: Tensor | None = None, splits: int | None = None) -> tuple[Tensor, Tensor | None]:
    """x (B,T,d_in), g (B,T,d_out) -> (||G_i||^2 (B,), ||b_i||^2 (B,) or None); mask (B, T) bool.

    splits: how many programs share one example's features (None: ghost_plan decides).
    out_sq: optional (B,) float32 accumulator for ||G_i||^2 (added to; see accumulator)."""
    B, T, d_in = x.shape
    d_out = g.shape[2]
    if out_sq is None:  # weight and bias in one memset
        out = torch.zeros(2 if with_bias else 1, B, dtype=torch.float32, device=x.device)
        out_w, out_b = out[0], out[-1]
    else:
        out_w = accumulator(out_sq, (B,), x)
        out_b = torch.zeros(B, dtype=torch.float32, device=x.device) if with_bias else out_w
    if B == 0 or T == 0:
        return out_w, (out_b if with_bias else None)
    BT, n_pairs, S, BK, fused, ch_in, ch_out, pt, ps = _ghost_launch_plan(B, T, d_in, d_out, x.device, _device_sms(x), splits)
    m, smb, smt = _mask_arg(mask, x)
    cx, cg = _compute_dtype(x), _compute_dtype(g)
    if fused:
        px = pg = out_w  # unused pointers in the fused kernel
    else:  # every element is written by phase 1, so no zero-fill
        part = torch.empty(2, S * B * n_pairs * BT * BT, dtype=torch.float32, device=x.device)
        px, pg = part[0], part[1]
    _ghost_partial_kernel[(B, n_pairs, S)](
        x, g, m, pt, ps, px, pg, out_w, out_b,
        B, T, d_in, d_out, ch_in, ch_out, n_pairs,
        x.stride(0), x.stride(1), x.stride(2), g.stride(0), g.stride(1), g.stride(2), smb, smt,
        FUSED=fused, DIAG_ONLY=n_pairs == 1, HAS_MASK=mask is not None, HAS_BIAS=with_bias,
        BT=BT, BK=BK, PREC_X=_precision(cx), PREC_G=_precision(cg), CDT_X=_TL_DTYPE[cx], CDT_G=_TL_DTYPE[cg],
        num_warps=8 if BT >= 128 else 4,
    )
    if not fused:
        _ghost_combine_kernel[(B, n_pairs)](
            px, pg, m, pt, ps, out_w, out_b, B, T, S, n_pairs, smb, smt,
            HAS_MASK=mask is not None, HAS_BIAS=with_bias, BT=BT, num_warps=8 if BT >= 128 else 4,
        )
    return out_w, (out_b if with_bias else None)


# ------------------------------------------------------------------------------------------------
# materialize on chip
# ------------------------------------------------------------------------------------------------
@triton.jit
def _grad_tile_step(acc, x_ptr, g_ptr, mask_ptr, i, t0, rm, rn, vm, vn, T, sxb, sxt, sxd, sgb, sgt, sgd, smb, smt,
                    HAS_MASK: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, CDT: tl.constexpr):
    """acc + g_i[t0:t0+BT, rows]^T x_i[t0:t0+BT, cols] (one token block of example i's gradient tile)."""
    rt = t0 + tl.arange(0, BT)
    vt = rt < T
    gmask = vm[:, None] & vt[None, :]
    if HAS_MASK:
        mt = tl.load(mask_ptr + i * smb + rt * smt, mask=vt, other=0)
        gmask = gmask & (mt != 0)[None, :]
    gt = tl.load(g_ptr + i * sgb + rt[None, :] * sgt + rm[:, None] * sgd, mask=gmask, other=0.0)  # (BM, BT) = g^T
    xt = tl.load(x_ptr + i * sxb + rt[:, None] * sxt + rn[None, :] * sxd, mask=vt[:, None] & vn[None, :], other=0.0)
    return tl.dot(gt.to(CDT), xt.to(CDT), acc, input_precision=PREC)


@triton.jit
def _grad_tiles(x_ptr, g_ptr, mask_ptr, ie, ve, rm, rn, vm, vn, T, sxb, sxt, sxd, sgb, sgt, sgd, smb, smt,
                HAS_MASK: tl.constexpr, EX: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BT: tl.constexpr, PREC: tl.constexpr, CDT: tl.constexpr):
    """G_e[rows, cols] = sum_t g_e[t, rows] x_e[t, cols] for EX examples at once: (EX, BM, BN) fp32.

    One batched (3-D) tl.dot per token block; examples outside the batch (ve False) load zeros.
    EX == 1 uses plain 2-D tiles and tl.dot (the batched form is younger in Triton's compiler)."""
    if EX == 1:
        i = tl.sum(ie, axis=0)  # the one example, as a scalar (always inside the batch when EX == 1)
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)
        for t0 in range(0, T, BT):
            acc2 = _grad_tile_step(acc2, x_ptr, g_ptr, mask_ptr, i, t0, rm, rn, vm, vn, T, sxb, sxt, sxd,
                                   sgb, sgt, sgd, smb, smt, HAS_MASK, BT, PREC, CDT)
        return acc2[None, :, :]
    acc = tl.zeros((EX, BM, BN), dtype=tl.float32)
    for t0 in range(0, T, BT):
        rt = t0 + tl.arange(0, BT)
        vt = rt < T
        gmask = ve[:, None, None] & vm[None, :, None] & vt[None, None, :]
        if HAS_MASK:
            mt = tl.load(mask_ptr + ie[:, None] * smb + rt[None, :] * smt, mask=ve[:, None] & vt[None, :], other=0)
            gmask = gmask & (mt != 0)[:, None, :]
        gt = tl.load(g_ptr + ie[:, None, None] * sgb + rt[None, None, :] * sgt + rm[None, :, None] * sgd,
                     mask=gmask, other=0.0)  # (EX, BM, BT) = g^T
        xt = tl.load(x_ptr + ie[:, None, None] * sxb + rt[None, :, None] * sxt + rn[None, None, :] * sxd,
                     mask=ve[:, None, None] & vt[None, :, None] & vn[None, None, :], other=0.0)  # (EX, BT, BN)
        acc = tl.dot(gt.to(CDT), xt.to(CDT), acc, input_precision=PREC)
    return acc


@triton.jit
def _add_direction_dots(acc, ie, ve, dir_ptr, rm, rn, vm, vn, sdk, sdo, sdi, out_dot_ptr,
                        K: tl.constexpr, KP: tl.constexpr):
    """out_dot[ie[e], j] += sum(acc[e] * D_j[rows, cols]) for the EX gradient tiles acc (EX, BM, BN).

    Each (example, direction) reduces only along the columns (within a warp: shuffles); the row
    sums stay in a (EX, BM, KP) register tile, and ONE cross-warp reduction per call turns them into
    EX x K numbers, sent with one vector atomic. A full reduction per (example, direction) needs a
    cross-warp exchange through shared memory and barriers each time: measured on a GPU, that form
    ran 30-60x above the kernel's roofline."""
    EX: tl.constexpr = acc.shape[0]
    BM: tl.constexpr = acc.shape[1]
    kk = tl.arange(0, KP)
    rows = tl.zeros((EX, BM, KP), dtype=tl.float32)
    d_offs = rm[:, None] * sdo + rn[None, :] * sdi
    d_valid = vm[:, None] & vn[None, :]
    # a loop, not unrolled: unrolling hoists all K direction-tile loads into registers at once.
    # Only a scalar base pointer is carried (advanced by sdk: j * sdk can pass 2^31), not a tile of
    # pointers, which would pin a layout and a register per element.
    d_base = dir_ptr
    for j in range(K):
        d = tl.load(d_base + d_offs, mask=d_valid, other=0.0, eviction_policy="evict_last").to(tl.float32)
        r = tl.sum(acc * d[None, :, :], axis=2)  # (EX, BM)
        rows += tl.where(kk[None, None, :] == j, r[:, :, None], 0.0)
        d_base += sdk
    dots = tl.sum(rows, axis=1)  # (EX, KP)
    tl.atomic_add(out_dot_ptr + ie[:, None] * K + kk[None, :], dots, mask=ve[:, None] & (kk[None, :] < K))


@triton.jit
def _materialize_kernel(
    x_ptr, g_ptr, mask_ptr, dir_ptr, out_sq_ptr, out_dot_ptr,
    B, T, D_IN, D_OUT, EX_PER_PROG, N_TILES,
    sxb, sxt, sxd, sgb, sgt, sgd, smb, smt, sdk, sdo, sdi,
    K: tl.constexpr, KP: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DIR: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, CDT: tl.constexpr,
    EX: tl.constexpr,
):
    # Programs over tiles of W (grid dim 0; a program loops if there are fewer programs than
    # tiles); grid dim 1 = groups of examples, used when the tiles alone do not fill the GPU.
    # For each tile the program walks its examples EX at a time: the EX gradient tiles are formed
    # together (one batched tl.dot), and every direction tile is loaded once per EX examples
    # (_add_direction_dots).
    pid_grp = tl.program_id(1)
    n_col_tiles = tl.cdiv(D_IN, BN)
    ee = tl.arange(0, EX)
    first = pid_grp * EX_PER_PROG
    last = tl.minimum(first + EX_PER_PROG, B)
    for tile in range(tl.program_id(0), N_TILES, tl.num_programs(0)):
        rm = (tile // n_col_tiles) * BM + tl.arange(0, BM)  # rows of W (d_out)
        rn = (tile % n_col_tiles) * BN + tl.arange(0, BN)  # columns of W (d_in)
        vm = rm < D_OUT
        vn = rn < D_IN
        for e0 in range(first, last, EX):
            ie = (e0 + ee).to(tl.int64)
            ve = ie < last
            acc = _grad_tiles(x_ptr, g_ptr, mask_ptr, ie, ve, rm, rn, vm, vn, T, sxb, sxt, sxd,
                              sgb, sgt, sgd, smb, smt, HAS_MASK, EX, BM, BN, BT, PREC, CDT)
            tl.atomic_add(out_sq_ptr + ie, tl.sum(tl.sum(acc * acc, axis=2), axis=1), mask=ve)
            if HAS_DIR:
                _add_direction_dots(acc, ie, ve, dir_ptr, rm, rn, vm, vn, sdk, sdo, sdi, out_dot_ptr, K, KP)


@triton.jit
def _materialize_flat_kernel(
    x_ptr, g_ptr, mask_ptr, dir_ptr, out_sq_ptr, out_dot_ptr,
    B, T, D_IN, D_OUT, EX_PER_PROG,
    sxb, sxt, sxd, sgb, sgt, sgd, smb, smt, sdk, sdo, sdi,
    K: tl.constexpr, KP: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DIR: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, CDT: tl.constexpr,
):
    # The same statistics as _materialize_kernel with one example at a time, but the example and
    # token loops are ONE loop (the shape of Triton's persistent-matmul tutorial): the software
    # pipeliner then prefetches the next example's x/g tiles while the current example finishes,
    # instead of draining at every example boundary. With T = 128 the token loop alone has 2-4
    # steps, too short to hide the memory latency; the H200 measured the nested form at ~65 TFLOP/s.
    # The per-example epilogue (squares, direction dots, atomics) runs under an `if` in the loop.
    tile = tl.program_id(0)
    n_col_tiles = tl.cdiv(D_IN, BN)
    rm = (tile // n_col_tiles) * BM + tl.arange(0, BM)  # rows of W (d_out)
    rn = (tile % n_col_tiles) * BN + tl.arange(0, BN)  # columns of W (d_in)
    vm = rm < D_OUT
    vn = rn < D_IN
    first = tl.program_id(1) * EX_PER_PROG
    n_ex = tl.minimum(EX_PER_PROG, B - first)
    n_tb = tl.cdiv(T, BT)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for it in range(0, n_ex * n_tb):
        i = (first + it // n_tb).to(tl.int64)
        tb = it % n_tb
        acc = _grad_tile_step(acc, x_ptr, g_ptr, mask_ptr, i, tb * BT, rm, rn, vm, vn, T, sxb, sxt, sxd,
                              sgb, sgt, sgd, smb, smt, HAS_MASK, BT, PREC, CDT)
        if tb == n_tb - 1:  # example i is complete: reduce its tile, then start the next one
            tl.atomic_add(out_sq_ptr + i, tl.sum(tl.sum(acc * acc, axis=1), axis=0))
            if HAS_DIR:
                _add_direction_dots(acc[None, :, :], i + tl.zeros((1,), dtype=tl.int64), tl.full((1,), True, tl.int1),
                                    dir_ptr, rm, rn, vm, vn, sdk, sdo, sdi, out_dot_ptr, K, KP)
            acc = tl.zeros((BM, BN), dtype=tl.float32)


def materialize_plan(B: int, d_in: int, d_out: int, k: int, cuda: bool,
                     examples_per_load: int | None = None) -> tuple[int, int, int, int, int]:
    """(BM, BN, BT, EX, num_warps) of the materialize kernel.

    Norm only, large layers: 128 x 128 gradient tiles, one example at a time (fewer re-reads of x and
    g from L2: each tile re-reads an example's x and g, so the traffic is ~ (1/BM + 1/BN)).
    With directions: 64 x 64 tiles and 4 examples per direction-tile load (EX (64 x 64) fp32
    accumulators must stay in registers next to the direction tile and the row sums).
    Interpreter: tiny tiles so that the CPU tests stay fast."""
    if not cuda:
        return 16, 16, 16, min(examples_per_load or 2, triton.next_power_of_2(B)), 4
    if k == 0 and min(d_in, d_out) >= 512 and not examples_per_load:
        return 128, 128, 64, 1, 8
    ex = examples_per_load or (4 if k else 2)
    ex = min(ex, triton.next_power_of_2(B))
    # warps: the smallest count whose sm_90 build does not spill registers (benchmarks/compile_report.py)
    return 64, 64, 32, ex, 8 if ex >= 2 else 4


def _example_groups(B: int, n_tiles: int, ex: int, sms: int) -> tuple[int, int]:
    """(groups, examples per group) of the materialize grid's second dimension. The examples are
    split into groups only when the tiles alone fill less than one wave of the SMs (each group
    re-reads the direction tiles); a group's size is a multiple of EX."""
    groups = max(1, min(triton.cdiv(B, ex), triton.cdiv(sms, n_tiles)))
    ex_per_prog = triton.cdiv(triton.cdiv(B, groups), ex) * ex
    return triton.cdiv(B, ex_per_prog), ex_per_prog


def materialize_stats(x: Tensor, g: Tensor, directions: Tensor | None, *, mask: Tensor | None = None,
                      out_sq: Tensor | None = None, out_dot: Tensor | None = None,
                      examples_per_load: int | None = None, flat: bool = False) -> tuple[Tensor, Tensor | None]:
    """x (B,T,d_in), g (B,T,d_out), directions (k,d_out,d_in) -> (sq (B,), dots (B,k) or None).

    mask (B, T) bool. examples_per_load: examples formed together per direction-tile load (1, 2 or
    4; None: the plan). out_sq (B,), out_dot (B, k): optional float32 accumulators (added to; see
    accumulator).
    flat: one example at a time in one flattened example x token loop (_materialize_flat_kernel)."""
    B, T, d_in = x.shape
    d_out = g.shape[2]
    k = 0 if directions is None else directions.shape[0]
    if out_sq is None and out_dot is None:
        out = torch.zeros(B * (1 + k), dtype=torch.float32, device=x.device)  # one memset for both
        sq = out[:B]
        dots = out[B:].view(B, k) if k else None
    else:
        sq = accumulator(out_sq, (B,), x)
        dots = accumulator(out_dot, (B, k), x) if k else None
    if B == 0 or T == 0:
        return sq, dots
    BM, BN, BT, ex, warps = materialize_plan(B, d_in, d_out, k, x.is_cuda, 1 if flat else examples_per_load)
    if x.is_cuda:
        BT = min(BT, max(16, triton.next_power_of_2(T)))
    # One program per tile (not persistent): registers already cap a program at ~8 warps per SM, so
    # more resident programs are what hides the load latency of the short token loop.
    grid0 = n_tiles = triton.cdiv(d_out, BM) * triton.cdiv(d_in, BN)
    groups, ex_per_prog = _example_groups(B, n_tiles, ex, _device_sms(x))
    m, smb, smt = _mask_arg(mask, x)
    cdt = _compute_dtype(x, g)
    for k0 in range(0, max(k, 1), 16):  # at most 16 directions per launch (unrolled on chip)
        kc = min(16, k - k0) if k else 0
        if k0 > 0:  # later chunks only need the dots; the norm was accumulated by the first launch
            sq_target = torch.zeros_like(sq)
        else:
            sq_target = sq
        Dc = directions[k0:k0 + kc] if kc else x
        if k <= 16:  # one launch writes straight into the result
            dot_target = dots if kc else sq
        else:
            dot_target = torch.zeros(B, kc, dtype=torch.float32, device=x.device)
        common = dict(K=max(kc, 1), KP=max(2, triton.next_power_of_2(max(kc, 1))), HAS_MASK=mask is not None,
                      HAS_DIR=kc > 0, BM=BM, BN=BN, BT=BT, PREC=_precision(cdt), CDT=_TL_DTYPE[cdt], num_warps=warps)
        strides = (x.stride(0), x.stride(1), x.stride(2), g.stride(0), g.stride(1), g.stride(2), smb, smt,
                   Dc.stride(0) if kc else 0, Dc.stride(1) if kc else 0, Dc.stride(2) if kc else 0)
        if flat:
            _materialize_flat_kernel[(grid0, groups)](x, g, m, Dc, sq_target, dot_target, B, T, d_in, d_out,
                                                      ex_per_prog, *strides, **common)
        else:
            _materialize_kernel[(grid0, groups)](x, g, m, Dc, sq_target, dot_target, B, T, d_in, d_out,
                                                 ex_per_prog, n_tiles, *strides, EX=ex, **common)
        if kc and k > 16:
            dots[:, k0:k0 + kc] += dot_target
    return sq, dots


# ------------------------------------------------------------------------------------------------
# g times D (dots for short sequences)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _gd_kernel(
    x_ptr, g_ptr, mask_ptr, dir_ptr, out_ptr,
    N, T, D_IN, D_OUT, K,
    sxb, sxt, sxd, sgb, sgt, sgd, smb, smt, sdk, sdo, sdi,
    HAS_MASK: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BO: tl.constexpr,
    PREC: tl.constexpr, CDT: tl.constexpr,
):
    rr = tl.program_id(0) * BR + tl.arange(0, BR)  # flattened token rows b * T + t
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    j = tl.program_id(2).to(tl.int64)  # j * sdk can exceed int32 for large layers
    vr = rr < N
    vn = rn < D_IN
    b = (rr // T).to(tl.int64)
    t = rr % T
    ro = tl.arange(0, BO)
    acc = tl.zeros((BR, BN), dtype=tl.float32)
    for o0 in range(0, D_OUT, BO):
        vo = (o0 + ro) < D_OUT
        gt = tl.load(g_ptr + b[:, None] * sgb + t[:, None] * sgt + (o0 + ro)[None, :] * sgd,
                     mask=vr[:, None] & vo[None, :], other=0.0)
        d = tl.load(dir_ptr + j * sdk + (o0 + ro)[:, None] * sdo + rn[None, :] * sdi,
                    mask=vo[:, None] & vn[None, :], other=0.0)
        acc = tl.dot(gt.to(CDT), d.to(CDT), acc, input_precision=PREC)
    xt = tl.load(x_ptr + b[:, None] * sxb + t[:, None] * sxt + rn[None, :] * sxd,
                 mask=vr[:, None] & vn[None, :], other=0.0).to(tl.float32)
    row = tl.sum(acc * xt, axis=1)
    if HAS_MASK:
        keep = tl.load(mask_ptr + b * smb + t * smt, mask=vr, other=0) != 0
        row = tl.where(keep, row, 0.0)
    tl.atomic_add(out_ptr + b * K + j, row, mask=vr)


def gd_dots(x: Tensor, g: Tensor, directions: Tensor, *, mask: Tensor | None = None,
            out_dot: Tensor | None = None, large_tiles: bool = False) -> Tensor:
    """<G_i, D_k> = sum_t (g_t^T D_k) . x_t  ->  (B, k) fp32; mask (B, T) bool; out_dot: optional
    (B, k) float32 accumulator (added to; see accumulator).

    large_tiles: 128 x 128 output tiles with 8 warps (a GEMM-like plan for many tokens) instead of
    64 x 128 with 4."""
    B, T, d_in = x.shape
    d_out = g.shape[2]
    k = directions.shape[0]
    out = accumulator(out_dot, (B, k), x)
    N = B * T
    if N == 0:
        return out
    if not x.is_cuda and not large_tiles:
        BR, BN, BO, warps = 16, 16, 16, 4
    elif large_tiles:
        BR, BN, BO, warps = 128, 128, 64, 8
    else:
        BR, BN, BO, warps = 64, 128, 64, 4
    m, smb, smt = _mask_arg(mask, x)
    cdt = _compute_dtype(x, g, directions)
    grid = (triton.cdiv(N, BR), triton.cdiv(d_in, BN), k)
    _gd_kernel[grid](
        x, g, m, directions, out,
        N, T, d_in, d_out, k,
        x.stride(0), x.stride(1), x.stride(2), g.stride(0), g.stride(1), g.stride(2), smb, smt,
        directions.stride(0), directions.stride(1), directions.stride(2),
        HAS_MASK=mask is not None, BR=BR, BN=BN, BO=BO, PREC=_precision(cdt), CDT=_TL_DTYPE[cdt],
        num_warps=warps,
    )
    return out
