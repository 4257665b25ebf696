r"""Dual kernels of any elementwise activation: Gauss–Hermite coefficients per point, Mehler's series per pair.

For (u, v) ~ N(0, [[q1, c], [c, q2]]) with correlation ρ = c / √(q1 q2), Mehler's formula (Mehler 1866: the Hermite
expansion of the bivariate normal density; Daniely, Frostig & Singer 2016 write dual activations this way) gives

    E[g(u) h(v)] = Σ_{n ≥ 0} ρⁿ g_n(q1) h_n(q2),      g_n(q) = E_{z ~ N(0,1)}[g(√q z) He_n(z)] / √(n!),

with He_n the probabilists' Hermite polynomials. ntkit computes, for each point's variance q, the coefficients
g_n(q) (n < D) with the D-point Gauss–Hermite rule — one (points × D) by (D × D) matrix product — and each kernel
entry as a Horner sum in ρ, split into its even and odd parts (a sum in ρ² each), so that odd σ (tanh) and even σ'
(sech²) pay for their nonzero half only. The tail of terms whose bound (coefficients' maxima over points) sums to
below a quarter of the dtype's rounding error relative to √(E g(u)² E h(v)²) is dropped (below the half-ulp of the
entry's scale that rounding the sum already costs; 10⁻² of it, as before, took ~25% more terms for no visible
change: tests/kernels/test_quadrature.py pins float64 values to 1e-10).

Why this rule, by measurement (tanh, float64, relative errors against an independent 2-D product rule with 1500
points per axis, 3000 at q = 30; worst over ρ ∈ {±1, ±0.999, 0, 0.5}; tests/kernels/test_quadrature.py):

* The old 2-D rule (u = √q1 z1, v = √q2(ρ z1 + √(1−ρ²) z2), degree² evaluations of σ and σ' per entry) and this
  series with the same number of points reach the same accuracy (6.7e-9 / 2.1e-7 for K / K̇ at q = 1 with 64): the
  error comes from resolving σ(√q z), and both are exact for polynomials of the same degree. But the series costs
  at most D multiply-adds per entry (plus O(D²) per point, a matrix product) instead of D² evaluations of σ and
  σ': a 3-hidden-layer tanh NTK on N = 1000 standardised points went from ~60 s to 0.34 s (float32, 2 shared
  cores), so the default can afford twice the points.
* The error is a function of D / q: σ(√q z) gets steep as q grows (tanh's poles at ±iπ/2 move to ±iπ/(2√q)), so
  the Hermite coefficients decay like exp(−π√(2n/q)/2). Each point therefore gets its own rule,
  D = degree · 2^⌈log₂ q⌉ for q > 1 (``degree`` at unit variance and below), so that D / q ≥ degree everywhere.
* The rule per point makes every entry a function of (c, q1, q2) only: symmetric in (x, x') up to the rounding
  of the Gram product, independent of how the grid is tiled, and at ρ = ±1 equal to the 1-D rule E[g(u)h(±u)]
  (discrete Parseval: the D-point rule's normalised Hermite vectors n < D are orthonormal), which is what
  ``variance_by_quadrature`` computes; where ρ = 1 and q1 = q2 (the diagonal) that 1-D value is used bitwise.
  No √(1−ρ²) appears, so forward-mode derivatives are finite at ρ = ±1.
* Rules are capped at ``MAX_RULE_POINTS`` (2048; the (D × D) projection is cached, 32 MiB at the cap). When the cap
  binds and the kernel loses accuracy, a RuntimeWarning gives the expected relative error, estimated from E[σ'²]
  (E[σ²] for the NNGP alone) by the capped rule and its halves; it overstates the real error by 3-10x.

    q      old: 2-D rule, 64 points     this, degree 64             this, degree 128 (default)
           K        K̇                   K        K̇                  K        K̇
    0.1    2e-14    3e-15               2e-14    3e-15              2e-14    4e-15
    1      7e-9     2e-7                7e-9     2e-7               3e-13    2e-11
    3      3e-5     8e-4                3e-11    4e-9               8e-15    8e-14
    10     4e-3     9e-2                7e-13    2e-10              5e-14    8e-13
    30     3e-2     6e-1                1e-10    4e-8 (capped)      1e-10    4e-8 (capped: 2048 points)
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import roots_hermitenorm

from . import triton_series
from .cache import memoized
from .dual import correlation

Tensor = torch.Tensor
Elementwise = Callable[[Tensor], Tensor]

__all__ = ["MAX_RULE_POINTS", "DEFAULT_DEGREE", "hermite_rule", "rule_points", "hermite_coefficients",
           "mehler_sum", "dual_by_quadrature", "variance_by_quadrature", "self_dual_by_quadrature",
           "derivative_by_autograd"]

DEFAULT_DEGREE = 128
MAX_RULE_POINTS = 2048
# The dropped terms of Mehler's series are together below this fraction of the dtype's rounding error (relative to
# the entry's scale): under the half-ulp that rounding the sum to the dtype costs anyway.
_NEGLIGIBLE = 0.25
# A capped rule is reported when its estimated relative error is above this (below it the cap costs nothing).
_CAP_REPORT_ERROR = 1e-9


@lru_cache(maxsize=32)
def _hermite_nodes(degree: int) -> tuple[np.ndarray, np.ndarray]:
    # scipy's nodes stay finite at any degree (numpy's hermegauss overflows past ~300).
    nodes, weights = roots_hermitenorm(degree)
    if not (np.isfinite(nodes).all() and np.isfinite(weights).all()):
        raise ValueError(f"Gauss–Hermite rule of degree {degree} is not representable; use a smaller degree")
    return nodes, weights / weights.sum()


def hermite_rule(degree: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Nodes and weights (summing to 1) of the ``degree``-point rule for E_{z ~ N(0,1)}[g(z)]."""
    nodes, weights = _hermite_nodes(int(degree))
    return (torch.as_tensor(nodes, dtype=dtype, device=device),
            torch.as_tensor(weights, dtype=dtype, device=device))


