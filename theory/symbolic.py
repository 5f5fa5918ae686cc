"""The shared-initialization alignment theorem, derived with sympy (not asserted).

Setup. Parameters theta0 are shared. The teacher moves to theta_T = theta0 + eps * dT. The student
starts at theta0 and takes one gradient step of rate alpha on the imitation loss
l(f(theta, x), f(theta_T, x)), so dS = -alpha * grad_theta l at theta0. We expand dS in eps.

What this module derives, each as a function returning CheckResults:
  1. For a GENERAL model to second order (Taylor form f(theta0 + delta) = z + J delta
     + 1/2 K[delta, delta] + O(delta^3), with symbolic z, J, K), for three losses (half squared
     error, softmax cross-entropy against the teacher's soft outputs, KL restricted to a subset of
     the outputs): the eps^0 coefficient of dS vanishes, the eps^1 coefficient equals
     alpha * J^T H J dT, and the eps^2 coefficient equals alpha * J^T (H w + 1/2 T(u, u)) with
     u = J dT, w = 1/2 K[dT, dT] and T the third derivative of the loss in the outputs.
  2. H = diag(p) - p p^T for symbolic k (indexed sums, not k = 2, 3): derived from the
     log-sum-exp, its quadratic form rewritten as the variance Var_p(v) >= 0, and its null space
     shown to be span(1). The subset (auxiliary-logit) case pads H with zeros.
  3. Exact small instances (a linear model; a one-hidden-layer tanh network) whose eps-series
     coefficients are compared with the general formula.
  4. The cross-init case: the eps^0 term that survives, and an exact counterexample with
     dS . dT < 0.
  5. Several GD steps on the linearized problem: the closed form and its alignment condition.

Why Taylor coefficients rather than sp.series: d^n/d eps^n at eps = 0 divided by n! IS the series
coefficient, and differentiating keeps expressions small enough to verify exactly.
"""

from __future__ import annotations

import random
from functools import lru_cache

import mpmath
import sympy as sp
from sympy.printing.pycode import MpmathPrinter

from sublim.theory.checks import CheckResult

EPS, ALPHA = sp.symbols("epsilon alpha", positive=True)
LOSSES = ("half_se", "soft_ce", "kl_subset")

# ---------------------------------------------------------------------------------------------
# Losses in output space: l(z_student, z_teacher), over all outputs or over a subset of them.
# ---------------------------------------------------------------------------------------------


def loss_expr(name: str, zs, zt, subset=None):
    idx = list(range(len(zs))) if subset is None else list(subset)
    if name == "half_se":
        return sp.Rational(1, 2) * sum((zs[i] - zt[i]) ** 2 for i in idx)
    et = [sp.exp(zt[i]) for i in idx]
    total_t = sum(et)
    lse_s = sp.log(sum(sp.exp(zs[i]) for i in idx))
    if name == "soft_ce":  # -sum_i p_T,i log p_S,i
        return -sum(et[a] / total_t * (zs[i] - lse_s) for a, i in enumerate(idx))
    if name == "kl_subset":  # KL(p_T || p_S) over the subset: CE minus the teacher's entropy
        lse_t = sp.log(total_t)
        return sum(et[a] / total_t * ((zt[i] - lse_t) - (zs[i] - lse_s)) for a, i in enumerate(idx))
    raise ValueError(f"unknown loss {name!r}")


def _softmax(z, idx):
    e = [sp.exp(z[i]) for i in idx]
    s = sum(e)
    return [x / s for x in e]


def hessian_claim(name: str, z, subset=None) -> sp.Matrix:
    """The theorem's H: I (masked) for half-SE, diag(p) - p p^T (padded with zeros to the full
    output size for the subset case), p = softmax of the shared outputs."""
    k = len(z)
    idx = list(range(k)) if subset is None else list(subset)
    H = sp.zeros(k, k)
    if name == "half_se":
        for i in idx:
            H[i, i] = 1
        return H
    p = _softmax(z, idx)
    for a, i in enumerate(idx):
        for b, j in enumerate(idx):
            H[i, j] = (p[a] if a == b else 0) - p[a] * p[b]
    return H


def third_derivative_claim(name: str, z, u: sp.Matrix, subset=None) -> sp.Matrix:
    """T(u, u)_i = sum_jl d^3 l / dz_i dz_j dz_l u_j u_l for the softmax losses:
    (H u) * u - (p . u) H u - (u^T H u) p on the distilled coordinates; 0 for half-SE."""
    k = len(z)
    if name == "half_se":
        return sp.zeros(k, 1)
    idx = list(range(k)) if subset is None else list(subset)
    H = hessian_claim(name, z, subset)
    Hu = H * u
    p_full = sp.zeros(k, 1)
    for a, pa in zip(idx, _softmax(z, idx)):
        p_full[a] = pa
    pu = (p_full.T * u)[0]
    uHu = (u.T * Hu)[0]
    return sp.Matrix([Hu[i] * u[i] - pu * Hu[i] - uHu * p_full[i] for i in range(k)])


# ---------------------------------------------------------------------------------------------
# Zero tests. Exact when possible; otherwise a 50-digit evaluation at random rational points
# (an identity that fails does so at almost every point, so three points make a false PASS
# vanishingly unlikely). The method used is reported.
# ---------------------------------------------------------------------------------------------


