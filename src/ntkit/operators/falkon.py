r"""Falkon: kernel ridge regression on M ≪ N Nyström centres, by CG preconditioned with Cholesky factors of K_MM.

Rudi, Carratino & Rosasco 2017 (NeurIPS, "FALKON: An optimal large scale kernel method", Alg. 1). The estimator
is Nyström kernel ridge regression, f(x) = K(x, C) α over the centres C (M points drawn from the N inputs),

    (K_nMᵀ K_nM + r K_MM) α = K_nMᵀ y,

the minimiser of ‖K_nM α − y‖² + r αᵀ K_MM α; with M = N it is exactly kernel ridge regression (K + rI)⁻¹ y with
ridge r (ntkit's convention: the estimators' r = diag_reg · tr K / N), and with M ~ √N centres it keeps KRR's
statistical rate. Falkon's preconditioner makes CG converge in O(log(1/tol)) iterations: with λ = r / N,
K_MM = Tᵀ T (T upper-triangular) and A = chol(T Tᵀ / M + λ I), CG runs on

    Bᵀ H B β = Bᵀ K_nMᵀ y / N,    H = K_nMᵀ K_nM / N + λ K_MM,    B = T⁻¹ A⁻¹,    α = B β.

Each iteration is one streamed ``normal_product`` of the N × M operator (memory: a panel and the M × M factors).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .._threads import intra_op_threads
from .._validation import check_nonnegative_float, check_positive_int
from ..layers.base import Layer
from .kernel_operator import KernelOperator
from .solvers import SolveReport

__all__ = ["falkon", "FalkonModel"]


class FalkonModel:
    """f(x) = K(x, centres) α, the result of :func:`falkon`; ``predict(x)`` streams the test kernel by panels."""

    def __init__(self, arch: Layer, get: str, centres: torch.Tensor, alpha: torch.Tensor, report: SolveReport,
                 memory_budget: int | None):
        self.arch, self.get, self.centres, self.alpha, self.report = arch, get, centres, alpha, report
        self.memory_budget = memory_budget

    def predict(self, x) -> torch.Tensor:
        op = KernelOperator(self.arch, x, self.centres, get=self.get, memory_budget=self.memory_budget, store=None)
        return op @ self.alpha


def falkon(arch: Layer, x, y, *, centres: int = 1000, reg: float, get: str = "ntk", tol: float = 1e-8,
           max_iter: int = 100, seed: int = 0, memory_budget: int | None = None,
           progress: bool | None = None) -> FalkonModel:
    """Fit Falkon (module docstring) on the kernel ``get`` of ``arch``.

    Args:
        arch: any ntkit architecture; x: (N, ...) inputs; y: (N,) or (N, k) targets.
        centres: M, the number of Nyström centres (drawn uniformly without replacement; all N when M ≥ N;
            repeated points are kept once).
        reg: r > 0, the ridge of (K + rI) in kernel-ridge terms.
        tol: relative residual of the preconditioned system at which CG stops; max_iter: its cap.
        seed: for the centres. memory_budget: bytes for the streamed N × M panels (KernelOperator's).
    Returns:
        ``FalkonModel`` with ``alpha`` (M, ...) in float64, ``centres``, ``report`` and ``predict(x)``.
    """
    reg = check_nonnegative_float(reg, "reg")
    if not reg > 0:
        raise ValueError(f"falkon needs reg > 0; got reg={reg!r}")
    tol = check_nonnegative_float(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    centres = check_positive_int(centres, "centres")
    fit_op = KernelOperator(arch, x, get=get, memory_budget=memory_budget, store=None)
    inputs = fit_op.x1
    n = inputs.shape[0]
    targets = torch.as_tensor(y, device=inputs.device).to(torch.float64)
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, k) for the {n} points of x; got {tuple(targets.shape)}")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("y contains NaN or infinity")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.arange(n) if centres >= n else torch.randperm(n, generator=generator)[:centres].sort().values
    centre_points = inputs[chosen.to(inputs.device)]
    # Repeated centres make K_MM exactly singular and T⁻¹ blow the rounding up along their difference (measured:
    # CG diverging on iris, which has duplicate rows); one copy of each spans the same functions.
    flat = centre_points.reshape(len(centre_points), -1)
    _, first = _unique_rows(flat)
    centre_points = centre_points[first]
    m = centre_points.shape[0]
    started = time.perf_counter()
    with intra_op_threads(n * m * (targets.shape[1] if targets.ndim == 2 else 1), inputs.device):
        k_mm = arch.kernel(centre_points, get=get)[get].to(torch.float64)
        op = KernelOperator(arch, inputs, centre_points, get=get, memory_budget=memory_budget, store="auto")
        lam = reg / n
        jitter = torch.finfo(torch.float64).eps * m * float(k_mm.diagonal().mean())
        t = torch.linalg.cholesky(k_mm + jitter * torch.eye(m, dtype=torch.float64, device=k_mm.device), upper=True)
        a = torch.linalg.cholesky(t @ t.T / m + lam * torch.eye(m, dtype=torch.float64, device=k_mm.device),
                                  upper=True)

        def b(u):  # B u = T⁻¹ A⁻¹ u
            return _solve_upper(t, _solve_upper(a, u))

        def b_t(u):  # Bᵀ u = A⁻ᵀ T⁻ᵀ u
            return _solve_upper(a, _solve_upper(t, u, transpose=True), transpose=True)

        def system(u):  # Bᵀ H B u
            w = b(u)
            return b_t(op.normal_product(w) / n + lam * (k_mm @ w))

        vector = targets.ndim == 1
        rhs = b_t(op.normal_product(torch.zeros((m, *targets.shape[1:]), dtype=torch.float64,
                                                device=inputs.device), targets) / n)
        beta, iterations, residual = _cg(system, rhs[:, None] if vector else rhs, tol, max_iter, progress)
        alpha = b(beta)
    report = SolveReport("falkon", iterations, residual, residual <= tol, tol, "falkon", m,
                         time.perf_counter() - started)
    return FalkonModel(arch, get, centre_points, alpha[:, 0] if vector else alpha, report, memory_budget)


def _unique_rows(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows, index of each one's first occurrence, in the original order)."""
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first = torch.full((len(unique),), len(flat), dtype=torch.long, device=flat.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(flat), device=flat.device), reduce="amin")
    first = first.sort().values
    return flat[first], first


