"""Every closed-form dual kernel against quadrature.

Smooth activations (erf, GELU, sin, cos, identity) are compared with ntkit's own Gauss–Hermite rule, which converges
geometrically for them: 128 points reach float64 rounding (~1e-16; erf, the slowest, is at 3e-12 with 64 points and
2e-16 with 128), so the tolerance is 1e-13. Kinked activations (ReLU,
LeakyReLU, Abs) make Gauss–Hermite converge only polynomially, so they are checked against scipy's adaptive quadrature
of the conditional expectation split at the kink (accurate to ~1e-12, tolerance 1e-10), and against ntkit's rule
for its convergence with degree.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ntkit as nk

# (c, q1, q2) triples: negative, zero, moderate and nearly perfect correlation, unequal variances.
POINTS = [(0.3, 1.0, 0.5), (-0.5, 0.7, 1.3), (0.0, 2.0, 0.3), (0.9, 1.1, 0.9), (1.19, 1.2, 1.2), (-0.8, 0.8, 0.8)]

SMOOTH = [nk.Erf(), nk.GELU(), nk.Sin(), nk.Cos(), nk.Identity()]
KINKED = [nk.ReLU(), nk.LeakyReLU(0.2), nk.LeakyReLU(-0.7), nk.Abs()]


def _grid(dtype=torch.float64):
    c, q1, q2 = (torch.tensor([[p[i] for p in POINTS]], dtype=dtype) for i in range(3))
    return c, q1, q2


@pytest.mark.parametrize("act", SMOOTH, ids=repr)
def test_smooth_closed_form_matches_gauss_hermite(act):
    c, q1, q2 = _grid()
    k, kdot = act.dual(c, q1, q2)
    reference = nk.Activation(act.fn, degree=128)
    k_ref, kdot_ref = reference.dual(c, q1, q2)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(kdot, kdot_ref, rtol=0, atol=1e-13)
    q = torch.tensor([0.0, 0.3, 1.0, 4.0], dtype=torch.float64)
    # The 1-D rule is cheap: erf² at q = 4 needs ~500 points for 1e-13. degree 256 is 256 points at unit variance and
    # 1024 at q = 4 (points grow with the variance, ntkit.kernels.quadrature.rule_points).
    one_d = nk.Activation(act.fn, degree=256)
    torch.testing.assert_close(act.variance(q), one_d.variance(q), rtol=0, atol=1e-13)


def _conditional_expectations(c, q1, q2, a_pos, a_neg):
    """E[σ(u)σ(v)] and E[σ'(u)σ'(v)] for σ(u) = a_pos·u (u > 0), a_neg·u (u < 0), by 1-D adaptive quadrature.

    Given z1, v = sqrt(q2)(ρ z1 + s z2) ~ N(m, τ²) with m = sqrt(q2) ρ z1, τ = sqrt(q2) s, and
    E[v⁺ | z1] = m Φ(m/τ) + τ φ(m/τ), E[1{v > 0} | z1] = Φ(m/τ): the inner integral is exact and smooth, so the
    outer integral (split at the kink z1 = 0) converges to ~1e-12 — an independent route to the dual kernel.
    """
    rho = c / math.sqrt(q1 * q2)
    s = math.sqrt(max(1.0 - rho * rho, 0.0))
    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    tau = math.sqrt(q2) * s

    def inner(z1):
        m = math.sqrt(q2) * rho * z1
        if tau == 0.0:  # |ρ| = 1: v = m exactly
            v_pos, p_pos = max(m, 0.0), float(m > 0)
        else:
            v_pos, p_pos = m * Phi(m / tau) + tau * phi(m / tau), Phi(m / tau)
        return a_pos * v_pos + a_neg * (m - v_pos), a_pos * p_pos + a_neg * (1.0 - p_pos)

    def outer(z1, which):
        u = math.sqrt(q1) * z1
        g = (a_pos * u if u > 0 else a_neg * u) if which == 0 else (a_pos if u > 0 else a_neg)
        return phi(z1) * g * inner(z1)[which]

    return [sum(integrate.quad(outer, lo, hi, args=(which,), epsabs=1e-13, epsrel=1e-12)[0]
                for lo, hi in ((-np.inf, 0.0), (0.0, np.inf))) for which in (0, 1)]


# Slopes (a, b) of σ(u) = a·u for u > 0 and b·u for u < 0, in plain Python so that scipy's integrand is cheap.
SLOPES = {"ReLU()": (1.0, 0.0), "LeakyReLU(0.2)": (1.0, 0.2), "LeakyReLU(-0.7)": (1.0, -0.7), "Abs()": (1.0, -1.0)}


@pytest.mark.parametrize("act", KINKED, ids=repr)
def test_kinked_closed_form_matches_adaptive_quadrature(act):
    c, q1, q2 = _grid()
    k, kdot = act.dual(c, q1, q2)
    for i, (ci, a, b) in enumerate(POINTS):
        k_ref, kdot_ref = _conditional_expectations(ci, a, b, *SLOPES[repr(act)])
        assert k[0, i].item() == pytest.approx(k_ref, abs=1e-10)
        assert kdot[0, i].item() == pytest.approx(kdot_ref, abs=1e-10)


@pytest.mark.parametrize("act", KINKED, ids=repr)
def test_kinked_closed_form_matches_gauss_hermite_rule(act):
    """ntkit's quadrature path on the same σ converges to the closed form (O(degree^-3/2) for a kink)."""
    c, q1, q2 = _grid()
    k, kdot = act.dual(c, q1, q2)
    k_lo, kdot_lo = nk.Activation(act.fn, degree=32).dual(c, q1, q2)
    k_hi, kdot_hi = nk.Activation(act.fn, degree=256).dual(c, q1, q2)
    err_lo, err_hi = (k - k_lo).abs().max(), (k - k_hi).abs().max()
    # A kink makes the error fall like degree^(-3/2) for K: 8x more points, ~22x smaller; ask for 8x.
    assert err_lo < 2e-2 and err_hi < err_lo / 8
    # Kdot integrates a step function: error ~ degree^(-1/2)·..., measured 4e-3 at 200 points; ask for a decrease.
    assert (kdot - kdot_hi).abs().max() < (kdot - kdot_lo).abs().max()
    assert (kdot - kdot_hi).abs().max() < 2e-2