def _exp_to_symbols(expr):
    """Replace exp(sum c_i z_i) by prod E_i^c_i so a softmax expression becomes rational."""
    cache: dict = {}

    def sym(a):
        if a not in cache:
            cache[a] = sp.Symbol(f"E_{a}", positive=True)
        return cache[a]

    def repl(e):
        coeffs = sp.expand(e.args[0]).as_coefficients_dict()
        out = sp.Integer(1)
        for term, c in coeffs.items():
            if term == 1:
                out *= sp.exp(c)
            else:
                out *= sym(term) ** c
        return out

    return expr.replace(lambda e: isinstance(e, sp.exp), repl)


def is_zero(expr, *, seed: int = 0, exact: bool = True) -> tuple[bool, str, float]:
    """(is zero, method, max |value| at the random points)."""
    expr = sp.sympify(expr)
    if exact:
        if not expr.has(sp.exp):
            if sp.expand(expr) == 0:
                return True, "exact (expand)", 0.0
        else:
            # Expanding softmax expressions is slow; as rational functions of E_i = exp(z_i) they cancel fast.
            try:
                if sp.cancel(sp.together(_exp_to_symbols(expr))) == 0:
                    return True, "exact (rational cancel)", 0.0
            except (sp.PolynomialError, TypeError, ValueError):
                pass
    rng = random.Random(seed)
    syms = sorted(expr.free_symbols, key=str)
    # Fixed 50-digit arithmetic through mpmath: sympy's N() would keep raising the precision
    # trying to find significant digits of a value that is exactly zero.
    # Terms printed in sympy's stored order: the default printer sorts an Add's terms, evaluating
    # each exact constant numerically to compare them (most of the time on the tanh instance).
    # A printer per call: printers keep state between prints (their module imports).
    printer = MpmathPrinter({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True,
                             "user_functions": {}, "order": "none"})
    fn = sp.lambdify(syms, expr, modules="mpmath", printer=printer)
    worst = 0.0
    with mpmath.workdps(50):
        for _ in range(3 if syms else 1):
            vals = [mpmath.mpf(rng.randint(-40, 40)) / rng.randint(7, 23) for _ in syms]
            vals = [abs(v) + mpmath.mpf(1) / 3 if s.is_positive else v for s, v in zip(syms, vals)]
            worst = max(worst, float(abs(fn(*vals))))
    return worst < 1e-35, "numeric (50 digits" + (", 3 random rational values of " + ",".join(map(str, syms)) + ")" if syms else ")"), worst


# ---------------------------------------------------------------------------------------------
# The student's update as a series in eps, for any model given as a function theta -> outputs.
# ---------------------------------------------------------------------------------------------


def student_update_coefficients(model, theta0: list, d: list, loss: str, subset=None, *, student_theta0=None, order: int = 2, values=None):
    """Taylor coefficients [c0, c1, c2] (sympy column matrices) of dS in eps.

    model(theta) -> list of k output expressions. The teacher is at theta0 + eps d; the student
    starts at student_theta0 (default theta0: the shared-init case) and takes one step of rate
    ALPHA on loss_expr(loss, f(student), f(teacher)).
    """
    student_theta0 = theta0 if student_theta0 is None else student_theta0
    s = sp.symbols(f"s0:{len(theta0)}")  # the student's free parameters
    zt = model([t + EPS * dj for t, dj in zip(theta0, d)])
    zs = model(list(s))
    L = loss_expr(loss, zs, zt, subset)
    at_start = dict(zip(s, student_theta0))
    dS = [-ALPHA * sp.diff(L, sj).xreplace(at_start) for sj in s]
    if values:  # an instance at a rational point: everything but eps and alpha becomes a number
        dS = [g.xreplace(values) for g in dS]
    coeffs = []
    for n in range(order + 1):
        coeffs.append(sp.Matrix([sp.diff(g, EPS, n).subs(EPS, 0) / sp.factorial(n) for g in dS]))
    return coeffs


def predicted_coefficients(model, theta0: list, d: list, loss: str, subset=None, values=None):
    """The general formula's c1 = alpha J^T H J d and c2 = alpha J^T (H w + 1/2 T(u,u))."""
    th = sp.symbols(f"q0:{len(theta0)}")
    f = sp.Matrix(model(list(th)))
    at = dict(zip(th, theta0))
    values = values or {}
    J = f.jacobian(th).xreplace(at).xreplace(values)
    z = [fi.xreplace(at).xreplace(values) for fi in f]
    dv = sp.Matrix(d).xreplace(values)
    u = J * dv
    w = sp.Matrix([sp.Rational(1, 2) * (dv.T * sp.hessian(fi, th).xreplace(at).xreplace(values) * dv)[0] for fi in f])
    H = hessian_claim(loss, z, subset)
    T = third_derivative_claim(loss, z, u, subset)
    c1 = ALPHA * J.T * H * u
    c2 = ALPHA * J.T * (H * w + T / 2)
    return c1, c2, dict(J=J, H=H, u=u, w=w, z=z)


# ---------------------------------------------------------------------------------------------
# 1. General model (Taylor form with symbolic z, J, K).
# ---------------------------------------------------------------------------------------------


