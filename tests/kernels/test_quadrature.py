"""The quadrature dual kernels (tanh, sigmoid, softplus, any σ): accurate at every variance, symmetric, consistent.

References are independent of ntkit's rule: the 2-D Gauss–Hermite product rule u = √q1 z1,
v = √q2 (ρ z1 + √(1−ρ²) z2) with 1500 points per axis (ntkit's former algorithm, ~2·10⁶ evaluations per entry; it
and ntkit's rule agree to < 1e-12 relative, both converged, since 1500 points resolve σ(√q z) up to q ≈ 10 with
D / q = 150), and scipy's adaptive quadrature for the 1-D expectations at ρ = ±1.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import roots_hermitenorm

import ntkit as nk
from ntkit.kernels.quadrature import MAX_RULE_POINTS, dual_by_quadrature, rule_points

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: small tiles, one thread is faster

QUADRATURE_ACTIVATIONS = [nk.Tanh(), nk.Sigmoid(), nk.Softplus()]
VARIANCES = [0.1, 1.0, 3.0, 10.0]
CORRELATIONS = [-1.0, -0.999, 0.0, 0.5, 0.999, 1.0]
_NUMPY = {"tanh": (np.tanh, lambda u: 1.0 - np.tanh(u) ** 2),
          "sigmoid": (lambda u: 0.5 * (1.0 + np.tanh(u / 2)), lambda u: 0.25 / np.cosh(u / 2) ** 2),
          "softplus": (lambda u: np.logaddexp(0.0, u), lambda u: 0.5 * (1.0 + np.tanh(u / 2)))}


def product_rule(g, q1, q2, rho, points=1500):
    """E[g(u) g(v)] by the 2-D Gauss–Hermite product rule (reference; rows of nodes in blocks to bound memory)."""
    z, w = roots_hermitenorm(points)
    w = w / w.sum()
    inner = math.sqrt(q2) * math.sqrt(max(0.0, 1.0 - rho * rho)) * z
    total = 0.0
    for block in np.array_split(np.arange(points), 10):
        v = math.sqrt(q2) * rho * z[block, None] + inner[None, :]
        total += (w[block] * g(math.sqrt(q1) * z[block]) * (g(v) @ w)).sum()
    return total


def aligned_integral(g, q1, q2, sign):
    """E[g(√q1 z) g(sign·√q2 z)] by scipy's adaptive quadrature (|z| ≤ 12: the density beyond is < 1e-31; split at
    0, where σ(√q z) is steepest; scipy's error estimates are ≤ 1.5e-13 relative for these integrands)."""
    value, _ = integrate.quad(lambda z: g(math.sqrt(q1) * z) * g(sign * math.sqrt(q2) * z) * math.exp(-z * z / 2),
                              -12, 12, epsabs=0.0, epsrel=1e-13, limit=400, points=[0.0])
    return value / math.sqrt(2 * math.pi)


def reference(name, q1, q2, rho):
    """(K, K̇, scale of K, scale of K̇): the scales √(E g(u)² E g(v)²) make the errors relative."""
    out = []
    for g in _NUMPY[name]:
        value = aligned_integral(g, q1, q2, rho) if abs(rho) == 1.0 else product_rule(g, q1, q2, rho)
        out.append(value)
    for g in _NUMPY[name]:
        out.append(math.sqrt(aligned_integral(g, q1, q1, 1.0) * aligned_integral(g, q2, q2, 1.0)))
    return out


@pytest.mark.parametrize("q", VARIANCES)
def test_tanh_is_accurate_at_every_variance_and_correlation(q):
    """The README's problem case: with the old fixed 64-point rule K̇'s error reached 1.3e-2 at q = 10."""
    act = nk.Tanh()
    c = torch.tensor([[rho * q for rho in CORRELATIONS]], dtype=torch.float64)
    variance = torch.full((1, 1), q, dtype=torch.float64)
    k, kdot = act.dual(c, variance, variance)
    for i, rho in enumerate(CORRELATIONS):
        k_ref, kdot_ref, k_scale, kdot_scale = reference("tanh", q, q, rho)
        # Measured worst relative error 2e-11 (K̇ at q = 1, |ρ| ≥ 0.999, where the rule has its smallest ratio
        # points / q = 128); 1e-9 leaves a 50x margin and is 100x tighter than the 1e-7 the rule promises.
        assert abs(float(k[0, i]) - k_ref) <= 1e-9 * k_scale, (q, rho)
        assert abs(float(kdot[0, i]) - kdot_ref) <= 1e-9 * kdot_scale, (q, rho)


