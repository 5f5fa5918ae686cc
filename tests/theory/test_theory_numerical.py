"""Autograd on the batched toy MLPs (float64) against the first-order theory."""

import numpy as np
import pytest
import torch

from sublim.errors import ConfigError
from sublim.theory import numerical as N

SLOPE = N.ToySetup(n_student=2)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("dist", N.DISTRIBUTIONS)
@pytest.mark.parametrize("loss", N.LOSSES)
@pytest.mark.parametrize("outputs", N.OUTPUTS)
def test_first_order_slope_is_one(dist, loss, outputs):
    r = N.check_slope(SLOPE, dist, loss, outputs)
    assert r.passed, r.details["slope_per_model"]


def test_wrong_hessian_identity_for_kl_fails():
    r = N.check_slope(SLOPE, "uniform", "kl", "aux", hvp=N.identity_hvp)
    assert not r.passed
    # an O(1) error that does not shrink with eps: slope near 0
    assert all(abs(s) < 0.1 for s in r.details["slope_per_model"] if s == s)


def test_k_times_matches_explicit_jacobian():
    """The JVP/VJP fast path equals the obviously-correct J^T H J built from the full Jacobian."""
    setup = N.ToySetup(width=4, depth=1, n_models=2, n_student=3)
    params0, dT, x, _ = N.build(setup, "gaussian")
    for loss in N.LOSSES:
        for outputs in N.OUTPUTS:
            fast = N.k_times(params0, dT, x, loss, outputs)
            for m in range(setup.n_models):
                flat0 = torch.cat([p[m].flatten() for p in params0])
                shapes = [p[m].shape for p in params0]

                def f(flat):
                    ps, o = [], 0
                    for s in shapes:
                        n = int(np.prod(s))
                        ps.append(flat[o:o + n].view(s)[None])
                        o += n
                    return N.forward(ps, x)[0]  # (batch, d_out)

                J = torch.autograd.functional.jacobian(f, flat0)  # (batch, d_out, P)
                z = f(flat0)
                dflat = torch.cat([d[m].flatten() for d in dT])
                want = torch.zeros_like(flat0)
                for b in range(x.shape[0]):
                    sel = slice(10, None) if outputs == "aux" else slice(None)
                    Jb = J[b][sel]
                    if loss == "se":
                        H = torch.eye(Jb.shape[0], dtype=N.DTYPE)
                    else:
                        p = torch.softmax(z[b][sel], -1)
                        H = torch.diag(p) - torch.outer(p, p)
                    want += Jb.T @ H @ Jb @ dflat / x.shape[0]
                got = torch.cat([t[m].flatten() for t in fast])
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_sign_claim_small():
    r = N.check_sign(N.ToySetup(n_student=64, n_models=4), seeds=(0,))
    assert r.passed
    assert len(r.details["cases"]) == 3 * 2 * 2


def test_cross_init_has_a_negative_case():
    r = N.check_cross_init(N.ToySetup(n_student=128))
    assert r.passed
    assert r.details["counterexample"]["dS_dot_dT"] < 0


def test_bad_inputs_raise_config_error():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError):
        N.sample_inputs("laplace", 4, g)
    p, dT, x, _ = N.build(N.ToySetup(width=4, n_models=1, n_student=2), "uniform")
    with pytest.raises(ConfigError):
        N.student_step(p, p, x, "mse", "aux", 1.0)
    with pytest.raises(ConfigError):
        N.student_step(p, p, x, "kl", "digits", 1.0)