def taylor_model(n_params: int, k: int):
    """f(theta0 + delta) = z + J delta + 1/2 K[delta, delta]: any smooth model to second order,
    which is all the eps^0..eps^2 coefficients of dS can depend on."""
    theta0 = list(sp.symbols(f"t0:{n_params}"))
    z = list(sp.symbols(f"z0:{k}"))
    J = sp.Matrix(k, n_params, lambda i, j: sp.Symbol(f"J_{i}{j}"))
    K = [[[sp.Symbol(f"K_{i}{min(a, b)}{max(a, b)}") for b in range(n_params)] for a in range(n_params)] for i in range(k)]

    def model(theta):
        delta = [t - t0 for t, t0 in zip(theta, theta0)]
        out = []
        for i in range(k):
            lin = sum(J[i, j] * delta[j] for j in range(n_params))
            quad = sum(K[i][a][b] * delta[a] * delta[b] for a in range(n_params) for b in range(n_params))
            out.append(z[i] + lin + sp.Rational(1, 2) * quad)
        return out

    return model, theta0, z, J


def check_general_model(loss: str, *, n_params: int = 2, k: int = 3, subset=None, hessian_override=None) -> list[CheckResult]:
    """eps^0 vanishes, eps^1 = alpha J^T H J dT, eps^2 = alpha J^T (H w + T(u,u)/2) for a general model.

    hessian_override(z) -> Matrix replaces the claimed H (used by tests to show that a wrong
    formula, e.g. H = I for the softmax loss, is reported as FAIL)."""
    model, theta0, z, J = taylor_model(n_params, k)
    d = list(sp.symbols(f"d0:{n_params}"))
    c0, c1, c2 = student_update_coefficients(model, theta0, d, loss, subset)
    p1, p2, parts = predicted_coefficients(model, theta0, d, loss, subset)
    if hessian_override is not None:
        p1 = ALPHA * parts["J"].T * hessian_override(z) * parts["u"]
    tag = f"{loss}{'' if subset is None else ' on outputs ' + str(list(subset))}, general model (P={n_params}, k={k})"
    out = []
    for name, got, want in (("eps^0 term vanishes", c0, sp.zeros(n_params, 1)), ("eps^1 = alpha J^T H J dT", c1, p1), ("eps^2 = alpha J^T (H w + T(u,u)/2)", c2, p2)):
        oks, methods, worst = [], set(), 0.0
        for g, w in zip(got, want):
            ok, method, v = is_zero(g - w)
            oks.append(ok)
            methods.add(method)
            worst = max(worst, v)
        out.append(CheckResult(f"{tag}: {name}", all(oks), {"method": sorted(methods), "max_abs_residual": worst}, section="general model"))
    return out


def check_hessian_cross_term(loss: str, k: int = 3, subset=None) -> CheckResult:
    """The mechanism: grad_zS l(z, z) = 0 and d/dzT grad_zS l = -H at zS = zT, so dS ~ +alpha J^T H J dT."""
    zs = list(sp.symbols(f"a0:{k}"))
    zt = list(sp.symbols(f"b0:{k}"))
    L = loss_expr(loss, zs, zt, subset)
    same = dict(zip(zs, zt))
    grad = [sp.diff(L, a).xreplace(same) for a in zs]
    cross = sp.Matrix(k, k, lambda i, j: sp.diff(L, zs[i], zt[j]).xreplace(same))
    H = hessian_claim(loss, zt, subset)
    hess_s = sp.Matrix(k, k, lambda i, j: sp.diff(L, zs[i], zs[j]).xreplace(same))
    g_ok = all(is_zero(g)[0] for g in grad)
    c_ok = all(is_zero(e)[0] for e in (cross + H))
    h_ok = all(is_zero(e)[0] for e in (hess_s - H))
    return CheckResult(
        f"{loss}{'' if subset is None else ' on ' + str(list(subset))} (k={k}): grad_zS l = 0, d2l/dzS2 = H, d2l/dzS dzT = -H at zS = zT",
        g_ok and c_ok and h_ok,
        {"gradient_zero": g_ok, "student_hessian_is_H": h_ok, "cross_is_minus_H": c_ok},
        section="output-space loss",
    )


# ---------------------------------------------------------------------------------------------
# 2. H = diag(p) - p p^T is PSD for every k: indexed sums with k symbolic.
# ---------------------------------------------------------------------------------------------


def _fold_range_piecewise(expr):
    """Sum(KroneckerDelta(i, l) g(l), (l, 1, k)).doit() returns Piecewise((g(i), 1 <= i <= k), ...).
    Every index here runs over 1..k, so the in-range branch is the value."""
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), lambda e: e.args[0][0])


def _split_sum(expr):
    """Linearity of a finite sum: split over + and pull out factors free of the summation index."""
    def one(s):
        if len(s.limits) > 1:  # nested: inner first
            inner = _split_sum(sp.Sum(s.function, s.limits[0]))
            return _split_sum(sp.Sum(inner, *s.limits[1:]))
        var = s.limits[0][0]
        total = sp.Integer(0)
        for term in sp.Add.make_args(sp.expand(s.function)):
            indep, dep = term.as_independent(var, as_Add=False)
            total += indep * (sp.Sum(dep, s.limits[0]) if dep != 1 else (s.limits[0][2] - s.limits[0][1] + 1))
        return total

    return expr.replace(lambda e: isinstance(e, sp.Sum), one)


