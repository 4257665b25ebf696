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


# 1 − |ρ| below which a rectified dual's θ = arccos ρ is not resolved by float32 (see kernels/near_parallel.py)
NEAR_PARALLEL = 1e-4


def smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive number of ``dtype`` (2⁻¹⁴⁹ for float32): a norm is clamped to it only to turn 0/0 into
    0. Clamping to the smallest *normal* number (finfo.tiny) instead divided subnormal covariances by a larger
    norm: a 12-layer ReLU net at w_std = 0.25 on inputs of size 1e-11 gave a point's K(x, x) = 1.44e-40 instead of
    2.15e-40 in float32 (ρ = c/tiny < 1 for a point with itself)."""
    finfo = torch.finfo(dtype)
    return finfo.tiny * finfo.eps


def correlation(c: Tensor, q1: Tensor, q2: Tensor) -> tuple[Tensor, Tensor]:
    """Return (ρ, sqrt(q1 q2)) with ρ clamped to [-1, 1] and ρ = 0 where a variance vanishes.

    The norm is √q1·√q2, never √(q1 q2): the product of two variances underflows or overflows float32 beyond
    ~1e±19 (a 30-layer ReLU net with w_std = 0.5 has q ~ 1e-27 and came out all zeros; inputs of size 1e12 were
    refused as overflow), while each root stays in range. A point with itself then has c = q but √q·√q within
    2 ulps of q, so correlations within 4 ulps of ±1 are snapped to ±1, as the in-place spatial dual does: at
    ρ ≈ ±1 arccos turns an ulp into √ε. ρ = −1 is as common as ρ = 1: a point x paired with −x, and every
    position of a one-channel image under a 1×1 conv (c = x_p x'_p, so ρ = sign(x_p x'_p)); without the snap at −1
    kernel(x, x.clone()) differed from kernel(x) by 5e-5 relative in float32 there.
    """
    norm = torch.sqrt(q1) * torch.sqrt(q2)
    finfo = torch.finfo(norm.dtype)
    rho = (c / torch.clamp(norm, min=smallest_subnormal(norm.dtype))).clamp(-1.0, 1.0)
    rho = torch.where(rho.abs() > 1.0 - 4.0 * finfo.eps, torch.sign(rho), rho)
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


def _root(q: Tensor) -> Tensor:
    """√q with a zero derivative at q = 0 instead of an infinite one (a zero variance has no tangent: it stays zero
    for every w_std, b_std), so that hyperparameter gradients through the duals below stay finite."""
    positive = q > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, q, 1.0)), 0.0)


def _bounded(c: Tensor, q1: Tensor, q2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(c, |c|, b, b − |c|, (√q1, √q2)) with b = √q1·√q2 and |c| clamped to b (Cauchy–Schwarz; a Gram product's
    rounding can step past it) and set to b within 4 ulps of it, as ``correlation`` snaps ρ to ±1.

    The smooth duals need q1 q2 − c², which as a difference of two ~q² numbers is all rounding near ρ = ±1 (the
    erf NTK of a point with itself at q = 2.5e8 was 2.9e27 instead of 1e4 in float32) and overflows for q beyond
    ~1e19 in float32. As (b − |c|)(b + |c|) it is exactly 0 for a point paired with itself or with a copy of itself
    (their Grams round differently, by an ulp, which the snap absorbs; without it the erf NTK of kernel(x) and
    kernel(x, x.clone()) differed by 3e-4 in float32 for images of size 100, and deep chaotic erf nets amplified
    the ulp layer by layer), and b − |c| never cancels."""
    root1, root2 = _root(q1), _root(q2)
    bound = root1 * root2
    snap = c.abs() > bound * (1.0 - 4.0 * torch.finfo(c.dtype).eps)
    # c itself as a clamp (not |c| with its sign put back), so that ∂/∂c stays 1 at c = 0.
    c = torch.where(snap, torch.copysign(bound, c), torch.maximum(torch.minimum(c, bound), -bound))
    size = c.abs()
    return c, size, bound, bound - size, (root1, root2)


def _scaled_root(base: Tensor, slack: Tensor, bound: Tensor, size: Tensor) -> Tensor:
    """√(base + slack·(bound + size)) = √(base + q1 q2 − c²) without forming a q² intermediate: both terms are
    divided by m = max(1, b) under the root and √m is taken out (base, b + |c| and slack/m are all O(q))."""
    m = torch.clamp(bound, min=1.0)
    return torch.sqrt(m) * torch.sqrt(base / m + (slack / m) * (bound + size))


