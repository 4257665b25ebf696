r"""Closed-form dual kernels of activations.

For pre-activations (u, v) ~ N(0, [[q1, c], [c, q2]]) the dual kernel of σ is the pair

    K(c, q1, q2)    = E[σ(u) σ(v)]          (the NNGP step, Jacot et al. 2018, Prop. 1)
    Kdot(c, q1, q2) = E[σ'(u) σ'(v)]        (the NTK step,  Jacot et al. 2018, Thm. 1)

and by Price's theorem Kdot = ∂K/∂c. Every function here takes broadcastable tensors ``c, q1, q2`` and returns
``(K, Kdot)``; ``Kdot`` is None when ``derivative`` is False so the NNGP-only path skips its cost. The functions are
plain torch so that ``torch.compile`` can fuse a whole network's recursion into one elementwise pass.

Correlations ρ = c / sqrt(q1 q2) are clamped to [-1, 1] (rounding can push them past it for duplicated points), and
a zero variance (a zero input with no bias) gives ρ = 0, where every formula below is finite.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

_TWO_PI = 2.0 * math.pi


def correlation(c: Tensor, q1: Tensor, q2: Tensor) -> tuple[Tensor, Tensor]:
    """Return (ρ, sqrt(q1 q2)) with ρ clamped to [-1, 1] and ρ = 0 where a variance vanishes.

    The norm is √q1·√q2, never √(q1 q2): the product of two variances underflows or overflows float32 beyond
    ~1e±19 (a 30-layer ReLU net with w_std = 0.5 has q ~ 1e-27 and came out all zeros; inputs of size 1e12 were
    refused as overflow), while each root stays in range. A point with itself then has c = q but √q·√q within
    2 ulps of q, so correlations within 4 ulps of 1 are snapped to 1, as the in-place spatial dual does: at
    ρ ≈ 1 arccos turns an ulp into √ε.
    """
    norm = torch.sqrt(q1) * torch.sqrt(q2)
    finfo = torch.finfo(norm.dtype)
    rho = (c / torch.clamp(norm, min=finfo.tiny)).clamp(-1.0, 1.0)
    rho = torch.where(rho > 1.0 - 4.0 * finfo.eps, 1.0, rho)
    return rho, norm


def rectified(c: Tensor, q1: Tensor, q2: Tensor, a: float, b: float, derivative: bool = True):
    r"""σ(u) = a·u for u > 0, b·u for u < 0 (ReLU: a=1, b=0; LeakyReLU(s): a=1, b=s; Abs: a=1, b=-1).

    Writing θ = arccos ρ (Cho & Saul 2009, arc-cosine kernel of degree 1):

        K    = sqrt(q1 q2) [ (a-b)²/(2π) (sin θ - θ cos θ) + (a² + b²)/2 · cos θ ]
        Kdot = (a² + b²)/2 - (a-b)²/(2π) · θ

    At ρ = 1 (θ = 0): K = (a² + b²)/2 · q, which is the variance E[σ(u)²].
    """
    mix = (a - b) ** 2 / _TWO_PI
    even = (a * a + b * b) / 2.0
    # Compiled passes need no derivative rule and torch.compile should see plain arithmetic; eager calls go
    # through the autograd Function so that forward- and reverse-mode derivatives are finite at ρ = ±1 and q = 0.
    if torch.compiler.is_compiling():
        k, kdot = _arc_cosine(c, q1, q2, mix, even)[:2]
    else:
        k, kdot = _ArcCosine.apply(c, q1, q2, mix, even)
    return k, (kdot if derivative else None)


def _arc_cosine(c: Tensor, q1: Tensor, q2: Tensor, mix: float, even: float):
    """(K, K̇, ρ, sqrt(q1 q2)) of ``rectified`` with mix = (a−b)²/(2π) and even = (a²+b²)/2."""
    rho, norm = correlation(c, q1, q2)
    theta = torch.arccos(rho)
    sin_theta = torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0))
    kdot = even - mix * theta
    return norm * (mix * sin_theta + kdot * rho), kdot, rho, norm


def _ratio_or_zero(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, and 0 where the denominator is 0."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


class _ArcCosine(torch.autograd.Function):
    r"""The rectified dual (K, K̇)(c, q1, q2) with its derivatives written out, so that AD through it stays finite.

    Autodiff of the formula differentiates arccos ρ and sqrt(1 − ρ²) separately: both are infinite at ρ = ±1,
    where every point paired with itself sits, and their sum is ∞ − ∞ = NaN although K is smooth there; and
    sqrt(q1 q2) has an infinite derivative at a zero variance (a zero input without bias). With n = sqrt(q1 q2),
    K = n J(ρ), J' = K̇ (Price's theorem) and dn/n = ½ (dq1/q1 + dq2/q2):

        dρ = dc/n − ρ dn/n,     dK = K̇ dc + (K − K̇ ρ n) dn/n,     dK̇ = mix / sqrt(1 − ρ²) · dρ,

    with dn/n and dc/n taken as 0 where a variance is 0, and dK̇ as 0 at |ρ| = 1. Both zeros are exact for what
    ntkit differentiates (hyperparameters): a zero variance stays zero for every w_std, b_std (so does its tangent),
    and a correlation of ±1 (a point with itself, or with a multiple of itself) stays ±1, so dρ = 0. As a function
    of the inputs, K̇ has a cusp at x = x', where 0 is a subgradient. Used by ``ntkit.sklearn``'s hyperparameter
    gradients (forward mode) and by ``backward`` through ``arch.kernel``.
    """

    @staticmethod
    def forward(c, q1, q2, mix, even):
        return _arc_cosine(c, q1, q2, mix, even)[:2]

    @staticmethod
    def setup_context(ctx, inputs, output):
        c, q1, q2, mix, _ = inputs
        ctx.mix = mix
        ctx.save_for_backward(c, q1, q2, *output)
        ctx.save_for_forward(c, q1, q2, *output)

    @staticmethod
    def _partials(ctx):
        """(∂K/∂c, ∂K/∂q1, ∂K/∂q2, ∂K̇/∂c, ∂K̇/∂q1, ∂K̇/∂q2) from the formulas above."""
        c, q1, q2, k, kdot = ctx.saved_tensors
        rho, norm = correlation(c, q1, q2)
        inside = rho.abs() < 1.0
        slope = torch.where(inside, ctx.mix / torch.sqrt(torch.where(inside, 1.0 - rho * rho, 1.0)), 0.0)
        radial = k - kdot * rho * norm
        half1, half2 = _ratio_or_zero(0.5, q1), _ratio_or_zero(0.5, q2)  # ∂(log n)/∂q
        drho_dc = _ratio_or_zero(1.0, norm)
        return (kdot, radial * half1, radial * half2,
                slope * drho_dc, -slope * rho * half1, -slope * rho * half2)

    @staticmethod
    def jvp(ctx, dc, dq1, dq2, _dmix, _deven):
        k_c, k_q1, k_q2, kd_c, kd_q1, kd_q2 = _ArcCosine._partials(ctx)
        return k_c * dc + k_q1 * dq1 + k_q2 * dq2, kd_c * dc + kd_q1 * dq1 + kd_q2 * dq2

    @staticmethod
    def backward(ctx, grad_k, grad_kdot):
        c, q1, q2 = ctx.saved_tensors[:3]
        partials = _ArcCosine._partials(ctx)
        grads = []
        for i, like in enumerate((c, q1, q2)):
            grad = grad_k * partials[i]
            if grad_kdot is not None:
                grad = grad + grad_kdot * partials[3 + i]
            grads.append(grad.sum_to_size(like.shape) if grad.shape != like.shape else grad)
        return (*grads, None, None)


def rectified_(c: Tensor, q1: Tensor, q2: Tensor, a: float, b: float, derivative: bool = True, scratch=None):
    """``rectified`` for large spatial states, overwriting ``c`` and returning it as K: a dozen in-place passes and
    two buffers from the engine's ``scratch`` pool (:mod:`ntkit.kernels.scratch`) instead of twice as many
    allocating passes (memory traffic, not arithmetic, is the cost of a 10⁶-entry covariance).

    Correlations within 4 ulps of 1 are snapped to 1: two summation orders of the same covariance differ in the
    last bits, and arccos turns that into √ε at ρ = 1 (1e-4 relative in float32), so a position paired with itself
    would not get the exact K(x, x)[p, p] it has at ρ = 1. (Scaling every ρ by 1 + 4ε would snap for free, but
    biases every entry by 4ε: measured 1e-6 relative error on Myrtle-5 in float32 instead of 1e-7.)"""
    from .scratch import empty

    tiny = torch.finfo(c.dtype).tiny
    root1, root2 = torch.sqrt(q1), torch.sqrt(q2)
    rho = c.div_(torch.clamp(root1, min=tiny)).div_(torch.clamp(root2, min=tiny)).clamp_(-1.0, 1.0)
    rho.masked_fill_(rho > 1.0 - 4.0 * torch.finfo(c.dtype).eps, 1.0)
    mix = (a - b) ** 2 / _TWO_PI
    even = (a * a + b * b) / 2.0
    kdot = torch.arccos(rho, out=empty(scratch, rho.shape, rho)).mul_(-mix).add_(even)
    one = torch.ones((), dtype=rho.dtype, device=rho.device)
    sin_theta = torch.addcmul(one, rho, rho, value=-1.0, out=empty(scratch, rho.shape, rho)).sqrt_()
    k = rho.mul_(kdot).add_(sin_theta, alpha=mix).mul_(root1).mul_(root2)  # ρ·K̇ + mix·sin θ, in c's storage
    if scratch is not None:
        scratch.give(sin_theta, None if derivative else kdot)
    return k, (kdot if derivative else None)


def erf(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ = erf (Williams 1997):

        K    = (2/π) arcsin( 2c / sqrt((1 + 2 q1)(1 + 2 q2)) )
        Kdot = (4/π) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c²)
    """
    p = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)
    arg = (2.0 * c / torch.sqrt(p)).clamp(-1.0, 1.0)
    k = (2.0 / math.pi) * torch.arcsin(arg)
    if not derivative:
        return k, None
    # p − 4c² expanded as 1 + 2(q1 + q2) + 4(q1 q2 − c²): subtracting 4c² from p (both ~4q²) loses everything for
    # large q (a point with itself at q = 2.5e8 gave 2.9e27 instead of 1e4 in float32), while q1 q2 − c² >= 0 is
    # exact for a point with itself and only as uncertain as c elsewhere (Cauchy–Schwarz: the clamp guards rounding).
    gap = torch.clamp(q1 * q2 - c * c, min=0.0)
    kdot = (4.0 / math.pi) / torch.sqrt(1.0 + 2.0 * (q1 + q2) + 4.0 * gap)
    return k, kdot