def _canonical(expr, index):
    """Rename every single-index sum's dummy to `index` (alpha-equivalence), so sums compare."""
    return expr.replace(
        lambda e: isinstance(e, sp.Sum) and len(e.limits) == 1,
        lambda e: sp.Sum(e.function.xreplace({e.limits[0][0]: index}), (index, e.limits[0][1], e.limits[0][2])),
    )


def derive_softmax_psd_general_k() -> list[CheckResult]:
    """With k symbolic: H from the log-sum-exp; v^T H v = Var_p(v) >= 0; H v = 0 iff v in span(1)."""
    k = sp.Symbol("k", integer=True, positive=True)
    i, j, l = sp.symbols("i j l", integer=True)
    z, q, v = sp.IndexedBase("z", real=True), sp.IndexedBase("q"), sp.IndexedBase("v", real=True)
    p = sp.IndexedBase("p", positive=True)
    m = sp.Symbol("m", real=True)  # stands for the p-mean of v, sum_j p_j v_j (free of the index)
    S = sp.Sum(sp.exp(z[j]), (j, 1, k))
    S_sym = sp.Symbol("S", positive=True)  # the partition function, so exp(z_l) = p_l S

    def to_p(e):
        e = e.xreplace({S: S_sym})
        return e.replace(lambda a: isinstance(a, sp.exp) and isinstance(a.args[0], sp.Indexed), lambda a: p[a.args[0].indices[0]] * S_sym)

    ce = -sp.Sum(q[j] * z[j], (j, 1, k)) + sp.log(S)  # CE with soft targets q, sum q = 1
    out = []

    grad = _fold_range_piecewise(sp.diff(ce, z[l]).doit())
    grad_p = sp.simplify(to_p(grad))
    ok_grad = sp.simplify(grad_p - (p[l] - q[l])) == 0
    out.append(CheckResult("general k: d CE / d z_l = p_l - q_l (zero when q = p: the eps^0 term vanishes)", ok_grad, {"derived": str(grad_p)}, section="PSD, symbolic k",
                           formula_text="dCE/dz_l = p_l - q_l", formula_latex=r"\partial_{z_l}\mathrm{CE} = p_l - q_l"))

    hess = _fold_range_piecewise(sp.diff(grad, z[i]).doit())
    hess_p = sp.expand(to_p(hess))
    H_il = p[i] * sp.KroneckerDelta(i, l) - p[i] * p[l]
    # Case split on the Kronecker delta (i = l and i != l), which sympy's simplify does not do.
    diff_h = hess_p - H_il
    ok_hess = sp.expand(diff_h.subs(l, i)) == 0 and sp.expand(diff_h.replace(lambda a: isinstance(a, sp.KroneckerDelta), lambda a: sp.Integer(0))) == 0
    out.append(CheckResult("general k: d2 CE / dz_i dz_l = p_i delta_il - p_i p_l, i.e. H = diag(p) - p p^T", ok_hess, {"derived": str(hess_p)}, section="PSD, symbolic k",
                           formula_text="H = diag(p) - p p^T", formula_latex=r"H = \mathrm{diag}(p) - p p^\top"))

    # v^T H v as a double indexed sum; the delta collapses one sum.
    quad = _split_sum(_fold_range_piecewise(sp.Sum(sp.Sum(v[i] * H_il * v[l], (l, 1, k)), (i, 1, k)).doit()))
    second_moment = sp.Sum(p[i] * v[i] ** 2, (i, 1, k))
    mean = sp.Sum(p[i] * v[i], (i, 1, k))
    ok_quad = sp.expand(_canonical(quad, i) - (second_moment - mean**2)) == 0
    out.append(CheckResult("general k: v^T H v = sum_i p_i v_i^2 - (sum_i p_i v_i)^2", ok_quad, {"derived": str(_canonical(quad, i))}, section="PSD, symbolic k"))

    # Variance identity: sum_i p_i (v_i - m)^2 with sum p = 1 and m = sum p v equals the above.
    var = _split_sum(sp.Sum(p[i] * (v[i] - m) ** 2, (i, 1, k)))
    var = var.xreplace({sp.Sum(p[i], (i, 1, k)): 1}).xreplace({mean: m})
    ok_var = sp.expand(var - (second_moment - m**2)) == 0
    summand_nonneg = bool((p[i] * (v[i] - m) ** 2).is_nonnegative)
    out.append(CheckResult(
        "general k: v^T H v = Var_p(v) = sum_i p_i (v_i - mean_p v)^2 >= 0 (each summand >= 0), so H is PSD for every k",
        ok_quad and ok_var and summand_nonneg,
        {"variance_identity": ok_var, "summand_nonnegative": summand_nonneg, "assumptions": "p_i > 0 (softmax), sum_i p_i = 1, v real"},
        section="PSD, symbolic k",
        formula_text="v^T H v = sum_i p_i (v_i - sum_j p_j v_j)^2 = Var_p(v) >= 0",
        formula_latex=r"v^\top H v = \sum_i p_i \Big(v_i - \sum_j p_j v_j\Big)^2 = \mathrm{Var}_p(v) \ge 0",
    ))

    # Null space: (H v)_i = p_i (v_i - m); p_i > 0 so H v = 0 iff v_i = m for all i; and H 1 = 0.
    Hv = _split_sum(_fold_range_piecewise(sp.Sum(H_il * v[l], (l, 1, k)).doit()))
    Hv = _canonical(Hv, l).xreplace({sp.Sum(p[l] * v[l], (l, 1, k)): m})
    ok_hv = sp.expand(Hv - p[i] * (v[i] - m)) == 0
    H1 = _split_sum(_fold_range_piecewise(sp.Sum(H_il, (l, 1, k)).doit()))
    H1 = _canonical(H1, l).xreplace({sp.Sum(p[l], (l, 1, k)): 1})
    ok_h1 = sp.expand(H1) == 0
    out.append(CheckResult(
        "general k: (H v)_i = p_i (v_i - mean_p v), so null(H) = span(1) (uniform logit shifts); H 1 = 0",
        ok_hv and ok_h1,
        {"Hv_i": str(sp.factor(Hv)), "H1_i": str(H1)},
        section="PSD, symbolic k",
        formula_text="(Hv)_i = p_i (v_i - p.v); Hv = 0 <=> v = c 1",
        formula_latex=r"(Hv)_i = p_i (v_i - p^\top v),\quad Hv = 0 \iff v \in \mathrm{span}(\mathbf{1})",
    ))
    return out