@pytest.mark.parametrize("act", SMOOTH + KINKED, ids=repr)
def test_variance_is_the_dual_at_full_correlation(act):
    q = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    expected = nk.Activation(act.fn, degree=200).variance(q)
    # The 1-D rule on a kinked σ² is accurate to ~1e-6 at degree 200 (σ² is C¹); exact for smooth σ.
    torch.testing.assert_close(act.variance(q), expected, rtol=1e-5, atol=1e-6)


def test_derivative_kernel_is_dK_dc_price_theorem():
    """Kdot = ∂K/∂c (Price's theorem) for every closed form, by autograd through K."""
    for act in SMOOTH + KINKED:
        c, q1, q2 = _grid()
        c = c.clone().clamp(-0.75, 0.75).requires_grad_(True)  # stay away from |ρ| = 1 where ∂K/∂c blows up
        k, kdot = act.dual(c, q1, q2)
        (grad,) = torch.autograd.grad(k.sum(), c)
        torch.testing.assert_close(grad, kdot, rtol=1e-10, atol=1e-12, msg=repr(act))


def test_leaky_relu_special_cases():
    c, q1, q2 = _grid()
    for a, b in ((nk.LeakyReLU(0.0), nk.ReLU()), (nk.LeakyReLU(-1.0), nk.Abs()), (nk.LeakyReLU(1.0), nk.Identity())):
        for x, y in zip(a.dual(c, q1, q2), b.dual(c, q1, q2)):
            torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-14)