def erf(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ = erf (Williams 1997):

        K    = (2/π) arcsin( 2c / sqrt((1 + 2 q1)(1 + 2 q2)) ) = (2/π) atan2(2c, D)
        Kdot = (4/π) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c²)         = (4/π) / D

    with D² = (1 + 2q1)(1 + 2q2) − 4c² = 1 + 2(q1 + q2) + 4(q1 q2 − c²), and q1 q2 − c² = (b − |c|)(b + |c|),
    b = √q1·√q2 (``_bounded``: no subtraction of two numbers of size 4q², no q² intermediate). The atan2 form
    needs no arcsin near ±1, where an ulp of its argument became √ε.
    """
    c, size, bound, slack, _ = _bounded(c, q1, q2)
    d = _scaled_root(1.0 + 2.0 * (q1 + q2), 4.0 * slack, bound, size)
    k = (2.0 / math.pi) * torch.atan2(2.0 * c, d)
    if not derivative:
        return k, None
    return k, (4.0 / math.pi) / d


def gelu(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True):
    r"""σ(u) = u Φ(u), the exact (erf) GELU. With P = (1 + q1)(1 + q2) and S = P - c² (> 0):

        K    = c/4 + (1/2π) [ (q1 q2 S + c²) / (P sqrt(S)) + c · arctan(c / sqrt(S)) ]
        Kdot = 1/4 + (1/2π) [ arctan(c / sqrt(S)) + c/sqrt(S) + c (2S - q1 q2 S + c²) / (P S^{3/2}) ]

    K follows from Φ(u) = P(ξ ≤ u) with an independent ξ ~ N(0, 1) (Tsuchida et al. 2021 give the same form);
    Kdot = ∂K/∂c by Price's theorem. Both are checked against quadrature in the tests.
    """
    c, size, bound, slack, _ = _bounded(c, q1, q2)
    # S = 1 + q1 + q2 + (q1 q2 − c²), its root without q² intermediates (``_bounded``, ``_scaled_root``).
    root = _scaled_root(1.0 + q1 + q2, slack, bound, size)
    t = c / root
    atan = torch.arctan(t)
    # Written with r = q1 q2 / P = q1/(1+q1) · q2/(1+q2), t = c/√S and the factors 1/(1 + q) taken one at a time,
    # so that no intermediate is of order q² or q³ (q1 q2 S overflowed float32 for inputs of size 1e6, whose kernel
    # is only ~1e12) and K̇ sums no large terms that cancel (t(1 − r) with r → 1 lost 4e-3 there), using
    # 1 − r = (1 + q1 + q2)/P:
    #   (q1 q2 S + c²)/(P √S) = r √S + (c/(1+q1)) (t/(1+q2)),
    #   c/√S + c (2S − q1 q2 S + c²)/(P S^{3/2}) = t (3 + q1 + q2 + t²) / P.
    inv1, inv2 = 1.0 / (1.0 + q1), 1.0 / (1.0 + q2)
    r = (q1 * inv1) * (q2 * inv2)
    k = 0.25 * c + (r * root + (c * inv1) * (t * inv2) + c * atan) / _TWO_PI
    if not derivative:
        return k, None
    kdot = 0.25 + (atan + t * (((3.0 + q1 + q2 + t * t) * inv1) * inv2)) / _TWO_PI
    return k, kdot


def _hyperbolic_pair(c: Tensor, q1: Tensor, q2: Tensor) -> tuple[Tensor, Tensor]:
    """(e^{-h} sinh(c), e^{-h} cosh(c)) with h = (q1+q2)/2, stable for every c.

    c is first clamped to |c| <= b = √q1·√q2 and snapped to ±b within 4 ulps (``_bounded``; through 40 cos layers
    rounding past the bound compounded into overflow for kernel(x, x.clone()) though kernel(x) was finite). The
    exponents are then formed without cancellation,

        |c| − h = −[(√q1 − √q2)²/2 + (b − |c|)],      −|c| − h = −[(√q1 + √q2)²/2 − (b − |c|)],

    so a point with itself gets exactly e⁰ = 1 (|c| − h computed as a difference was off by q·ε: K(x, x) = 0.508
    instead of 0.5 in float32 for inputs of size 300), and neither exponential overflows. For |c| <= 1,
    e^{-h} sinh(c) = ½ e^{-h} (expm1(c) − expm1(−c)) instead of a difference of two nearly equal exponentials
    (tiny c gave exact zeros where the kernel is ~c e^{-h}).
    """
    c, size, _, slack, (root1, root2) = _bounded(c, q1, q2)
    near = torch.exp(-(0.5 * (root1 - root2) ** 2 + slack))  # e^{|c| − h}
    far = torch.exp(slack - 0.5 * (root1 + root2) ** 2)      # e^{−|c| − h}
    inner = torch.clamp(c, -1.0, 1.0)  # the expm1 branch only sees |c| <= 1 (no inf behind torch.where)
    small = 0.5 * torch.exp(-0.5 * (q1 + q2)) * (torch.expm1(inner) - torch.expm1(-inner))
    sinh = torch.where(size <= 1.0, small, torch.copysign(0.5 * (near - far), c))
    return sinh, 0.5 * (near + far)


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