@pytest.mark.parametrize("act", QUADRATURE_ACTIVATIONS[1:], ids=repr)
def test_sigmoid_and_softplus_match_the_reference(act):
    """σ with both even and odd Hermite parts (sigmoid: constant + odd; softplus: u/2 + even), unequal variances:
    every part of the even/odd split, and rules of different sizes on the two sides (q = 0.3 and 7.5)."""
    pairs = [(1.0, 1.0, 0.999), (0.3, 7.5, 0.5), (7.5, 0.3, -0.999), (10.0, 10.0, 1.0), (3.0, 0.1, -1.0)]
    c = torch.tensor([[rho * math.sqrt(q1 * q2) for q1, q2, rho in pairs]], dtype=torch.float64)
    q1 = torch.tensor([[p[0] for p in pairs]], dtype=torch.float64)
    q2 = torch.tensor([[p[1] for p in pairs]], dtype=torch.float64)
    k, kdot = act.dual(c, q1, q2)
    for i, (a, b, rho) in enumerate(pairs):
        k_ref, kdot_ref, k_scale, kdot_scale = reference(act.name, a, b, rho)
        # sigmoid/softplus are smoother than tanh (poles at ±iπ, not ±iπ/2): measured < 1e-13 relative.
        assert abs(float(k[0, i]) - k_ref) <= 1e-11 * k_scale, (a, b, rho)
        assert abs(float(kdot[0, i]) - kdot_ref) <= 1e-11 * kdot_scale, (a, b, rho)


