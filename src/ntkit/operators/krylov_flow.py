r"""Gradient flow of the MSE on a kernel too large to diagonalise: Lanczos (Krylov) actions of matrix functions.

``nk.GradientFlow(op, y)`` with an ``nk.KernelOperator`` ``op`` lands here. GradientFlow's closed form needs
f(A) r₀ for A = K + rI and two functions of it (Lee et al. 2019, eqs. (9)–(10), Jacot et al.'s scaling):

    training residual   f_t(X) − y = e^{−τA} r₀,                         τ = ηt/N,
    dual coefficients   α_t = φ_t(A) r₀,   φ_t(λ) = (1 − e^{−τλ})/λ,      f_t(x*) = f₀(x*) − K(x*, X) α_t.

Lanczos (with full reorthogonalisation) builds, per output column, an orthonormal basis Q_m of the Krylov space
span{r₀, A r₀, ..., A^{m−1} r₀} and the tridiagonal T_m = Q_mᵀ A Q_m, from m kernel products; then
f(A) r₀ ≈ ‖r₀‖ Q_m f(T_m) e₁ for any f, every time t after one small eigendecomposition of T_m (Saad 1992;
Gallopoulos & Saad 1992). The iteration stops when the t = ∞ case (the linear solve A α = r₀, which is
conjugate gradients in this basis) reaches ``tol``: φ_t ≤ φ_∞ = 1/λ and e^{−τλ} are no harder to approximate on
the spectrum, so every finite t is then at least as accurate. No N×N matrix is formed or factorised.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_nonnegative_float, check_positive_int
from ..dynamics._checks import as_targets, as_times, check_learning_rate
from .kernel_operator import KernelOperator

__all__ = ["KrylovGradientFlow"]


class KrylovGradientFlow:
    """GradientFlow's outputs from Lanczos on a KernelOperator; see the module docstring.

    Args: as ``nk.GradientFlow`` (``ntk_train_train`` a square ``nk.KernelOperator``), plus ``tol`` (relative
    residual of the t = ∞ solve at which Lanczos stops) and ``max_steps`` (its cap; default min(N, 500)).
    Attributes: ``steps`` (Krylov dimension per output column), ``relative_residual`` (of the t = ∞ solve).
    """

    def __init__(self, op: KernelOperator, y_train, *, learning_rate: float = 1.0, diag_reg: float = 0.0,
                 tol: float = 1e-8, max_steps: int | None = None):
        if op.shape[0] != op.shape[1] or not op.symmetric:
            raise ValueError(f"GradientFlow needs the symmetric train-train operator (x2=None); got {op.shape}")
        self.op, self.n_train = op, op.shape[0]
        y, self._squeeze_outputs = as_targets(y_train, self.n_train)
        self._y = y.to(device=op.device, dtype=torch.float64)
        self.learning_rate = check_learning_rate(learning_rate)
        self.diag_reg = check_nonnegative_float(diag_reg, "diag_reg")
        self.regularization = self.diag_reg * float(op.diag().to(torch.float64).mean())
        tol = check_nonnegative_float(tol, "tol")
        max_steps = min(self.n_train, 500) if max_steps is None else check_positive_int(max_steps, "max_steps")
        self._bases, self._ritz, self.steps, residuals = [], [], [], []
        for column in (-self._y).T:  # r₀ = f₀ − y with f₀ = 0
            basis, values, vectors, norm, residual = self._lanczos(column, tol, max_steps)
            self._bases.append(basis)
            self._ritz.append((values, vectors, norm))
            self.steps.append(basis.shape[1])
            residuals.append(residual)
        self.relative_residual = max(residuals) if residuals else 0.0

    @property
    def n_outputs(self) -> int:
        return self._y.shape[1]

    def _lanczos(self, start: torch.Tensor, tol: float, max_steps: int):
        norm = float(torch.linalg.vector_norm(start))
        if norm == 0:
            empty = torch.zeros(self.n_train, 0, dtype=torch.float64, device=start.device)
            return empty, empty[0], empty[:0], 0.0, 0.0
        basis = [start / norm]
        alphas, betas = [], []
        residual = math.inf
        for step in range(max_steps):
            w = self.op @ basis[-1] + self.regularization * basis[-1]
            alphas.append(float(basis[-1] @ w))
            stacked = torch.stack(basis, 1)
            w = w - stacked @ (stacked.T @ w)  # full reorthogonalisation (twice is enough: Parlett's rule)
            w = w - stacked @ (stacked.T @ w)
            beta = float(torch.linalg.vector_norm(w))
            tridiagonal = _tridiagonal(alphas, betas)
            # CG in the Krylov basis: y = T⁻¹ e₁‖r₀‖, residual ‖A x − r₀‖ = β_m |y_m|.
            solve = torch.linalg.solve(tridiagonal, _unit(len(alphas)) * norm)  # small: on the CPU
            residual = beta * abs(float(solve[-1])) / norm
            if residual <= tol or beta <= 1e-14 * abs(alphas[-1]) or step == max_steps - 1:
                break
            betas.append(beta)
            basis.append(w / beta)
        values, vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
        return torch.stack(basis, 1), values.to(start.device), vectors.to(start.device), norm, residual

    def _apply(self, function, times: torch.Tensor) -> torch.Tensor:
        """(T, N, O): ‖r₀‖ Q f_t(T_m) e₁ for each time and output column."""
        out = torch.zeros(times.numel(), self.n_train, self.n_outputs, dtype=torch.float64, device=self._y.device)
        for o, (basis, (values, vectors, norm)) in enumerate(zip(self._bases, self._ritz)):
            if basis.shape[1] == 0:
                continue
            weights = function(values[None, :], times[:, None]) * vectors[0][None, :]  # (T, m)
            out[:, :, o] = norm * (basis @ (vectors @ weights.T)).T
        return out

    def _times(self, t):
        times, scalar = as_times(t)
        return times.to(torch.float64), scalar

    def _tau(self, times: torch.Tensor) -> torch.Tensor:
        return self.learning_rate * times / self.n_train

    def train_outputs(self, t) -> torch.Tensor:
        """f_t(X) = y + e^{−τA}(f₀ − y), f₀ = 0; shapes as ``GradientFlow.train_outputs``."""
        times, scalar = self._times(t)
        tau = self._tau(times)
        residual = self._apply(_decay, tau)
        return self._shape(residual + self._y[None], scalar)

    def dual_coefficients(self, t) -> torch.Tensor:
        """α_t = φ_t(A)(f₀ − y), (T, N, O) float64, so that f_t(x*) = −K(x*, X) α_t."""
        times, _ = self._times(t)
        return self._apply(_phi, self._tau(times))

    def test_outputs(self, t, ntk_test_train) -> torch.Tensor:
        """f_t(x*) = −K(x*, X) α_t for a (M, N) tensor or a KernelOperator(arch, x_test, x_train)."""
        times, scalar = self._times(t)
        alpha = self.dual_coefficients(times)  # (T, N, O)
        stacked = alpha.permute(1, 0, 2).reshape(self.n_train, -1)
        if isinstance(ntk_test_train, KernelOperator):
            moved = ntk_test_train @ stacked
        else:
            kernel = torch.as_tensor(ntk_test_train, device=self._y.device)
            if kernel.ndim != 2 or kernel.shape[1] != self.n_train:
                raise ValueError(f"ntk_test_train must have shape (M, {self.n_train}); got {tuple(kernel.shape)}")
            moved = kernel.to(torch.float64) @ stacked
        out = -moved.reshape(moved.shape[0], times.numel(), self.n_outputs).permute(1, 0, 2)
        return self._shape(out, scalar)

    def loss(self, t) -> torch.Tensor:
        """C(f_t) = (1/2N) Σ_j ‖f_t(x_j) − y_j‖², (T,) or 0-D."""
        times, scalar = self._times(t)
        residual = self.train_outputs(times).reshape(times.numel(), self.n_train, -1) - self._y[None]
        loss = 0.5 * residual.pow(2).sum((1, 2)) / self.n_train
        return loss[0] if scalar else loss

    def _shape(self, out: torch.Tensor, scalar: bool) -> torch.Tensor:
        if self._squeeze_outputs:
            out = out[..., 0]
        return out[0] if scalar else out

    def __repr__(self) -> str:
        return (f"GradientFlow(KernelOperator N={self.n_train}, O={self.n_outputs}, learning_rate="
                f"{self.learning_rate:g}, diag_reg={self.diag_reg:g}, Krylov steps={self.steps})")


def _decay(lam: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """e^{−τλ}, and 0 at τ = ∞."""
    return torch.where(torch.isinf(tau), 0.0, torch.exp(-lam * torch.where(torch.isinf(tau), 0.0, tau)))


def _phi(lam: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """(1 − e^{−τλ})/λ, with τ at λ = 0 and 1/λ at τ = ∞."""
    finite = torch.where(torch.isinf(tau), 0.0, tau)
    safe = torch.where(lam == 0, 1.0, lam)
    phi = torch.where(lam == 0, finite.expand_as(lam * finite), -torch.expm1(-lam * finite) / safe)
    return torch.where(torch.isinf(tau), (1.0 / safe).expand_as(phi), phi)


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def _unit(m: int) -> torch.Tensor:
    e = torch.zeros(m, dtype=torch.float64)
    e[0] = 1.0
    return e