def check_explicit_k(ks=(2, 3, 4, 5)) -> CheckResult:
    """Cross-check of the symbolic-k result with explicit matrices: the Hessian of CE is
    diag(p) - p p^T and v^T H v equals the p-variance of v, for each listed k."""
    bad = []
    for k in ks:
        z = list(sp.symbols(f"z0:{k}", real=True))
        q = list(sp.symbols(f"q0:{k}"))
        v = sp.Matrix(sp.symbols(f"v0:{k}", real=True))
        lse = sp.log(sum(sp.exp(a) for a in z))
        ce = -sum(qi * zi for qi, zi in zip(q, z)) + lse
        hess = sp.hessian(ce, z)
        H = hessian_claim("soft_ce", z)
        p = _softmax(z, range(k))
        mean = sum(pi * vi for pi, vi in zip(p, v))
        var = sum(pi * (vi - mean) ** 2 for pi, vi in zip(p, v))
        if not all(is_zero(e)[0] for e in hess - H) or not is_zero((v.T * H * v)[0] - var)[0]:
            bad.append(k)
    return CheckResult(f"explicit k in {list(ks)}: Hessian of CE = diag(p) - p p^T and v^T H v = Var_p(v)", not bad, {"failed_k": bad}, section="PSD, explicit k")


def check_subset_padding(k: int = 5, subset=(2, 3, 4)) -> CheckResult:
    """KL on a subset of the outputs (aux logits): its Hessian in the FULL output vector is the
    subset's diag(p_S) - p_S p_S^T padded with zeros, so it is PSD and its null space is
    {v : v_S in span(1_S)} (any change of the non-distilled outputs is invisible)."""
    zs = list(sp.symbols(f"a0:{k}"))
    zt = list(sp.symbols(f"b0:{k}"))
    L = loss_expr("kl_subset", zs, zt, subset)
    same = dict(zip(zs, zt))
    hess = sp.Matrix(k, k, lambda i, j: sp.diff(L, zs[i], zs[j]).xreplace(same))
    H = hessian_claim("kl_subset", zt, subset)
    ok = all(is_zero(e)[0] for e in hess - H)
    outside = [i for i in range(k) if i not in subset]
    zero_pad = all(hess[i, j] == 0 for i in outside for j in range(k))
    return CheckResult(
        f"KL on outputs {list(subset)} of k={k}: full Hessian = padded diag(p_S) - p_S p_S^T (rows/cols {outside} are 0)",
        ok and zero_pad,
        {"matches_padded": ok, "zero_rows_outside_subset": zero_pad},
        section="subset (aux) loss",
        formula_text="H = P_S^T (diag(p_S) - p_S p_S^T) P_S; null(H) = {v : v_S = c 1_S}",
        formula_latex=r"H = P_S^\top\big(\mathrm{diag}(p_S) - p_S p_S^\top\big)P_S",
    )


# ---------------------------------------------------------------------------------------------
# 3. Exact small instances.
# ---------------------------------------------------------------------------------------------


def linear_instance(k: int, d_in: int):
    """f(theta, x) = W x + b with symbolic x; theta = (W row-major, b)."""
    x = sp.symbols(f"x0:{d_in}")
    n = k * d_in + k

    def model(theta):
        W = [[theta[i * d_in + j] for j in range(d_in)] for i in range(k)]
        b = theta[k * d_in:]
        return [sum(W[i][j] * x[j] for j in range(d_in)) + b[i] for i in range(k)]

    return model, n


def tanh_instance(k: int, d_in: int, hidden: int):
    """f(theta, x) = V tanh(W x + b) + c: one hidden layer with a smooth activation."""
    x = sp.symbols(f"x0:{d_in}")
    sizes = [hidden * d_in, hidden, k * hidden, k]
    n = sum(sizes)

    def model(theta):
        o = 0
        W = [[theta[o + h * d_in + j] for j in range(d_in)] for h in range(hidden)]
        o += sizes[0]
        b = theta[o:o + hidden]
        o += hidden
        V = [[theta[o + i * hidden + h] for h in range(hidden)] for i in range(k)]
        o += sizes[2]
        c = theta[o:o + k]
        a = [sp.tanh(sum(W[h][j] * x[j] for j in range(d_in)) + b[h]) for h in range(hidden)]
        return [sum(V[i][h] * a[h] for h in range(hidden)) + c[i] for i in range(k)]

    return model, n