@pytest.mark.parametrize("act", QUADRATURE_ACTIVATIONS, ids=repr)
def test_perfect_correlation_equals_the_one_dimensional_rule(act):
    """ρ = 1 with equal variances (the diagonal) is bitwise the 1-D rule the variance propagation uses, so a point's
    correlation with itself stays exactly 1; ρ → 1 approaches it continuously (discrete Parseval)."""
    q = torch.tensor([0.0, 0.1, 0.9, 1.0, 1.7, 3.0, 10.0, 15.0], dtype=torch.float64)
    k, kdot = act.dual(q, q, q)
    assert torch.equal(k, act.variance(q))
    # Just below ρ = 1 the series itself: within its 1-D rule's rounding (scipy's Gauss–Hermite nodes and weights past
    # 150 points come from asymptotic expansions, ~1e-14 relative; measured 3.3e-14 at 2048 points) plus
    # ρ's distance to 1 times ∂K/∂ρ = √(q1 q2) K̇ ≤ q·kdot (1e-15 · 15 · 1).
    below = act.dual(q * (1 - 1e-15), q, q)
    torch.testing.assert_close(below[0], k, rtol=1e-13, atol=2e-14)
    torch.testing.assert_close(below[1], kdot, rtol=1e-13, atol=2e-14)
    # ρ = −1: E[σ(u)σ(−u)] by the same rule; against scipy to the rule's accuracy (tanh K: < 1e-12 measured).
    k_anti, _ = act.dual(-q[1:], q[1:], q[1:])
    expected = [aligned_integral(_NUMPY[act.name][0], float(v), float(v), -1.0) for v in q[1:]]
    torch.testing.assert_close(k_anti, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_self_correlation_stays_exactly_one_for_a_closed_form_after_tanh():
    """tanh then ReLU: ReLU's arccos is √-sensitive to 1 − ρ (1 ulp off gives 1e-8 in K̇), so the diagonal of a
    kernel with ReLU after tanh must equal the kernel of each point alone (a 1x1 grid, ρ = 1 exactly)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64) * 2
    arch = nk.Serial(nk.Dense(8, w_std=1.5, b_std=0.3), nk.Tanh(), nk.Dense(8, w_std=1.5, b_std=0.3), nk.ReLU(),
                     nk.Dense(1, w_std=1.5, b_std=0.3))
    diagonal = arch.kernel(x).ntk.diagonal()
    alone = torch.stack([arch.kernel(x[i:i + 1]).ntk[0, 0] for i in range(len(x))])
    torch.testing.assert_close(diagonal, alone, rtol=1e-15, atol=0)


def test_float32_is_accurate_to_float32_rounding():
    act = nk.Tanh()
    rho = torch.linspace(-1, 1, 41, dtype=torch.float64)[None, :]
    for q in VARIANCES:
        variance = torch.full((1, 1), q, dtype=torch.float64)
        k64, kdot64 = act.dual(rho * q, variance, variance)
        k32, kdot32 = act.dual((rho * q).float(), variance.float(), variance.float())
        assert k32.dtype == kdot32.dtype == torch.float32
        k_scale, kdot_scale = float(act.variance(variance)), float(act.dual(variance, variance, variance)[1])
        # Measured ≤ 2.4e-7 relative (2 float32 ulps, 1.2e-7 each: rounding the inputs, then the sum); 4 ulps.
        assert float((k32.double() - k64).abs().max()) <= 5e-7 * k_scale, q
        assert float((kdot32.double() - kdot64).abs().max()) <= 5e-7 * kdot_scale, q


def test_rule_grows_with_the_variance_and_is_capped():
    q = torch.tensor([0.0, 0.5, 1.0, 1.01, 2.0, 3.0, 10.0, 16.0, 1e6])
    assert rule_points(q, 128).tolist() == [128, 128, 128, 256, 256, 512, 2048, 2048, MAX_RULE_POINTS]
    assert rule_points(q, 4096).tolist()[:3] == [4096] * 3  # a user's degree above the cap is honoured
    with pytest.raises(FloatingPointError, match="variance overflowed"):
        rule_points(torch.tensor([1.0, float("inf")]), 128)


def test_each_entry_depends_on_its_own_pair_only():
    """Grid entries (mixed variances, several rule sizes in one tile) equal the same pairs evaluated one by one:
    the per-point rules, their zero padding and the regrouping by rule size keep every pair's own arithmetic."""
    gen = torch.Generator().manual_seed(0)
    q1 = torch.tensor([0.05, 0.8, 1.3, 2.5, 6.0, 11.0], dtype=torch.float64)[:, None]
    q2 = torch.tensor([0.4, 1.0, 3.5, 9.0], dtype=torch.float64)[None, :]
    rho = torch.rand(6, 4, generator=gen, dtype=torch.float64) * 2 - 1
    rho[0, 0], rho[2, 1] = 1.0, -1.0
    c = rho * torch.sqrt(q1 * q2)
    k, kdot = nk.Tanh().dual(c, q1, q2)
    for i in range(6):
        for j in range(4):
            one = nk.Tanh().dual(c[i:i + 1, j:j + 1], q1[i:i + 1], q2[:, j:j + 1])
            # Only the dropped negligible terms (below 1e-3 ulp each) and summation order differ.
            torch.testing.assert_close(k[i, j], one[0][0, 0], rtol=1e-14, atol=1e-16)
            torch.testing.assert_close(kdot[i, j], one[1][0, 0], rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 5e-6)])
