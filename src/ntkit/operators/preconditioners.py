r"""Low-rank preconditioners for (K + λI) A = Y: P = B Bᵀ + λI with B (N × r) from r columns of K.

P⁻¹ is applied by the Woodbury identity, P⁻¹ v = (v − B (λI_r + BᵀB)⁻¹ Bᵀ v) / λ, so a preconditioner costs one
(r × r) Cholesky factorisation to build and O(N r) per application; λ > 0 is required. Both factors approximate
K by a Nyström approximation K ≈ K[:, S] K[S, S]⁻¹ K[S, :] on r columns S:

* ``nystrom``: S drawn uniformly at random (Williams & Seeger 2001); B = K[:, S] L⁻ᵀ with K[S, S] = L Lᵀ (a small
  jitter keeps L defined when K[S, S] is singular).
* ``pivoted_cholesky``: S chosen greedily, each new column the one with the largest residual diagonal (Harbrecht,
  Peters & Schneider 2012; GPyTorch's default for CG): B is the partial Cholesky factor itself, built from r
  kernel rows and the diagonal, and stops early when the residual trace is negligible.

With P ≈ K + λI the preconditioned system has its eigenvalues clustered near 1 apart from the tail of K's spectrum
below the r-th eigenvalue, so CG needs far fewer iterations than on K + λI (whose condition number λ_max/λ is
10⁶-10⁸ for NTK regression with a small ridge).
"""

from __future__ import annotations

import torch

__all__ = ["LowRankPreconditioner", "nystrom", "pivoted_cholesky", "PRECONDITIONERS"]

PRECONDITIONERS = ("nystrom", "pivoted_cholesky")


class LowRankPreconditioner:
    """v ↦ (B Bᵀ + λI)⁻¹ v for a float64 factor B (N × r) and λ > 0, by the Woodbury identity."""

    def __init__(self, factor: torch.Tensor, reg: float, method: str):
        if not reg > 0:
            raise ValueError(f"a low-rank preconditioner needs reg > 0 (P = BBᵀ + reg·I); got reg={reg!r}")
        self.factor, self.reg, self.method = factor, float(reg), method
        inner = factor.T @ factor
        inner.diagonal().add_(self.reg)
        self._inner = torch.linalg.cholesky(inner)

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        projected = torch.cholesky_solve(self.factor.T @ v, self._inner)
        return (v - self.factor @ projected) / self.reg


def nystrom(op, rank: int, reg: float, generator: torch.Generator | None = None) -> LowRankPreconditioner:
    """Nyström preconditioner on ``rank`` columns drawn uniformly at random (without replacement)."""
    n = op.shape[0]
    rank = min(rank, n)
    picked = torch.randperm(n, generator=generator)[:rank].to(op.device)
    columns = op.rows(picked).to(torch.float64).T  # K[:, S] = K[S, :]ᵀ for a symmetric K
    core = columns[picked]
    core = 0.5 * (core + core.T)
    jitter = 1e-10 * float(core.diagonal().mean()) if rank else 0.0
    lower, info = torch.linalg.cholesky_ex(core + jitter * torch.eye(rank, dtype=core.dtype, device=core.device))
    if int(info) != 0:  # numerically rank-deficient columns (duplicates): drop directions through an eigenbasis
        values, vectors = torch.linalg.eigh(core)
        keep = values > 1e-12 * values.max()
        factor = columns @ (vectors[:, keep] / values[keep].sqrt())
    else:
        factor = torch.linalg.solve_triangular(lower, columns.T, upper=False).T
    return LowRankPreconditioner(factor, reg, "nystrom")


def pivoted_cholesky(op, rank: int, reg: float, rtol: float = 1e-10) -> LowRankPreconditioner:
    """Greedy pivoted partial Cholesky factor of K of at most ``rank`` columns, stopping when the residual trace
    falls below ``rtol`` of K's trace."""
    diagonal = op.diag().to(torch.float64)
    residual = diagonal.clone()
    n = residual.shape[0]
    factor = torch.zeros(n, min(rank, n), dtype=torch.float64, device=residual.device)
    total = float(diagonal.sum())
    used = 0
    for k in range(min(rank, n)):
        pivot = int(torch.argmax(residual))
        if float(residual[pivot]) <= 0 or float(residual.sum()) <= rtol * total:
            break
        row = op.rows([pivot])[0].to(torch.float64)
        column = (row - factor[:, :k] @ factor[pivot, :k]) / float(residual[pivot]).__pow__(0.5)
        factor[:, k] = column
        residual = torch.clamp(residual - column * column, min=0.0)
        residual[pivot] = 0.0
        used = k + 1
    return LowRankPreconditioner(factor[:, :used], reg, "pivoted_cholesky")