def gelu(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ(u) = u Φ(u), the exact (erf) GELU. With P = (1 + q1)(1 + q2) and S = P - c² (> 0):

        K    = c/4 + (1/2π) [ (q1 q2 S + c²) / (P sqrt(S)) + c · arctan(c / sqrt(S)) ]
        Kdot = 1/4 + (1/2π) [ arctan(c / sqrt(S)) + c/sqrt(S) + c (2S - q1 q2 S + c²) / (P S^{3/2}) ]

    K follows from Φ(u) = P(ξ ≤ u) with an independent ξ ~ N(0, 1) (Tsuchida et al. 2021 give the same form);
    Kdot = ∂K/∂c by Price's theorem. Both are checked against quadrature in the tests.
    """
    p = (1.0 + q1) * (1.0 + q2)
    # S = p − c² expanded as 1 + q1 + q2 + (q1 q2 − c²), for the reason given in ``erf``.
    s = 1.0 + q1 + q2 + torch.clamp(q1 * q2 - c * c, min=0.0)
    root = torch.sqrt(s)
    t = c / root
    atan = torch.arctan(t)
    # Written with r = q1 q2 / P = q1/(1+q1) · q2/(1+q2) and t = c/√S, so that no intermediate is of order q³
    # (q1 q2 S overflowed float32 for inputs of size 1e6, whose kernel is only ~1e12) and K̇ sums no large terms
    # that cancel (t(1 − r) with r → 1 lost 4e-3 there), using 1 − r = (1 + q1 + q2)/P:
    #   (q1 q2 S + c²)/(P √S) = r √S + c t / P,
    #   c/√S + c (2S − q1 q2 S + c²)/(P S^{3/2}) = t (3 + q1 + q2 + t²) / P.
    r = (q1 / (1.0 + q1)) * (q2 / (1.0 + q2))
    k = 0.25 * c + (r * root + c * t / p + c * atan) / _TWO_PI
    if not derivative:
        return k, None
    kdot = 0.25 + (atan + t * (3.0 + q1 + q2 + t * t) / p) / _TWO_PI
    return k, kdot


def _hyperbolic_pair(c: Tensor, q1: Tensor, q2: Tensor) -> tuple[Tensor, Tensor]:
    """(e^{-h} sinh(c), e^{-h} cosh(c)) with h = (q1+q2)/2, stable for every c.

    c is first clamped to |c| <= √q1·√q2 (Cauchy–Schwarz; rounding of a Gram product can step past it, and through
    40 cos layers that compounded into overflow for kernel(x, x.clone()) though kernel(x) was finite), and set to
    ±√q1·√q2 within 4 ulps (a point paired with a copy of itself is then exactly ρ = ±1, as on the diagonal).
    Then |c| <= h, so e^{±c-h} never overflows; for |c| <= 1, e^{-h} sinh(c) = ½ e^{-h} (expm1(c) − expm1(−c))
    instead of a difference of two nearly equal exponentials (tiny c gave exact zeros where the kernel is ~c e^{-h}).
    """
    bound = torch.sqrt(q1) * torch.sqrt(q2)
    c = torch.maximum(torch.minimum(c, bound), -bound)
    c = torch.where(c.abs() > bound * (1.0 - 4.0 * torch.finfo(c.dtype).eps), torch.sign(c) * bound, c)
    half = 0.5 * (q1 + q2)
    plus, minus = torch.exp(c - half), torch.exp(-c - half)
    inner = torch.clamp(c, -1.0, 1.0)  # the expm1 branch only sees |c| <= 1 (no inf behind torch.where)
    small = 0.5 * torch.exp(-half) * (torch.expm1(inner) - torch.expm1(-inner))
    sinh = torch.where(c.abs() <= 1.0, small, 0.5 * (plus - minus))
    return sinh, 0.5 * (plus + minus)


def sin(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ = sin:  K = e^{-(q1+q2)/2} sinh(c),  Kdot = E[cos u cos v] = e^{-(q1+q2)/2} cosh(c)."""
    sinh, cosh = _hyperbolic_pair(c, q1, q2)
    return sinh, (cosh if derivative else None)


def cos(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ = cos:  K = e^{-(q1+q2)/2} cosh(c),  Kdot = E[sin u sin v] = e^{-(q1+q2)/2} sinh(c)."""
    sinh, cosh = _hyperbolic_pair(c, q1, q2)
    return cosh, (sinh if derivative else None)


def identity(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    """σ(u) = u:  K = c,  Kdot = 1."""
    return c, (torch.ones_like(c) if derivative else None)