def test_kernel_of_x_equals_kernel_of_x_and_x(dtype, tol):
    """The former 2-D rule treated u and v asymmetrically: kernel(X) (upper triangle mirrored) and kernel(X, X)
    differed by ~2e-4 here. Now only the Gram product's rounding differs. Unnormalised inputs put q between 0.1 and
    ~11, so tiles mix rules of 128 to 2048 points."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(40, 5, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.0, 5)).to(dtype)
    arch = nk.mlp(2, 64, activation="tanh", w_std=1.3, b_std=0.2)
    one, two = arch.kernel(x), arch.kernel(x, x)
    tiled = arch.kernel(x, batch_size=9)
    for name in ("nngp", "ntk"):
        scale = float(one[name].abs().max())
        # float64: rounding of the Gram products through two layers (~10 ulps); float32: measured 7e-7 relative
        # with rows of 300 points, 5e-6 is ~40 ulps.
        assert float((one[name] - two[name]).abs().max()) <= tol * scale, name
        assert float((one[name] - tiled[name]).abs().max()) <= tol * scale, name
        assert torch.equal(one[name], one[name].T)


def test_capped_rule_warns_with_an_honest_accuracy():
    """q = 64 needs 8192 points at degree 128 (capped at 2048): the warning's estimate must not understate the real
    error, which at ρ = 1 is the 1-D rule's error on σ'² (against scipy)."""
    q = 64.0
    variance = torch.full((1, 1), q, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, kdot = nk.Tanh().dual(variance, variance, variance)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "capped at 2048 points" in messages[0], messages
    stated = float(re.search(r"up to ~([0-9.]+e[+-][0-9]+)", messages[0]).group(1))
    exact = aligned_integral(_NUMPY["tanh"][1], q, q, 1.0)
    actual = abs(float(kdot) - exact) / exact
    assert actual <= stated <= 100 * actual, (actual, stated)  # measured: 4.6e-5 actual, 2e-4 stated


def test_no_warning_when_the_cap_costs_nothing():
    q = torch.full((1, 1), 4.0, dtype=torch.float64)  # 4096 points asked for, 2048 given: q / 2048 is tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nk.Activation(torch.erf, degree=1024).dual(q, q, q)
        nk.Tanh().dual(q, q, q)


def test_forward_mode_derivative_is_finite_and_exact_at_perfect_correlation():
    """No √(1−ρ²) in the series: the tangent at ρ = 1 is finite and matches a central difference in q."""
    from torch.func import jvp

    q = torch.tensor([[1.5]], dtype=torch.float64)  # inside one rule size (256 points for 1 < q ≤ 2)
    fn, dfn = torch.tanh, (lambda u: 1.0 - torch.tanh(u) ** 2)

    def along_ray(s):  # c = q1 = q2 = s: points on one ray keep ρ = 1
        return dual_by_quadrature(fn, dfn, s, s, s, 128)

    _, (dk, dkdot) = jvp(along_ray, (q,), (torch.ones_like(q),))
    step = 1e-5
    up, down = along_ray(q + step), along_ray(q - step)
    # Central difference: truncation O(step²) ≈ 1e-10, rounding O(ulp/step) ≈ 1e-11.
    torch.testing.assert_close(dk, (up[0] - down[0]) / (2 * step), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(dkdot, (up[1] - down[1]) / (2 * step), rtol=1e-8, atol=1e-9)


def test_coefficients_are_computed_once_per_block_of_points_and_change_nothing(monkeypatch):
    """Within one arch.kernel call each block of points' Hermite coefficients is computed once per activation (a
    block meets every other block in some tile): same values as one big tile, and nothing outlives the call."""
    from ntkit.kernels import cache, quadrature

    calls = []
    original = quadrature._coefficients_and_moments
    monkeypatch.setattr(quadrature, "_coefficients_and_moments", lambda *a: calls.append(1) or original(*a))
    arch = nk.mlp(2, 8, activation="tanh", b_std=0.2)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tiled = arch.kernel(x, batch_size=10)  # 4 blocks, 10 tiles on and above the diagonal
    assert len(calls) == 4 * 2  # 4 blocks x 2 tanh layers (20 per tile pair without the cache)
    assert cache._CACHE.get() is None
    calls.clear()
    whole = arch.kernel(x, batch_size=40)
    torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(tiled.nngp, whole.nngp, rtol=1e-13, atol=0)


def test_variances_and_self_kernels_reuse_the_coefficients_evaluations(monkeypatch):
    """σ and σ' are evaluated at a block's nodes once per layer: the 1-D moments (the next variances, the diagonal's
    E[σ(u)²]) come from the same evaluations as the Mehler coefficients, bitwise what a lone computation gives."""
    from ntkit.kernels import quadrature

    evaluations, groups = [], []
    projection = quadrature._projection
    monkeypatch.setattr(quadrature, "_projection", lambda *a: groups.append(1) or projection(*a))
    arch = nk.Serial(nk.Dense(8, b_std=0.2),
                     nk.Activation(lambda u: evaluations.append("fn") or torch.tanh(u),
                                   lambda u: evaluations.append("dfn") or 1 - torch.tanh(u) ** 2),
                     nk.Dense(1))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = arch.kernel(x, batch_size=10)
    assert evaluations.count("fn") == evaluations.count("dfn") == len(groups) > 0
    alone = arch.kernel_diagonal(x)  # no cache: the 1-D moments computed on their own
    assert torch.equal(k.ntk.diagonal(), alone.ntk) and torch.equal(k.nngp.diagonal(), alone.nngp)
