"""Per-example gradient statistics of one linear layer: every backend/algorithm vs a float64 reference.

Tolerance reasoning (used by `assert_close_stats`). The reference forms G_i = sum_t g_t x_t^T in
float64 from the SAME (already rounded) inputs, so input rounding is not an error here. bf16 and
fp16 values are exact in fp32, and a product of two of them (8- or 11-bit mantissas) is exact in
fp32 (24 bits), so the kernels' only rounding is fp32 accumulation (fp32 inputs add one rounding
per product, input_precision="ieee"). A sum of n terms accumulated in fp32 errs by at most about
n * 2^-24 times the sum of the terms' absolute values. The terms here: T products per entry of
G_i, then d_in*d_out (or T^2 Gram) terms per reduction, so we allow
    |err| <= 8 * (T + d_in + d_out) * 2^-24 * scale,
where scale is the same quantity computed on absolute values in float64 (|G|abs = sum_t |g_t||x_t|^T;
for ||G||^2: sum |G|abs^2; for <G, D>: sum |G|abs |D|). That bound is loose by ~sqrt(n) for random
data, but a wrong kernel (a missed tile, a token counted twice, a wrong mask) errs by O(scale).
"""

import pytest
import torch

from sublim.errors import ConfigError, SublimError
from sublim.kernels import choose_algorithm, linear_grad_stats
from sublim.kernels import references as R
from sublim.kernels.linear_stats import triton_available

EPS32 = 2.0**-24
ALGORITHMS = ["ghost", "materialize", "ghost+gd"]


def make_inputs(B, T, d_in, d_out, k, dtype, seed=0, two_d=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, d_in) if two_d else (B, T, d_in)
    x = torch.randn(shape, generator=gen).to(dtype).to(device)
    g = torch.randn(shape[:-1] + (d_out,), generator=gen).to(dtype).to(device)
    D = torch.randn(k, d_out, d_in, generator=gen).to(dtype).to(device) if k else None
    Db = torch.randn(k, d_out, generator=gen).to(dtype).to(device) if k else None
    mask = (torch.rand(shape[:-1], generator=gen) > 0.3).to(device)
    return x, g, D, Db, mask


def abs_scales(x, g, D, mask):
    """float64 scales of the bound in the module docstring, per example (on the inputs' device)."""
    x3 = (x[:, None] if x.dim() == 2 else x).double().abs()
    g3 = (g[:, None] if g.dim() == 2 else g).double().abs()
    if mask is not None:
        g3 = g3 * (mask.reshape(g3.shape[:2]) != 0)[:, :, None]
    Gabs = torch.einsum("bto,bti->boi", g3, x3)
    sq = Gabs.pow(2).sum((1, 2))
    dot = torch.einsum("boi,koi->bk", Gabs, D.double().abs()) if D is not None else None
    gb = g3.sum(1)
    return sq, dot, gb.pow(2).sum(1), gb


def assert_close_stats(s, x, g, D, Db, mask, bias=True):
    ref = R.micro_batch_linear(x, g, D, mask=mask, bias=bias, bias_directions=Db)
    T = 1 if x.dim() == 2 else x.shape[1]
    n = T + x.shape[-1] + g.shape[-1]
    tol = 8 * n * EPS32
    sq_scale, dot_scale, b_scale, gb_abs = abs_scales(x, g, D, mask)
    assert s.sq_norm.dtype == torch.float32 and s.sq_norm.shape == (x.shape[0],)
    err = (s.sq_norm.double() - ref["sq_norm"]).abs()
    assert (err <= tol * sq_scale + 1e-30).all(), f"sq_norm err {err.max():.3g} vs bound {(tol * sq_scale).max():.3g}"
    if D is not None:
        assert s.dot.shape == (x.shape[0], D.shape[0]) and s.dot.dtype == torch.float32
        err = (s.dot.double() - ref["dot"]).abs()
        assert (err <= tol * dot_scale + 1e-30).all(), f"dot err {err.max():.3g}"
    if bias:
        err = (s.bias_sq_norm.double() - ref["bias_sq_norm"]).abs()
        assert (err <= tol * b_scale + 1e-30).all(), f"bias err {err.max():.3g}"
        if Db is not None:
            err = (s.bias_dot.double() - ref["bias_dot"]).abs()
            assert (err <= tol * (gb_abs @ Db.double().abs().T) + 1e-30).all()