@lru_cache(maxsize=6)
def _projection_array(points: int) -> np.ndarray:
    """P (points × points) with P[k, n] = w_k He_n(z_k) / √(n!), so that (g(z_k))_k @ P = (g_n)_n.

    The orthonormal Hermite functions are run through their three-term recurrence started at √w_k (bounded by 1
    at every node, where He_n(z_k) alone overflows past n ~ 170), then multiplied by the other √w_k."""
    nodes, weights = _hermite_nodes(points)
    root = np.sqrt(weights)
    table = np.empty((points, points))
    previous, current = np.zeros(points), root.copy()
    table[:, 0] = current
    for n in range(1, points):
        previous, current = current, (nodes * current - math.sqrt(n - 1) * previous) / math.sqrt(n)
        table[:, n] = current
    return table * root[:, None]


@lru_cache(maxsize=6)
def _cached_projection(points: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.as_tensor(_projection_array(points), dtype=dtype, device=device)


def _projection(points: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The (points × points) projection; rules past the cap (a user's degree > MAX_RULE_POINTS) are not kept."""
    if points <= MAX_RULE_POINTS:
        return _cached_projection(points, dtype, device)
    return torch.as_tensor(_projection_array.__wrapped__(points), dtype=dtype, device=device)


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the per-point coefficients (cheap: O(points · D²)) wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def rule_points(q: Tensor, degree: int) -> Tensor:
    """Points of each variance's rule: ``degree`` for q ≤ 1, degree · 2^⌈log₂ q⌉ above, capped at
    max(MAX_RULE_POINTS, degree). Integer tensor shaped like ``q`` (no gradient flows through it)."""
    q = q.detach()
    if not bool(torch.isfinite(q).all()):
        raise FloatingPointError("quadrature activation: a pre-activation variance overflowed (inf or NaN): the "
                                 "layers before it grow like w_std^2 each; use smaller w_std / b_std, fewer layers, "
                                 "standardised inputs, or float64 inputs")
    octaves = torch.ceil(torch.log2(torch.clamp(q, min=1.0))).clamp(max=62)
    points = degree * torch.pow(2.0, octaves)
    return torch.clamp(points, max=max(MAX_RULE_POINTS, degree)).to(torch.int64)


def _per_rule(q: Tensor, degree: int, compute: Callable[[Tensor, int], Tensor]) -> Tensor:
    """``compute(q_group, points)`` -> (group, ..., width ≤ points) for each group of entries of ``q`` that share
    a rule, zero-padded to the widest and put back in the order of ``q.reshape(-1)``."""
    flat = q.reshape(-1)
    sizes = rule_points(flat, degree)
    unique = sorted(set(sizes.tolist()))
    if len(unique) == 1:
        return compute(flat, unique[0])
    parts, order = [], []
    for points in unique:
        index = (sizes == points).nonzero().squeeze(1)
        parts.append(compute(flat.index_select(0, index), points))
        order.append(index)
    width = max(part.shape[-1] for part in parts)
    stacked = torch.cat([F.pad(part, (0, width - part.shape[-1])) for part in parts])
    permutation = torch.cat(order)
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(len(permutation), device=permutation.device)
    return stacked.index_select(0, inverse)


def _scaled_nodes(q: Tensor, points: int, work: torch.dtype) -> tuple[Tensor, Tensor]:
    """(√q_i z_k) of shape (group, points) and the weights; √q with a zero derivative at q = 0 (only reached by a
    zero input without bias, whose variance has no tangent either) instead of an infinite one."""
    nodes, weights = hermite_rule(points, work, q.device)
    q = q.to(work)
    positive = q > 0
    sd = torch.where(positive, torch.where(positive, q, torch.ones_like(q)).sqrt(), torch.zeros_like(q))
    return sd[:, None] * nodes, weights


def hermite_coefficients(fns: Sequence[Elementwise], q: Tensor, degree: int) -> Tensor:
    """g_n(q) = E[g(√q z) He_n(z)] / √(n!) for each g in ``fns``: shape (len(fns), D, *q.shape), D the widest rule
    among ``q`` (narrower rules zero-padded), in float64 where the device has it."""
    return _coefficients_and_moments(fns, q, degree)[0]


def _moment(values: Tensor, weights: Tensor) -> Tensor:
    """E[g²] by the 1-D rule from g's values at the nodes: the one expression every path uses, so that a point's
    variance and its kernel with itself agree bitwise whichever path computed them."""
    return (values.square() * weights).sum(-1)


def _coefficients_and_moments(fns: Sequence[Elementwise], q: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """``hermite_coefficients`` and, from the same evaluations of each g at the nodes, the 1-D moments E[g(u)²]
    (len(fns), *q.shape) that ``self_dual_by_quadrature`` would compute (bitwise: same nodes, same ``_moment``)."""
    work = _work_dtype(q.device)

    def compute(q_group: Tensor, points: int) -> Tensor:
        u, weights = _scaled_nodes(q_group, points, work)
        values = [fn(u).to(work) for fn in fns]
        moments = torch.stack([_moment(value, weights) for value in values], 1)  # (group, functions)
        coefficients = torch.stack(values, 1) @ _projection(points, work, q.device)  # (group, functions, points)
        return torch.cat([moments[..., None], coefficients], -1)  # zero-padding appends past the coefficients

    table = _per_rule(q, degree, compute)  # (entries, functions, 1 + D)
    moments = table[..., 0].T.reshape(len(fns), *q.shape)
    coefficients = table[..., 1:].permute(1, 2, 0).reshape(len(fns), table.shape[-1] - 1, *q.shape)
    return coefficients, moments


def _relative_size(coefficients: Tensor) -> Tensor:
    """(D,): max over points of |g_n| / ‖g‖ (‖g‖² = E[g²] by Parseval; points with g ≡ 0 count as 0)."""
    flat = coefficients.detach().reshape(coefficients.shape[0], -1).abs()
    norm = flat.square().sum(0).sqrt()
    scaled = flat / torch.where(norm > 0, norm, torch.ones_like(norm))
    return scaled.amax(1) if scaled.shape[1] else torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)


def _horner(first: Tensor, second: Tensor, r: Tensor) -> Tensor:
    """Σ_m r^m first[m] second[m] (broadcast products), by Horner's rule from the highest m. Flat tiles on a GPU
    take one Triton pass (kernels/triton_series.py) instead of two tile passes per term."""
    fused = triton_series.horner(first, second, r)
    if fused is not None:
        return fused
    terms1, terms2 = first.unbind(0), second.unbind(0)  # one C++ call instead of a select per term
    acc = terms1[-1] * terms2[-1]
    in_place = not (torch.is_grad_enabled() and (first.requires_grad or second.requires_grad or r.requires_grad))
    for m in range(len(terms1) - 2, -1, -1):
        if in_place and acc.shape == r.shape:
            acc.mul_(r).addcmul_(terms1[m], terms2[m])
        else:  # the first step broadcasts to r's shape; autograd needs the previous values kept
            acc = torch.addcmul(acc * r, terms1[m], terms2[m])
    return acc


def mehler_sum(first: Tensor, second: Tensor, rho: Tensor) -> Tensor:
    """Σ_n ρⁿ first[n] second[n] for coefficient tensors (D, *s1), (D, *s2) broadcastable with ρ, as an even and
    an odd sum in ρ², each cut after its last term that can change the result in ρ's dtype."""
    return _mehler(_contiguous(first, rho.dtype), _relative_size(first), _contiguous(second, rho.dtype),
                   _relative_size(second), rho)


def _contiguous(coefficients: Tensor, dtype: torch.dtype) -> Tensor:
    # Contiguous per term: the coefficients arrive as (D, points) views with the D axis innermost, and a Horner
    # step on a strided term is ~10x slower (measured: 288² tile, 114 terms, 22 ms -> 2 ms).
    return coefficients.to(dtype, memory_format=torch.contiguous_format)


def _mehler(first: Tensor, size1: Tensor, second: Tensor, size2: Tensor, rho: Tensor) -> Tensor:
    """``mehler_sum`` on coefficients already in ρ's dtype and contiguous, with their ``_relative_size``."""
    # |Σ_{n ≥ m} ρⁿ g_n h_n| ≤ ‖g‖ ‖h‖ Σ_{n ≥ m} size1[n] size2[n] (|ρ| ≤ 1, sizes are maxima over points), and
    # ‖g‖ ‖h‖ bounds the entry (Cauchy–Schwarz): each parity keeps the shortest head whose dropped tail is below
    # _NEGLIGIBLE of the dtype's rounding, so the cut cannot show next to the sum's own rounding.
    tol = _NEGLIGIBLE * torch.finfo(rho.dtype).eps
    bound = size1 * size2
    r = rho * rho
    total = None
    for parity in (0, 1):
        tails = bound[parity::2].flip(0).cumsum(0).flip(0)  # tails[m] = Σ_{k ≥ m} of this parity's bounds
        length = int((tails > tol).sum())
        if length == 0:
            continue
        part = _horner(first[parity::2][:length], second[parity::2][:length], r)
        part = rho * part if parity else part
        total = part if total is None else total + part
    if total is not None and total.shape == rho.shape:  # the usual case: skip the (Python-slow) shape arithmetic
        return total
    shape = torch.broadcast_shapes(rho.shape, first.shape[1:], second.shape[1:])
    if total is None:
        return torch.zeros(shape, dtype=rho.dtype, device=rho.device)
    return total if total.shape == shape else total.expand(shape).clone()


def _series_side(fns: Sequence[Elementwise], q: Tensor, degree: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One side of Mehler's series, as ``_mehler`` takes it: the coefficients (len(fns), D, *q.shape) in ``dtype``,
    contiguous, and their relative sizes (len(fns), D); reused within a ``coefficient_cache`` block."""

    flat = q.reshape(-1)

    def compute():
        coefficients, moments = _coefficients_and_moments(fns, flat, degree)
        for fn, moment in zip(fns, moments):  # the same points' variances and self-kernels come next: keep them
            memoized(("moment", fn, degree), flat, lambda moment=moment: moment)
        sizes = torch.stack([_relative_size(part) for part in coefficients])
        return _contiguous(coefficients, dtype), sizes

    coefficients, sizes = memoized(("series", tuple(fns), degree, dtype), flat, compute)
    return coefficients.reshape(*coefficients.shape[:2], *q.shape), sizes


def _padded(coefficients: Tensor, sizes: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Zero terms appended up to ``width`` (two sides whose rules differ in size)."""
    extra = width - coefficients.shape[1]
    if extra == 0:
        return coefficients, sizes
    return (F.pad(coefficients, [0, 0] * (coefficients.ndim - 2) + [0, extra]), F.pad(sizes, [0, extra]))


def _warn_if_capped(fns: Sequence[Elementwise], q: Tensor, degree: int) -> None:
    """RuntimeWarning with the expected accuracy when the largest variance needs more than the capped rule.

    The estimate: E[g²] by the capped rule D and by D/2 and D/4 differ by δ1 and δ2; with errors shrinking by a
    factor ≥ δ2/δ1 per doubling (Hermite convergence accelerates with D), the capped rule's error is ≤ ~δ1²/δ2.
    Relative to E[g²], worst over g in ``fns``, which is the kernel's relative error at ρ = ±1 (its worst case)."""
    cap = max(MAX_RULE_POINTS, degree)
    q_max = float(q.detach().max()) if q.numel() else 0.0
    if q_max <= cap / degree:
        return
    work = _work_dtype(q.device)
    largest = torch.tensor([q_max], dtype=work, device=q.device)
    error = 0.0
    for fn in fns:
        moments = []
        for points in (cap, cap // 2, cap // 4):
            u, weights = _scaled_nodes(largest, points, work)
            moments.append(float((fn(u).to(work).square() * weights).sum()))
        first, second = abs(moments[0] - moments[1]), abs(moments[1] - moments[2])
        estimate = first * min(1.0, first / second) if second > 0 else first
        error = max(error, estimate / max(abs(moments[0]), 1e-300))
    if error > _CAP_REPORT_ERROR:
        needed = degree * 2 ** math.ceil(math.log2(q_max))
        name = getattr(fns[0], "__name__", "σ")
        warnings.warn(
            f"ntkit: quadrature dual kernel of {name}: pre-activation variance q = {q_max:.3g} needs a {needed}-point "
            f"Hermite rule for full accuracy but is capped at {cap} points; expected relative error of the kernel "
            f"up to ~{error:.0e}. Smaller w_std / b_std or standardised inputs keep q near 1.",
            RuntimeWarning, stacklevel=4)


def dual_by_quadrature(fn: Elementwise, dfn: Elementwise | None, c: Tensor, q1: Tensor, q2: Tensor,
                       degree: int = DEFAULT_DEGREE, derivative: bool = True):
    """(E[σ(u)σ(v)], E[σ'(u)σ'(v)] or None) for broadcastable ``c``, ``q1``, ``q2`` (e.g. (t1, t2), (t1, 1),
    (1, t2)), by Mehler's series with per-point Gauss–Hermite coefficients (module docstring)."""
    rho, _ = correlation(c, q1, q2)
    fns = (fn, dfn) if derivative else (fn,)
    _warn_if_capped(fns, torch.cat([q1.detach().reshape(-1), q2.detach().reshape(-1)]), degree)
    first, size1 = _series_side(fns, q1, degree, rho.dtype)
    second, size2 = (first, size1) if q2 is q1 else _series_side(fns, q2, degree, rho.dtype)
    width = max(first.shape[1], second.shape[1])
    first, size1 = _padded(first, size1, width)
    second, size2 = _padded(second, size2, width)
    k = _mehler(first[0], size1[0], second[0], size2[0], rho)
    kdot = _mehler(first[1], size1[1], second[1], size2[1], rho) if derivative else None
    # A point with itself or its duplicate (ρ = 1), or two zero variances (u = v = 0, where correlation() says ρ = 0).
    # Found in two passes over the tile when neither case occurs (most tiles off the diagonal).
    same = rho.detach() == 1.0
    zero = q1.detach() == 0
    if bool(zero.any()):
        same = same | zero
    if bool(same.any()):
        same = same & (q1.detach() == q2.detach())
        # The series there is the 1-D rule up to ~D ulps (discrete Parseval, scipy's nodes past 150 points are
        # ~1e-14 accurate); take the 1-D rule itself, bitwise what the variance propagation uses, so that a point's
        # correlation with itself stays exactly 1 downstream (a kinked closed form after it is √-sensitive to 1 − ρ).
        k_same, kdot_same = self_dual_by_quadrature(fn, dfn, q1, degree, derivative)
        k = torch.where(same, k_same, k)
        kdot = torch.where(same, kdot_same, kdot) if derivative else None
    return k, kdot


def self_dual_by_quadrature(fn: Elementwise, dfn: Elementwise | None, q: Tensor, degree: int = DEFAULT_DEGREE,
                            derivative: bool = True):
    """(E[σ(u)²], E[σ'(u)²] or None) for u ~ N(0, q), by the 1-D rule of each variance: O(D) work per point, and
    what ``dual_by_quadrature`` gives at ρ = 1 up to rounding (discrete Parseval)."""
    work = _work_dtype(q.device)  # a capped rule is reported by dual_by_quadrature, which sees the same variances
    flat = q.reshape(-1)

    def moment_of(g: Elementwise) -> Tensor:
        def compute(q_group: Tensor, points: int) -> Tensor:
            u, weights = _scaled_nodes(q_group, points, work)
            return _moment(g(u).to(work), weights)[:, None]  # (group, 1): _per_rule pads the last axis

        # Within a kernel evaluation usually found: the Mehler coefficients of these points stored it.
        moment = memoized(("moment", g, degree), flat, lambda: _per_rule(flat, degree, compute)[:, 0])
        return moment.to(q.dtype).reshape(q.shape)

    return moment_of(fn), (moment_of(dfn) if derivative else None)


def variance_by_quadrature(fn: Elementwise, q: Tensor, degree: int = DEFAULT_DEGREE) -> Tensor:
    """E[σ(u)²] for u ~ N(0, q), by the 1-D rule of q's size (``rule_points``)."""
    return self_dual_by_quadrature(fn, None, q, degree, derivative=False)[0]


def derivative_by_autograd(fn: Elementwise) -> Elementwise:
    """σ' of an elementwise σ by reverse-mode autograd (sum trick: ∂Σσ(u_k)/∂u_k = σ'(u_k))."""

    def dfn(u: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = u.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
        return grad

    return dfn