def random_point(symbols, seed: int) -> dict:
    rng = random.Random(seed)
    return {s: sp.Rational(rng.randint(-30, 30), rng.randint(11, 29)) for s in symbols}


def check_instance(kind: str, loss: str, *, k: int = 2, d_in: int = 1, hidden: int = 2, subset=None, n_points: int = 0, seed: int = 0):
    """Series of dS in eps for an explicit model; eps^1 and eps^2 vs the general formulas.

    n_points = 0: fully symbolic (theta0, dT, x all symbols; exact identity).
    n_points > 0: the student's gradient is derived symbolically, then theta0, dT and x are set to
    random rationals and the eps-series is taken exactly at each point, compared in 50 digits
    (the tanh network's fully symbolic eps^2 term is too large to expand within the time budget).
    Returns (results, info) where info holds the eps^2 coefficient of dS . dT (per point)."""
    if kind == "linear":
        model, n = linear_instance(k, d_in)
    else:
        model, n = tanh_instance(k, d_in, hidden)
    theta0 = list(sp.symbols(f"w0:{n}"))
    d = list(sp.symbols(f"d0:{n}"))
    xs = list(sp.symbols(f"x0:{d_in}"))
    points = [None] if n_points == 0 else [random_point(theta0 + d + xs, seed + i) for i in range(n_points)]
    tag = f"{kind} instance (k={k}, d_in={d_in}{', hidden=' + str(hidden) if kind != 'linear' else ''}, P={n}), {loss}"
    verdicts: dict[str, list] = {"eps^0 = 0": [], "eps^1 = general formula": [], "eps^2 = general formula": []}
    seconds = []
    for values in points:
        c0, c1, c2 = student_update_coefficients(model, theta0, d, loss, subset, values=values)
        p1, p2, parts = predicted_coefficients(model, theta0, d, loss, subset, values=values)
        for name, got, want in zip(verdicts, (c0, c1, c2), (sp.zeros(n, 1), p1, p2)):
            verdicts[name] += [is_zero(g - w, seed=seed, exact=values is None) for g, w in zip(got, want)]
        seconds.append((c2.T * sp.Matrix(d).xreplace(values or {}))[0])
    res = []
    for name, vs in verdicts.items():
        res.append(CheckResult(f"{tag}: {name}" + ("" if n_points == 0 else f" at {n_points} random rational point(s)"), all(v[0] for v in vs),
                               {"method": sorted({v[1] for v in vs}), "max_abs_residual": max(v[2] for v in vs)}, section="exact instances"))
    return res, {"eps2_coefficient_of_dS_dot_dT": seconds, "parts": parts}


@lru_cache(maxsize=1)
def _linear_k2_ce():
    return check_instance("linear", "soft_ce", k=2, d_in=1)


def eps2_linear_k2_closed_form() -> CheckResult:
    """Reported eps^2 result: for the linear model with k = 2 softmax outputs (x scalar), the eps^2
    coefficient of dS . dT is alpha/2 * p (1 - p) (1 - 2p) (u_1 - u_2)^3, u = J dT, p = p_1.
    It has either sign: the first-order guarantee is not a guarantee at second order."""
    res, info = _linear_k2_ce()
    expr = info["eps2_coefficient_of_dS_dot_dT"][0]
    parts = info["parts"]
    z = parts["z"]
    u = parts["u"]
    p = sp.exp(z[0]) / (sp.exp(z[0]) + sp.exp(z[1]))
    closed = ALPHA / 2 * p * (1 - p) * (1 - 2 * p) * (u[0] - u[1]) ** 3
    ok, method, worst = is_zero(expr - closed)
    return CheckResult(
        "linear k=2 softmax: eps^2 coefficient of dS.dT = alpha/2 p(1-p)(1-2p)(u1-u2)^3 (sign-indefinite)",
        ok and all(r.passed for r in res),
        {"method": method, "max_abs_residual": worst},
        section="eps^2",
        formula_text="[eps^2] dS.dT = alpha/2 * p(1-p)(1-2p) * (u1-u2)^3,  u = J dT",
        formula_latex=r"[\epsilon^2]\, d_S\cdot d_T = \tfrac{\alpha}{2}\, p(1-p)(1-2p)\,(u_1-u_2)^3",
    )


# ---------------------------------------------------------------------------------------------
# 4. Cross-init: the eps^0 term survives.
# ---------------------------------------------------------------------------------------------