def _solve_upper(r: torch.Tensor, u: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    column = u[:, None] if u.ndim == 1 else u
    if transpose:
        out = torch.linalg.solve_triangular(r.T, column, upper=False)
    else:
        out = torch.linalg.solve_triangular(r, column, upper=True)
    return out[:, 0] if u.ndim == 1 else out


def _cg(system, rhs: torch.Tensor, tol: float, max_iter: int, progress: bool | None):
    """Plain CG on a symmetric positive definite ``system`` (already preconditioned), per column of ``rhs``."""
    norms = torch.linalg.vector_norm(rhs, dim=0)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    relative = torch.sqrt(rr) / scale
    iterations = 0
    bar = tqdm(total=max_iter, desc="falkon", disable=None if progress else True, leave=False)
    while iterations < max_iter and bool((relative > tol).any()):
        active = relative > tol
        q = system(p)
        curvature = (p * q).sum(0)
        alpha = torch.where(active & (curvature > 0), rr / torch.where(curvature > 0, curvature, 1.0), 0.0)
        x += alpha * p
        r -= alpha * q
        rr_new = (r * r).sum(0)
        p = r + torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0) * p
        rr = rr_new
        relative = torch.sqrt(rr) / scale
        iterations += 1
        bar.update(1)
    bar.close()
    return x, iterations, float(relative.max()) if relative.numel() else 0.0
