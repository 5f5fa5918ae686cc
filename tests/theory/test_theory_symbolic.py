"""The symbolic derivation: every identity holds, and wrong formulas are caught (FAIL)."""

import sympy as sp

from sublim.theory import symbolic as S


def test_all_symbolic_checks_pass():
    results = S.run_symbolic_checks()
    failed = [r.name for r in results if not r.passed]
    assert not failed, failed
    # The report must cover every part of the issue.
    sections = {r.section for r in results}
    for needed in ("PSD, symbolic k", "subset (aux) loss", "general model", "exact instances", "eps^2", "cross-init", "multi-step"):
        assert needed in sections


def test_wrong_hessian_for_softmax_is_reported_as_fail():
    # H = I is the half-SE Hessian; claiming it for the softmax loss must FAIL at eps^1.
    res = S.check_general_model("soft_ce", n_params=2, k=3, hessian_override=lambda z: sp.eye(len(z)))
    first_order = [r for r in res if "eps^1" in r.name]
    assert len(first_order) == 1 and not first_order[0].passed


def test_is_zero_rejects_nonzero_expressions():
    x, y = sp.symbols("x y")
    assert S.is_zero(sp.exp(x) * sp.exp(y) - sp.exp(x + y))[0]
    assert not S.is_zero(sp.exp(x) - 1 - x)[0]
    assert not S.is_zero(sp.tanh(x) - x, exact=False)[0]


def test_counterexample_values_are_exact():
    r = S.cross_init_counterexample()
    assert r.passed
    assert r.details["dS_dot_dT_shared"] == "1/40"
    assert r.details["dS_dot_dT_cross"] == "-9/40"