def test_zero_variance_gives_finite_kernels():
    zero = torch.zeros(1, 3, dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    for act in SMOOTH + KINKED + [nk.Tanh()]:
        k, kdot = act.dual(zero, q, q.flip(1))
        assert torch.isfinite(k).all() and torch.isfinite(kdot).all(), repr(act)


@pytest.mark.parametrize("act", [nk.Tanh(), nk.Sigmoid(), nk.Softplus()], ids=repr)
def test_quadrature_activations_converge_and_explicit_derivative_matches_autograd(act):
    c, q1, q2 = _grid()
    k, kdot = act.dual(c, q1, q2)
    k_hi, kdot_hi = nk.Activation(act.fn, degree=256).dual(c, q1, q2)  # autograd derivative
    # Smooth σ: Gauss–Hermite converges geometrically. Measured at the default 128 points (per unit variance):
    # tanh (the slowest, poles at ±iπ/2) 1.1e-14 for K and 2.9e-13 for Kdot, sigmoid/softplus < 6e-15 for both;
    # tolerances are 3-10x those.
    tol, tol_dot = (1e-13, 1e-12) if act.name == "tanh" else (2e-14, 2e-14)
    torch.testing.assert_close(k, k_hi, rtol=0, atol=tol)
    torch.testing.assert_close(kdot, kdot_hi, rtol=0, atol=tol_dot)


@pytest.mark.parametrize("act", KINKED, ids=repr)
def test_rectified_derivatives_written_out_match_numerical_ones(act):
    """The rectified duals' hand-written derivative rule (``dual._ArcCosine``) in forward and reverse mode against
    gradcheck's central differences (float64, its default tolerances), at |ρ| < 1, with broadcast (N, 1) and (1, M)
    variances as the engine passes them."""
    generator = torch.Generator().manual_seed(0)
    q1 = torch.rand(3, 1, generator=generator, dtype=torch.float64) + 0.5
    q2 = torch.rand(1, 4, generator=generator, dtype=torch.float64) + 0.5
    c = 0.9 * (2 * torch.rand(3, 4, generator=generator, dtype=torch.float64) - 1) * torch.sqrt(q1 * q2)
    inputs = tuple(t.requires_grad_() for t in (c, q1, q2))
    assert torch.autograd.gradcheck(lambda *t: act.dual(*t), inputs, check_forward_ad=True)


def test_rectified_derivatives_are_finite_at_full_correlation_and_zero_variance():
    """Autodiff of arccos and sqrt(1 − ρ²) gives ∞ − ∞ = NaN at ρ = ±1 and sqrt's slope gives 0·∞ at q = 0; the
    written-out rule is finite there, with the derivatives along a family that keeps ρ = 1 (c = q1 = q2 = t·q):
    K = t·q·(a² + b²)/2 grows linearly, K̇ is constant."""
    q = torch.tensor([[0.7, 0.0, 2.0]], dtype=torch.float64)
    for act in KINKED:
        even = (act.slopes[0] ** 2 + act.slopes[1] ** 2) / 2
        (k, kdot), (dk, dkdot) = torch.func.jvp(lambda t: act.dual(t * q, t * q, t * q), (torch.tensor(1.0),),
                                                (torch.tensor(1.0, dtype=torch.float64),))
        torch.testing.assert_close(dk, even * q, rtol=1e-14, atol=0.0, msg=repr(act))
        torch.testing.assert_close(dkdot, torch.zeros_like(q), rtol=0.0, atol=0.0, msg=repr(act))
        x = q.clone().requires_grad_()
        k, kdot = act.dual(x, x, x)
        (grad,) = torch.autograd.grad(k.sum() + kdot.sum(), x)
        # reverse mode along (1, 1, 1): the same slope where q > 0; at q = 0, where only c = 0 is admissible and
        # K has no derivative in c, the rule's value is a convention and only needs to be finite.
        assert torch.isfinite(grad).all(), repr(act)
        positive = q > 0
        torch.testing.assert_close(grad[positive], torch.full_like(q, even)[positive], rtol=1e-14, atol=0.0,
                                   msg=repr(act))


def test_erf_ntk_has_no_cancellation_at_large_variances():
    """Issue 13's reproducer: K̇ = (4/π)/√((1+2q1)(1+2q2) − 4c²) subtracted two numbers of size 4q² (2.9e27 instead
    of 10066.84 in float32; 2.1e172 for [[1e9, −2e9]] in float64). Expanded as 1 + 2(q1+q2) + 4(q1q2 − c²) it is
    exact for a point with itself: float32 to its rounding, float64 to 1e-12 of the closed form on this point
    (one hidden layer, q = |x|²/2, Θ = Σ₁ + K̇·q with Σ₁ = (2/π) arcsin(2q/(1+2q)))."""
    arch = nk.mlp(1, 8, activation="erf", b_std=0.0)
    for point, dtype, rtol in (([1e4, -2e4], torch.float32, 2e-6), ([1e4, -2e4], torch.float64, 1e-12),
                               ([1e9, -2e9], torch.float64, 1e-12)):
        q = (point[0] ** 2 + point[1] ** 2) / 2
        expected = (2 / math.pi) * math.asin(2 * q / (1 + 2 * q)) + (4 / math.pi) / math.sqrt(1 + 4 * q) * q
        value = float(arch.kernel(torch.tensor([point], dtype=dtype)).ntk[0, 0])
        assert value == pytest.approx(expected, rel=rtol), (point, dtype)
    assert expected == pytest.approx(1.0066e9, rel=1e-4)


def test_gelu_kernels_of_large_inputs_are_computed_not_refused():
    """GELU on inputs of size 1e6 (kernel ~1.8e12): q1 q2 S overflowed float32 and t(1 − r) cancelled; the
    rewritten formulas keep float32 within 1e-6 of float64."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 1e6
    arch = nk.mlp(2, 8, activation="gelu", b_std=0.0)
    low, high = arch.kernel(x), arch.kernel(x.double())
    for name in ("nngp", "ntk"):
        error = (low[name].double() - high[name]).abs().max() / high[name].abs().max()
        assert float(error) < 1e-6, name