def check_cross_init_term(loss: str = "half_se", *, n_params: int = 2, k: int = 2) -> CheckResult:
    """Student starts at theta0' = theta0 + delta. The eps^0 coefficient of dS is
    -alpha J'^T grad_zS l(z', z) (= -alpha J'^T (z' - z) for half-SE), not zero; it vanishes at delta = 0."""
    model, theta0, z, J = taylor_model(n_params, k)
    delta = list(sp.symbols(f"delta0:{n_params}"))
    d = list(sp.symbols(f"d0:{n_params}"))
    start = [t + dl for t, dl in zip(theta0, delta)]
    c0, _ = student_update_coefficients(model, theta0, d, loss, student_theta0=start, order=1)
    s = sp.symbols(f"y0:{n_params}")
    Jp = sp.Matrix(model(list(s))).jacobian(s).xreplace(dict(zip(s, start)))
    zp = sp.Matrix(model(start))
    zs_, zt_ = list(sp.symbols(f"a0:{k}")), list(sp.symbols(f"b0:{k}"))
    L = loss_expr(loss, zs_, zt_)
    g = sp.Matrix([sp.diff(L, a) for a in zs_]).xreplace({**dict(zip(zs_, list(zp))), **dict(zip(zt_, z))})
    want = -ALPHA * Jp.T * g
    matches = all(is_zero(e)[0] for e in (c0 - want))
    nonzero = any(not is_zero(e)[0] for e in c0)
    vanishes_shared = all(is_zero(e.xreplace({dl: 0 for dl in delta}))[0] for e in c0)
    return CheckResult(
        f"cross-init ({loss}): eps^0 term of dS = -alpha J'^T grad l(f', f) is nonzero, vanishes when theta0' = theta0",
        matches and nonzero and vanishes_shared,
        {"matches_formula": matches, "nonzero_for_delta_ne_0": nonzero, "vanishes_at_shared_init": vanishes_shared},
        section="cross-init",
        formula_text="dS = -alpha E[J'^T grad l(f(theta0'), f(theta0))] + O(eps);  half-SE: -alpha E[J'^T (f' - f)]",
        formula_latex=r"d_S = -\alpha\,\mathbb{E}_x\big[J'^\top \nabla_1 l(f_{\theta_0'}(x), f_{\theta_0}(x))\big] + O(\epsilon)",
    )


def cross_init_counterexample() -> CheckResult:
    """Exact, rational: f(theta, x) = theta . x, x uniform on {e1, e2}, half-SE imitation.
    Teacher loss L_T = 1/2 (theta . e1 - 1)^2, theta0 = (0, 0) so dT = -grad L_T = e1; eps = 1/10,
    alpha = 1/2. Shared init: dS . dT = +1/40. Student from theta0' = (1, 0): dS . dT = -9/40 < 0,
    and the student's teacher loss rises from 0 to 81/3200 (it starts at the teacher's optimum)."""
    th = sp.symbols("th0:2")
    e1, e2 = sp.Matrix([1, 0]), sp.Matrix([0, 1])
    xs = [e1, e2]
    f = lambda theta, x: (sp.Matrix(theta).T * x)[0]  # noqa: E731
    LT = lambda theta: sp.Rational(1, 2) * (f(theta, e1) - 1) ** 2  # noqa: E731
    theta0 = [0, 0]
    dT = [-sp.diff(LT(list(th)), t).xreplace(dict(zip(th, theta0))) for t in th]
    eps, alpha = sp.Rational(1, 10), sp.Rational(1, 2)
    teacher = [a + eps * b for a, b in zip(theta0, dT)]

    def student_step(start):
        Ls = sum(sp.Rational(1, 2) * (f(list(th), x) - f(teacher, x)) ** 2 for x in xs) / len(xs)
        return [-alpha * sp.diff(Ls, t).xreplace(dict(zip(th, start))) for t in th]

    dS_shared = student_step(theta0)
    cross_start = [1, 0]
    dS_cross = student_step(cross_start)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    lt_before = LT(cross_start)
    lt_after = LT([a + b for a, b in zip(cross_start, dS_cross)])
    ok = dot(dS_shared, dT) > 0 and dot(dS_cross, dT) < 0 and lt_after > lt_before
    return CheckResult(
        "cross-init counterexample (exact): dS . dT < 0 when the student starts at theta0' = (1, 0)",
        bool(ok),
        {
            "model": "f(theta, x) = theta . x, x uniform on {e1, e2}, half-SE, L_T = 1/2 (theta . e1 - 1)^2",
            "theta0": theta0, "theta0_cross": cross_start, "dT": [str(v) for v in dT], "eps": str(eps), "alpha": str(alpha),
            "dS_dot_dT_shared": str(dot(dS_shared, dT)), "dS_dot_dT_cross": str(dot(dS_cross, dT)),
            "teacher_loss_cross_before": str(lt_before), "teacher_loss_cross_after": str(lt_after),
        },
        section="cross-init",
    )


# ---------------------------------------------------------------------------------------------
# 5. Several GD steps, linearized.
# ---------------------------------------------------------------------------------------------


