r"""The fully-connected NNGP/NTK recursion carried with its derivatives in log w_std and log b_std.

The values are those of ``nk.mlp(hidden_layers, width, activation=..., w_std=..., b_std=...).kernel`` (Jacot et al.
2018, Prop. 1 and Thm. 1; NTK parameterisation, where the width does not enter the limit):

    Dense:        Σ ← w² K + b²,        Θ ← Σ + w² Θ
    activation:   K ← E[σ(u)σ(v)],      Θ ← Θ · E[σ'(u)σ'(v)],     (u, v) ~ N(0, [[q1, c], [c, q2]])

Each quantity travels with its tangent: a leading axis of size 2 holding ∂/∂log w_std and ∂/∂log b_std (the
order of the sklearn kernel's ``theta`` is b_std first; the kernel reorders). Forward-mode differentiation:

* Dense steps are differentiated by hand (∂w²/∂log w = 2w², ∂b²/∂log b = 2b²).
* Smooth closed-form duals (erf, gelu, sin, cos, identity) go through ``torch.func.jvp`` of the library's own
  dual functions (:mod:`ntkit.kernels.dual`), which are plain torch.
* The rectified family (relu, leaky_relu, abs) is differentiated in closed form: autodiff through its arccos gives
  0·∞ = NaN wherever ρ = ±1 (every diagonal entry), although the derivative there is finite. With n = √(q1 q2),
  ρ = c/n, K = n J(ρ) and J' = K̇ (Price's theorem; Cho & Saul 2009):
      dK = K̇ dc + ½ (K − K̇ ρ n)(dq1/q1 + dq2/q2),      dK̇ = (a−b)²/(2π) · dρ / √(1−ρ²),
      dρ = dc/n − ½ ρ (dq1/q1 + dq2/q2).
* Quadrature duals (tanh, sigmoid, softplus) go through ``torch.func.jvp`` of the library's own rule
  (:mod:`ntkit.kernels.quadrature`: per-point Hermite coefficients, Mehler's series Σ ρⁿ g_n(q1) g_n(q2)). The
  series has no √(1−ρ²), so its tangent is finite and exact at ρ = ±1 too; the rule's size per variance is a step
  function of q and carries no tangent. Variances (the diagonal) use the 1-D rule, as ``Activation.variance``.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp

from ..kernels.dual import correlation
from ..kernels.quadrature import self_dual_by_quadrature
from ..layers.activations import _ClosedForm, _Rectified, activation_from_name

__all__ = ["mlp_kernel_with_tangents"]

_N_TANGENTS = 2  # ∂/∂log w_std, ∂/∂log b_std


def _rectified_slopes(act) -> tuple[float, float] | None:
    """(a, b) of σ(u) = a·u⁺ − b·u⁻ form for the rectified family (their dual is ``dual.rectified(.., a, b)``)."""
    return act.slopes if isinstance(act, _Rectified) else None


def _safe_ratio(dq: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """dq/q with 0 where q = 0 (a zero input without bias: q stays 0 and so does its tangent)."""
    return torch.where(q > 0, dq / torch.where(q > 0, q, torch.ones_like(q)), torch.zeros_like(dq))


def _rectified_step(act, slopes, c, q1, q2, dc, dq1, dq2, need_kdot):
    a, b = slopes
    k, kdot = act.dual(c, q1, q2, derivative=True)
    rho, norm = correlation(c, q1, q2)
    log_norm_change = 0.5 * (_safe_ratio(dq1, q1) + _safe_ratio(dq2, q2))  # dn/n
    dk = kdot * dc + (k - kdot * rho * norm) * log_norm_change
    if not need_kdot:
        return k, None, dk, None
    aligned = rho.abs() >= 1.0  # ρ ≡ ±1 near this point (see the module docstring): dρ = 0 exactly
    safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    drho = torch.where(norm > 0, dc / safe_norm, torch.zeros_like(dc)) - rho * log_norm_change
    slope = ((a - b) ** 2 / (2.0 * math.pi)) / torch.sqrt(torch.where(aligned, torch.ones_like(rho), 1.0 - rho * rho))
    dkdot = torch.where(aligned, torch.zeros_like(drho), slope * drho)
    return k, kdot, dk, dkdot


def _autodiff_step(act, c, q1, q2, dc, dq1, dq2, need_kdot, same_point):
    def dual(c_, q1_, q2_):
        if same_point and not isinstance(act, _ClosedForm):  # the 1-D rule, as act.variance
            k, kdot = self_dual_by_quadrature(act.fn, act.derivative, q1_, act.degree, need_kdot)
        else:
            k, kdot = act.dual(c_, q1_, q2_, derivative=need_kdot)
        return (k, kdot) if need_kdot else (k,)

    values, tangents = None, []
    for i in range(_N_TANGENTS):
        values, tangent = jvp(dual, (c, q1, q2), (dc[i], dq1[i], dq2[i]))
        tangents.append(tangent)
    k = values[0]
    kdot = values[1] if need_kdot else None
    dk = torch.stack([t[0] for t in tangents])
    dkdot = torch.stack([t[1] for t in tangents]) if need_kdot else None
    return k, kdot, dk, dkdot


def _activation_step(act, c, q1, q2, dc, dq1, dq2, need_kdot, same_point=False):
    """(K, K̇, dK, dK̇) of one activation; K̇ and dK̇ are None when ``need_kdot`` is False.

    ``same_point`` says every pair is (x, x), i.e. c = q1 = q2 (variances, the diagonal): quadrature activations
    then use the 1-D rule, like ``Activation.variance``.
    """
    slopes = _rectified_slopes(act)
    if slopes is not None:
        return _rectified_step(act, slopes, c, q1, q2, dc, dq1, dq2, need_kdot)
    return _autodiff_step(act, c, q1, q2, dc, dq1, dq2, need_kdot, same_point)


def mlp_kernel_with_tangents(gram: torch.Tensor, sq1: torch.Tensor, sq2: torch.Tensor, *, hidden_layers: int,
                             activation: str, w_std: float, b_std: float, kind: str, same_point: bool = False):
    r"""Kernel ``kind`` ("nngp" or "ntk") of ``nk.mlp(hidden_layers, ., activation, w_std, b_std)`` and its tangents.

    Args:
        gram: Σ⁽⁰⁾ = x·x'/n0 on the wanted pairs, e.g. (N, N) with its diagonal exactly ``sq``, or (N,) for the
            diagonal k(x, x) (then pass ``sq1 = sq2 = gram``).
        sq1, sq2: |x|²/n0 of the two sides, broadcastable against ``gram`` ((N, 1) and (1, N) for a grid).
        same_point: True when every pair is a point with itself (the diagonal), so that gram = sq1 = sq2.
    Returns:
        (value, tangent): value shaped like ``gram``; tangent (2, *gram.shape) = (∂/∂log w_std, ∂/∂log b_std).
    """
    act = activation_from_name(activation)
    dtype, device = gram.dtype, gram.device
    extra = (1,) * gram.ndim
    w2, b2 = w_std ** 2, b_std ** 2
    dw2 = torch.tensor([2.0 * w2, 0.0], dtype=dtype, device=device).view(_N_TANGENTS, *extra)
    db2 = torch.tensor([0.0, 2.0 * b2], dtype=dtype, device=device).view(_N_TANGENTS, *extra)
    need_ntk = kind == "ntk"

    def zeros_like(t):
        return torch.zeros((_N_TANGENTS, *t.shape), dtype=dtype, device=device)

    c, q1, q2 = gram, sq1, sq2
    dc, dq1, dq2 = zeros_like(c), zeros_like(q1), zeros_like(q2)
    ntk = torch.zeros_like(c) if need_ntk else None
    dntk = zeros_like(c) if need_ntk else None
    for layer in range(hidden_layers + 1):
        if layer > 0:  # the activation before every Dense layer but the first
            c, kdot, dc, dkdot = _activation_step(act, c, q1, q2, dc, dq1, dq2, need_ntk, same_point)
            if need_ntk:
                ntk, dntk = ntk * kdot, dntk * kdot + ntk * dkdot
            q1, _, dq1, _ = _activation_step(act, q1, q1, q1, dq1, dq1, dq1, False, True)
            q2, _, dq2, _ = _activation_step(act, q2, q2, q2, dq2, dq2, dq2, False, True)
        # Dense (NTK parameterisation): Σ ← w²K + b², Θ ← Σ + w²Θ
        c, dc = w2 * c + b2, dw2 * c + w2 * dc + db2
        q1, dq1 = w2 * q1 + b2, dw2 * q1 + w2 * dq1 + db2
        q2, dq2 = w2 * q2 + b2, dw2 * q2 + w2 * dq2 + db2
        if need_ntk:
            ntk, dntk = c + w2 * ntk, dc + dw2 * ntk + w2 * dntk
    return (ntk, dntk) if need_ntk else (c, dc)
