r"""Gauss–Hermite quadrature for the dual kernel of any elementwise activation.

With z1, z2 ~ N(0, 1) independent, the pre-activations are written

    u = sqrt(q1) z1,    v = sqrt(q2) (ρ z1 + sqrt(1 - ρ²) z2),

so that E[g(u) h(v)] = Σ_i Σ_j w_i w_j g(u_i) h(v_ij) with the probabilists' Hermite nodes z_i and weights w_i
(normalised to sum to one). The inner sum runs over a (degree, t1, t2) block per outer node, so memory stays at
``degree`` tiles. The rule is exact for polynomials of degree < 2·degree and converges fast for smooth σ;
kinked activations have closed forms in :mod:`ntkit.kernels.dual`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy.special import roots_hermitenorm

from .dual import correlation

Tensor = torch.Tensor
Elementwise = Callable[[Tensor], Tensor]


@lru_cache(maxsize=32)
def _hermite_nodes(degree: int) -> tuple[np.ndarray, np.ndarray]:
    # scipy's Golub–Welsch nodes stay finite at any degree (numpy's hermegauss overflows past ~300).
    nodes, weights = roots_hermitenorm(degree)
    if not (np.isfinite(nodes).all() and np.isfinite(weights).all()):
        raise ValueError(f"Gauss–Hermite rule of degree {degree} is not representable; use a smaller degree")
    return nodes, weights / weights.sum()


def hermite_rule(degree: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Nodes and weights (summing to 1) of the ``degree``-point rule for E_{z ~ N(0,1)}[g(z)]."""
    nodes, weights = _hermite_nodes(int(degree))
    return (torch.as_tensor(nodes, dtype=dtype, device=device),
            torch.as_tensor(weights, dtype=dtype, device=device))


def dual_by_quadrature(fn: Elementwise, dfn: Elementwise | None, c: Tensor, q1: Tensor, q2: Tensor,
                       degree: int, derivative: bool = True):
    """(E[σ(u)σ(v)], E[σ'(u)σ'(v)]) for broadcastable ``c`` (t1, t2), ``q1`` (t1, 1), ``q2`` (1, t2)."""
    rho, _ = correlation(c, q1, q2)
    nodes, weights = hermite_rule(degree, c.dtype, c.device)
    z = nodes.view(-1, 1, 1)
    w = weights.view(-1, 1, 1)
    sd1, sd2 = torch.sqrt(q1), torch.sqrt(q2)
    ortho = torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0))
    k = torch.zeros_like(rho)
    kdot = torch.zeros_like(rho) if derivative else None
    inner_base = sd2 * ortho * z  # (degree, t1, t2): the z2 part of v
    for zi, wi in zip(nodes.tolist(), weights.tolist()):
        u = sd1 * zi
        v = sd2 * rho * zi + inner_base
        k += wi * fn(u) * (w * fn(v)).sum(0)
        if derivative:
            kdot += wi * dfn(u) * (w * dfn(v)).sum(0)
    return k, kdot


def variance_by_quadrature(fn: Elementwise, q: Tensor, degree: int) -> Tensor:
    """E[σ(u)²] for u ~ N(0, q), by the 1-D rule: O(degree) work per point instead of O(degree²)."""
    nodes, weights = hermite_rule(degree, q.dtype, q.device)
    u = torch.sqrt(q).unsqueeze(-1) * nodes
    return (fn(u) ** 2 * weights).sum(-1)


def derivative_by_autograd(fn: Elementwise) -> Elementwise:
    """σ' of an elementwise σ by reverse-mode autograd (sum trick: ∂Σσ(u_k)/∂u_k = σ'(u_k))."""

    def dfn(u: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = u.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
        return grad

    return dfn