def derive_multistep_linearized() -> CheckResult:
    """Linearized student (J, H frozen at theta0, so the imitation loss is the quadratic
    1/2 (theta - theta_T)^T K (theta - theta_T) with K = E[J^T H J]): in an eigen-direction of K
    with eigenvalue lam, GD with rate alpha gives c_{n+1} = c_n + alpha lam (Delta - c_n), c_0 = 0,
    so c_n = Delta (1 - (1 - alpha lam)^n) and the alignment (theta_n - theta0) . (theta_T - theta0)
    = sum Delta^2 (1 - (1 - alpha lam)^n) >= 0 for every n iff alpha lam_max <= 2 (GD stable).
    A PD preconditioner P (Adam's first step is P = diag(1/|g|)) gives dS = P K dT instead: aligned
    in the P^-1 metric, not in the Euclidean one (dT^T P K dT has no fixed sign)."""
    n = sp.Symbol("n", integer=True, nonnegative=True)
    lam, Delta = sp.symbols("lambda Delta", real=True)
    c = sp.Function("c")
    sol = sp.rsolve(c(n + 1) - c(n) - ALPHA * lam * (Delta - c(n)), c(n), {c(0): 0})
    closed = Delta * (1 - (1 - ALPHA * lam) ** n)
    ok_closed = sp.simplify(sol - closed) == 0
    # Counterexample to Euclidean alignment under a PD preconditioner (exact 2x2).
    K = sp.Matrix([[1, 0], [0, 0]])
    P = sp.Matrix([[1, 2], [2, 5]])  # symmetric PD (eigenvalues > 0)
    dT = sp.Matrix([1, -1])
    pd = all(ev > 0 for ev in P.eigenvals())
    eucl = (dT.T * P * K * dT)[0]
    metric = ((P * K * dT).T * P.inv() * dT)[0]
    ok = ok_closed and pd and eucl < 0 and metric >= 0
    return CheckResult(
        "k GD steps (linearized): c_n = Delta (1 - (1 - alpha lam)^n), aligned for all n iff alpha lam_max <= 2; "
        "a PD preconditioner breaks Euclidean alignment (exact 2x2 example)",
        bool(ok),
        {"rsolve": str(sol), "preconditioned_example": {"K": str(K.tolist()), "P": str(P.tolist()), "dT": str(list(dT)),
                                                       "dT.(P K dT)": str(eucl), "<P K dT, dT>_{P^-1}": str(metric)}},
        section="multi-step",
        formula_text="theta_n - theta0 = [I - (I - alpha K)^n] (theta_T - theta0),  K = E[J^T H J]",
        formula_latex=r"\theta_n - \theta_0 = \big[I - (I - \alpha K)^n\big](\theta_T - \theta_0),\; K = \mathbb{E}_x[J^\top H J]",
    )


# ---------------------------------------------------------------------------------------------
# Everything, in report order.
# ---------------------------------------------------------------------------------------------

FIRST_ORDER_TEXT = "dS = alpha * eps * E_x[J(x)^T H(x) J(x)] dT + O(eps^2);  dS . dT = alpha * eps * E_x[(J dT)^T H (J dT)] >= 0"
FIRST_ORDER_LATEX = r"d_S = \alpha\epsilon\,\mathbb{E}_x\!\left[J^\top H J\right] d_T + O(\epsilon^2),\qquad d_S\cdot d_T = \alpha\epsilon\,\mathbb{E}_x\!\left[(J d_T)^\top H (J d_T)\right] \ge 0"
SECOND_ORDER_TEXT = "[eps^2] dS = alpha * E_x[J^T (H w + T(u,u)/2)],  u = J dT, w = 1/2 d^2f[dT,dT],  T(u,u) = (Hu)*u - (p.u) Hu - (u^T H u) p (softmax; 0 for SE)"
SECOND_ORDER_LATEX = r"[\epsilon^2]\,d_S = \alpha\,\mathbb{E}_x\!\left[J^\top\!\left(H w + \tfrac12 T(u,u)\right)\right],\; u = J d_T,\; w = \tfrac12 \nabla^2 f[d_T, d_T],\; T(u,u) = (Hu)\odot u - (p^\top u)Hu - (u^\top H u)p"
EQUALITY_TEXT = ("dS . dT = 0 at first order iff J(x) dT in null(H(x)) for D-almost every x: half-SE: J dT = 0; softmax CE: J dT = c(x) 1 "
                 "(a uniform logit shift); KL on a subset S: (J dT)_S = c(x) 1_S (anything on the other outputs)")


@lru_cache(maxsize=1)
def _all_symbolic_cached() -> tuple:
    res: list[CheckResult] = []
    for loss, kwargs in (("half_se", {}), ("soft_ce", {}), ("kl_subset", {"k": 4, "subset": (2, 3)})):
        res.append(check_hessian_cross_term(loss, **kwargs))
    res += derive_softmax_psd_general_k()
    res.append(check_explicit_k())
    res.append(check_subset_padding())
    res += check_general_model("half_se", n_params=2, k=2)
    res += check_general_model("soft_ce", n_params=2, k=3)
    res += check_general_model("kl_subset", n_params=2, k=4, subset=(2, 3))
    lin_se, _ = check_instance("linear", "half_se", k=2, d_in=2)
    lin_ce, _ = _linear_k2_ce()
    tanh_se, _ = check_instance("tanh", "half_se", k=2, d_in=2, hidden=2)
    tanh_ce, info = check_instance("tanh", "soft_ce", k=2, d_in=1, hidden=1, n_points=1)
    for r in tanh_ce:  # report the eps^2 coefficient of dS . dT at the point (in units of alpha)
        r.details["eps2_coefficient_of_dS_dot_dT_over_alpha"] = [float(sp.N(e / ALPHA, 30)) for e in info["eps2_coefficient_of_dS_dot_dT"]]
    res += lin_se + list(lin_ce) + tanh_se + tanh_ce
    res.append(eps2_linear_k2_closed_form())
    res.append(check_cross_init_term("half_se"))
    res.append(check_cross_init_term("soft_ce", k=2))
    res.append(cross_init_counterexample())
    res.append(derive_multistep_linearized())
    return tuple(res)


def run_symbolic_checks() -> list[CheckResult]:
    """All symbolic checks (cached: the derivations are deterministic)."""
    return list(_all_symbolic_cached())