# ---- the references agree with each other (float64, so they must match to ~1e-12) ----------------
def test_references_agree():
    x, g, D, _, _ = make_inputs(3, 7, 5, 6, 2, torch.float64)
    mb = R.micro_batch_linear(x, g, D)
    for sq, dot in [R.einsum_materialize(x, g, D), R.vmap_grad_linear(x, g, D)]:
        torch.testing.assert_close(sq, mb["sq_norm"], rtol=1e-12, atol=0)
        torch.testing.assert_close(dot, mb["dot"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(R.einsum_ghost(x, g), mb["sq_norm"], rtol=1e-12, atol=0)
    torch.testing.assert_close(R.einsum_gd(x, g, D), mb["dot"], rtol=1e-12, atol=1e-12)


def test_reference_detects_difference():
    """The comparison can fail: a gradient from the wrong example gives a different norm."""
    x, g, _, _, _ = make_inputs(2, 4, 3, 3, 0, torch.float64)
    assert not torch.allclose(R.einsum_ghost(x, g), R.einsum_ghost(x, g.flip(0)))


# ---- torch backend -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (2, 37, 20, 33), (4, None, 9, 5)])
def test_torch_backend(dtype, algorithm, shape):
    B, T, d_in, d_out = shape
    x, g, D, Db, mask = make_inputs(B, T or 1, d_in, d_out, 3, dtype, two_d=T is None)
    for m in (None, mask):
        s = linear_grad_stats(x, g, D, bias=True, bias_directions=Db, mask=m, backend="torch", algorithm=algorithm)
        assert s.backend == "torch"
        assert_close_stats(s, x, g, D, Db, m)


def test_norm_only_and_auto():
    x, g, _, _, _ = make_inputs(2, 6, 8, 8, 0, torch.float32)
    s = linear_grad_stats(x, g)
    assert s.dot is None and s.bias_sq_norm is None
    assert_close_stats(s, x, g, None, None, None, bias=False)


def test_choose_algorithm():
    # Long sequences through a narrow layer: forming G_i is cheaper than T x T Grams.
    assert choose_algorithm(T=4096, d_in=64, d_out=64, k=0) == "materialize"
    # LLM shapes at T=128: the ghost form wins for the norm.
    assert choose_algorithm(T=128, d_in=4096, d_out=4096, k=0) == "ghost"
    # With 16 directions, one on-chip gradient tile beats 16 g-times-D matmuls.
    assert choose_algorithm(T=128, d_in=4096, d_out=4096, k=16) == "materialize"
    # T = 1 with one direction: g D is cheaper than forming the rank-1 gradient and reducing it.
    assert choose_algorithm(T=1, d_in=4096, d_out=4096, k=1) == "ghost+gd"


# ---- one backend interface -----------------------------------------------------------------------
def test_backends_share_one_interface():
    """Every backend defines each op with the same signature (names, kinds, defaults, annotations),
    so compute_checked calls any of them the same way; a divergence in one backend fails here."""
    import inspect

    pytest.importorskip("triton")
    from sublim.kernels import linear_stats

    modules = {name: linear_stats.backend_module(name) for name in linear_stats.BACKENDS}
    assert set(modules) == {"torch", "triton"}
    for op in linear_stats.BACKEND_OPS:
        sigs = {name: inspect.signature(getattr(m, op)) for name, m in modules.items()}
        assert len(set(sigs.values())) == 1, (op, sigs)
        params = next(iter(sigs.values())).parameters
        assert "mask" in params and params["mask"].kind is inspect.Parameter.KEYWORD_ONLY, op
    for m in modules.values():
        assert isinstance(m.TUNABLE, bool)


def test_a_new_backend_needs_no_dispatch_code(monkeypatch):
    """A backend is just a module in BACKENDS: a recording wrapper of the torch backend, added without
    touching compute_checked, gives the torch backend's numbers bit for bit through every plan."""
    import sys
    import types

    from sublim.kernels import linear_stats, torch_backend
    from sublim.kernels.linear_stats import compute_checked

    calls = []
    fake = types.ModuleType("fake_backend")
    fake.TUNABLE = False
    for op in linear_stats.BACKEND_OPS:
        def wrapped(*args, _op=op, **kwargs):
            calls.append(_op)
            return getattr(torch_backend, _op)(*args, **kwargs)
        setattr(fake, op, wrapped)
    monkeypatch.setitem(sys.modules, "fake_backend", fake)
    monkeypatch.setitem(linear_stats.BACKENDS, "fake", "fake_backend")
    x, g, D, Db, mask = make_inputs(3, 5, 7, 4, 2, torch.float32)
    m = mask.reshape(3, 5)
    for algorithm in ALGORITHMS:
        got = compute_checked(x, g, D, m, "fake", algorithm, bias=True, bias_directions=Db)
        ref = compute_checked(x, g, D, m, "torch", algorithm, bias=True, bias_directions=Db)
        assert got.backend == "fake" and got.algorithm == ref.algorithm
        for a, b in ((got.sq_norm, ref.sq_norm), (got.dot, ref.dot), (got.bias_sq_norm, ref.bias_sq_norm),
                     (got.bias_dot, ref.bias_dot)):
            assert torch.equal(a, b)
    assert calls == ["ghost_sq_norm", "gd_dots", "materialize_stats", "ghost_sq_norm", "gd_dots"]


def test_unknown_tuning_option():
    from sublim.kernels.linear_stats import compute_checked

    x, g, _, _, _ = make_inputs(2, 3, 4, 5, 0, torch.float32)
    with pytest.raises(ConfigError, match="unknown tuning options.*'split'"):
        compute_checked(x, g, None, None, "torch", "ghost", tuning={"split": 2})


# ---- errors ------------------------------------------------------------------------------------
def test_errors():
    x, g, D, Db, mask = make_inputs(2, 3, 4, 5, 2, torch.float32)
    with pytest.raises(ConfigError, match="floating-point"):
        linear_grad_stats(x.long(), g)
    with pytest.raises(ConfigError, match="floating-point"):
        linear_grad_stats(x, g, D.int())
    with pytest.raises(ConfigError, match="leading"):
        linear_grad_stats(x, g[:, :2])
    with pytest.raises(ConfigError, match="leading"):
        linear_grad_stats(x[0], g)
    with pytest.raises(ConfigError, match="directions must have shape"):
        linear_grad_stats(x, g, D.transpose(1, 2))
    with pytest.raises(ConfigError, match="directions must have shape"):
        linear_grad_stats(x, g, D[0])
    with pytest.raises(ConfigError, match="bias_directions"):
        linear_grad_stats(x, g, D, bias=True, bias_directions=Db[:1])
    with pytest.raises(ConfigError, match="mask"):
        linear_grad_stats(x, g, mask=mask[:, :2])
    with pytest.raises(ConfigError, match="backend"):
        linear_grad_stats(x, g, backend="cuda")
    with pytest.raises(ConfigError, match="algorithm"):
        linear_grad_stats(x, g, algorithm="fast")
    with pytest.raises(SublimError):
        linear_grad_stats(x[:, :, None], g)


# ---- Triton in interpreter mode (tiny shapes: the interpreter runs every program in Python) ------
needs_triton = pytest.mark.skipif(
    not triton_available(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (2, 37, 20, 33), (3, None, 17, 5)])
def test_triton_interpreter(dtype, shape):
    # bf16 note: under the interpreter the kernels upcast bf16 to fp32 before tl.dot (the interpreter
    # mis-multiplies bf16); the native bf16 path is covered by the gpu tests below.
    B, T, d_in, d_out = shape
    x, g, D, Db, mask = make_inputs(B, T or 1, d_in, d_out, 3, dtype, two_d=T is None, device=DEVICE)
    for algorithm in ALGORITHMS:
        for m in (None, mask):
            s = linear_grad_stats(x, g, D, bias=True, bias_directions=Db, mask=m, backend="triton", algorithm=algorithm)
            assert s.backend == "triton"
            assert_close_stats(s, x, g, D, Db, m)


@pytest.mark.interpreter
@needs_triton
def test_triton_many_directions_and_strides():
    """k = 17 (> 16 per launch) and non-contiguous inputs (a transposed view)."""
    x, g, D, _, mask = make_inputs(2, 6, 9, 5, 17, torch.float32, device=DEVICE)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    for algorithm in ("materialize", "ghost+gd"):
        s = linear_grad_stats(xt, g, D, mask=mask, backend="triton", algorithm=algorithm)
        assert_close_stats(s, x, g, D, None, mask, bias=False)


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("examples_per_load", [1, 2, 4])
def test_triton_materialize_example_blocking(monkeypatch, examples_per_load):
    """7 examples in blocks of 1, 2 or 4 (the last block partial), with and without example groups."""
    from sublim.kernels import triton_kernels as tk
    from sublim.kernels.linear_stats import compute_checked

    x, g, D, _, mask = make_inputs(7, 5, 9, 6, 3, torch.float32, device=DEVICE)
    for sms in (1, 16):  # one group of 7 examples; or groups of 1 example (more SMs than tiles)
        monkeypatch.setattr(tk, "_device_sms", lambda t, sms=sms: sms)
        s = compute_checked(x, g, D, mask.reshape(7, 5), "triton", "materialize",
                            tuning={"examples_per_load": examples_per_load})
        assert_close_stats(s, x, g, D, None, mask, bias=False)


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("k", [0, 3])
def test_triton_every_tuning_candidate(k):
    """Each (algorithm, launch options) the CUDA auto-tuner may pick gives the reference's numbers."""
    from sublim.kernels.linear_stats import compute_checked, tuning_candidates

    x, g, D, _, mask = make_inputs(5, 6, 9, 7, k, torch.float32, device=DEVICE)
    for algorithm, options in tuning_candidates(k, experimental=True):
        for m in (None, mask):
            s = compute_checked(x, g, D, m, "triton", algorithm, tuning=options)
            assert_close_stats(s, x, g, D, None, m, bias=False)


def test_experimental_plans_stay_out_of_the_default_tuning_set():
    """A plan not yet validated on a GPU is timed by the tuner only when asked for (the tuner times
    plans, it does not check their numbers)."""
    from sublim.kernels.linear_stats import tuning_candidates

    flat = ("materialize", {"flat": True})
    for k in (0, 3):
        assert flat not in tuning_candidates(k, experimental=False)
        assert flat in tuning_candidates(k, experimental=True)
        assert set(map(repr, tuning_candidates(k, experimental=False))) < set(map(repr, tuning_candidates(k, experimental=True)))


@pytest.mark.interpreter
@needs_triton
def test_triton_mixed_dtypes():
    """x in fp32 and g in bf16 (autocast-style) still matches the reference."""
    x, g, D, _, _ = make_inputs(2, 5, 6, 7, 2, torch.float32, device=DEVICE)
    g = g.to(torch.bfloat16)
    for algorithm in ALGORITHMS:
        s = linear_grad_stats(x, g, D, backend="triton", algorithm=algorithm)
        assert_close_stats(s, x, g, D, None, None, bias=False)


@pytest.mark.interpreter
@needs_triton
def test_triton_ghost_split_and_tiles(monkeypatch):
    """The ghost kernel's other plans: features split across programs (partials + combine kernel),
    several 128-token tiles (off-diagonal pairs), and a single tile larger than 64 tokens."""
    from sublim.kernels import triton_kernels as tk

    monkeypatch.setattr(tk, "_device_sms", lambda t: 64)  # pretend a big GPU: more splits
    cases = [
        (2, 5, 2100, 2000, (16, 1, 2)),  # split features, one tile (transposed-operand path)
        (2, 100, 2100, 2000, (128, 1, 2)),  # split, a 128-token tile
        (1, 140, 2100, 2000, (128, 3, 2)),  # split, two 128-token tiles: off-diagonal pairs
        (1, 140, 30, 40, (64, 6, 1)),  # fused, three 64-token tiles
        (2, 70, 9, 11, (64, 3, 1)),  # fused, two tiles, the last one partial
    ]
    for B, T, d_in, d_out, plan in cases:
        assert tk.ghost_plan(B, T, d_in, d_out, 64) == plan
        x, g, _, _, mask = make_inputs(B, T, d_in, d_out, 0, torch.bfloat16, device=DEVICE)
        s = linear_grad_stats(x, g, bias=True, mask=mask, backend="triton", algorithm="ghost")
        assert_close_stats(s, x, g, None, None, mask)


# ---- GPU (native bf16 tensor-core path, bigger odd shapes) --------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("k", [0, 5])
def test_every_tuning_candidate_gpu(k):
    """Every plan the auto-tuner may pick, at a shape with several tiles of every size, with a mask."""
    from sublim.kernels.linear_stats import compute_checked, tuning_candidates

    x, g, D, _, mask = make_inputs(7, 70, 300, 260, k, torch.bfloat16, device="cuda")
    for algorithm, options in tuning_candidates(k, experimental=True):
        for m in (None, mask):
            s = compute_checked(x, g, D, m, "triton", algorithm, tuning=options)
            assert_close_stats(s, x, g, D, None, m, bias=False)


@pytest.mark.gpu
def test_auto_tuning_gpu():
    """algorithm="auto" on CUDA times the candidates once per shape, caches the pick, and the pick's
    numbers match the reference (with directions and with a mask)."""
    from sublim.kernels import linear_stats

    x, g, D, _, mask = make_inputs(6, 50, 300, 200, 4, torch.bfloat16, device="cuda")
    for Dk, m in ((None, None), (D, mask)):
        s = linear_grad_stats(x, g, Dk, mask=m, backend="triton")
        picked = linear_stats.tuned_choice(x, g, Dk, m)
        assert picked in linear_stats.tuning_candidates(0 if Dk is None else Dk.shape[0])
        assert s.algorithm == picked[0]
        assert_close_stats(s, x, g, Dk, None, m, bias=False)



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape",
    # B=1/T=1; odd sizes; several 128-token tiles; 2-D input; wide enough to split the features
    [(1, 1, 1, 1), (5, 77, 130, 67), (3, 300, 257, 129), (33, None, 600, 520), (2, 129, 2100, 2000)],
)
def test_triton_gpu(dtype, shape):
    B, T, d_in, d_out = shape
    x, g, D, Db, mask = make_inputs(B, T or 1, d_in, d_out, 5, dtype, two_d=T is None, device="cuda")
    for algorithm in ALGORITHMS:
        for m in (None, mask):
            s = linear_grad_stats(x, g, D, bias=True, bias_directions=Db, mask=m, backend="triton", algorithm=algorithm)
            assert s.backend == "triton" and s.sq_norm.is_cuda
            assert_close_stats(s, x, g, D, Db, m)


# ---- masked tokens contribute nothing, whatever their g holds (NaN, inf) --------------------------
def _poisoned(g, mask):
    """g with the masked tokens set to NaN / +inf / -inf in turn (what padding can hold)."""
    bad = g.clone()
    m = ~mask
    fill = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=g.dtype, device=g.device)
    bad[m] = fill[torch.arange(int(m.sum())) % 3].to(g.device)[:, None].expand(-1, g.shape[-1])
    return bad


def _check_poisoned_mask(backend):
    x, g, D, Db, mask = make_inputs(3, 6, 7, 5, 2, torch.float32, device=DEVICE)
    bad = _poisoned(g, mask)
    assert not torch.isfinite(bad).all() and torch.isfinite(bad[mask]).all()
    for algorithm in ALGORITHMS:
        s = linear_grad_stats(x, bad, D, bias=True, bias_directions=Db, mask=mask, backend=backend, algorithm=algorithm)
        # the same bound as any masked run: the reference sees g, and masked tokens count as 0 there
        assert_close_stats(s, x, g, D, Db, mask)


def test_torch_backend_ignores_nan_and_inf_at_masked_tokens():
    _check_poisoned_mask("torch")


@pytest.mark.interpreter
@needs_triton
def test_triton_ignores_nan_and_inf_at_masked_tokens():
    _check_poisoned_mask("triton")
