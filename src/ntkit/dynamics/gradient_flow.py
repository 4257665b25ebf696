r"""Closed-form gradient flow of the MSE cost in function space, from one cached eigendecomposition.

Conventions (Jacot, Gabriel & Hongler 2018, §3–5): the cost is C = ½ E_{p_in}‖f − y‖² = (1/2N) Σ_j ‖f(x_j) − y_j‖²
over the N training points, and gradient descent with learning rate η makes the outputs follow

    ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j) (f(x_j) − y_j).

With the train-train kernel Θ = V diag(λ) Vᵀ and r_0 = f_0(X) − y (Lee et al. 2019, eqs. (9)–(10), our scaling):

    training residual   f_t(X) − y = V diag(e^{−ηλ_i t/N}) Vᵀ r_0
    test outputs        f_t(x*)    = f_0(x*) − Θ(x*, X) V diag(φ_i(t)) Vᵀ r_0,   φ_i(t) = (1 − e^{−ηλ_i t/N}) / λ_i

(φ_i(t) is computed as −expm1(−ηλ_i t/N)/λ_i, so finite times need no inverse; t = ∞ needs λ_min > 0.) After the
eigendecomposition every time point costs matrix products only: O(N²·O) for V·(φ ⊙ Vᵀ r_0) and O(M·N·O) for the
test kernel.

Rank-deficient kernels (duplicated points, N larger than the feature dimension): eigenvalues with
|λ_i| ≤ N·eps·max|λ| (``Eigendecomposition.tolerance``, the threshold ``nk.spectrum.check_positive_definite`` and the
t = ∞ check use too) are rounding, not spectrum, and are set to exactly 0. Their components neither decay nor grow
(e^{0} = 1: the loss is non-increasing in t), and they carry no dual coefficient (φ_i = 0): for a positive
semi-definite kernel a null vector v of Θ(X, X) has Θ(x*, X) v = 0 at every x* (the joint Gram on X ∪ {x*} is PSD),
so this is the exact flow with the minimum-norm α_t, and rounding in Θ(x*, X) v is not amplified by t.
Integrating them instead (λ_i ≈ −1e-16 as growth, φ_i = ηt/N) made the loss rise with t and
``test_outputs(t, Θ(X, X))`` drift from ``train_outputs(t)`` in proportion to t.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._memory import check_fits
from .._validation import check_nonnegative_float
from ..spectrum import Eigendecomposition, as_symmetric_kernel, decompose
from ._checks import (as_cross_kernel, as_outputs, as_targets, as_times, check_learning_rate, finite_or_raise,
                      output_dtype)

__all__ = ["GradientFlow"]


class GradientFlow:
    r"""Outputs of a network (or kernel machine) trained by gradient flow on the MSE cost, at any time t.

    Conventions: C = ½ E_{p_in}‖f − y‖² over the N training points; learning rate η; the outputs follow
    ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j), so t counts gradient-descent steps (t = step, η inside the
    scaling). Closed form (Lee et al. 2019, eqs. (9)–(10)): with Θ = V diag(λ) Vᵀ,
    f_t(X) − y = V e^{−ηλt/N} Vᵀ (f_0 − y) and f_t(x*) = f_0(x*) − Θ(x*, X) Θ⁻¹ (I − e^{−ηΘt/N})(f_0 − y).

    One float64 eigendecomposition is computed here and cached; each time point then costs matrix products.
    Given an ``nk.KernelOperator`` instead of a matrix (N too large to hold or diagonalise), the same outputs come
    from Lanczos actions of e^{−τA} and φ_t(A) (``ntkit.operators.krylov_flow``; no eigendecomposition).

    Args:
        ntk_train_train: (N, N) symmetric kernel Θ(X, X) (the NTK; any PSD kernel works; an indefinite one is
            computed at finite t with a RuntimeWarning naming its most negative eigenvalue).
        y_train: (N,) or (N, O) targets. Results drop the O axis when y is (N,).
        learning_rate: η > 0.
        diag_reg: ridge added to the train-train kernel, scaled by its mean diagonal:
            Θ ← Θ + diag_reg · (tr Θ / N) · I (relative, so the same value suits kernels of any scale; the
            absolute amount is ``.regularization``). The test-train kernel is not changed, so at t = ∞
            ``test_outputs`` is kernel ridge regression Θ(x*, X)(Θ + rI)⁻¹ y (for f_0 = 0). ``train_outputs`` follow
            the regularised ODE itself, which still drives its own training residual to zero; the ridge fit on
            the training points is ``test_outputs(t, Θ(X, X))``.

    Times ``t`` may be a float, ``math.inf`` or a 1-D tensor of T times; a tensor gives results with a leading T
    axis. Results have the dtype promoted from the inputs and live on the kernel's device.
    """

    def __new__(cls, ntk_train_train=None, *args, **kwargs):
        # A kernel too large to diagonalise: the same outputs by Lanczos on the operator (ntkit.operators).
        from ..operators.kernel_operator import KernelOperator

        if isinstance(ntk_train_train, KernelOperator):
            from ..operators.krylov_flow import KrylovGradientFlow

            return KrylovGradientFlow(ntk_train_train, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, ntk_train_train, y_train, *, learning_rate: float = 1.0, diag_reg: float = 0.0):
        kernel = as_symmetric_kernel(ntk_train_train, "ntk_train_train")
        n = kernel.shape[0]
        y, self._squeeze_outputs = as_targets(y_train, n)
        if y.device != kernel.device:
            raise ValueError(f"y_train is on {y.device} but ntk_train_train is on {kernel.device}")
        self.learning_rate = check_learning_rate(learning_rate)
        self.diag_reg = check_nonnegative_float(diag_reg, "diag_reg")
        self._dtype = output_dtype(kernel, y)
        self._device = kernel.device
        self.regularization = self.diag_reg * float(torch.diagonal(kernel).double().mean())
        # Θ + rI has Θ's eigenvectors and eigenvalues λ + r.
        eig = decompose(kernel, shift=self.regularization, hint="Use fewer training points (or a "
                        "random-features / low-rank approximation of the kernel).")
        # Eigenvalues within rounding of zero are zero for the flow (see the module docstring).
        values = torch.where(eig.values.abs() <= eig.tolerance, torch.zeros_like(eig.values), eig.values)
        self.eig = Eigendecomposition(values, eig.vectors, eig.dtype)
        self._warn_if_indefinite()
        self._y = y.to(torch.float64)
        self._initial_residual = self.eig.vectors.T @ (-self._y)  # Vᵀ(f_0 − y) for the default f_0 = 0

    # ----- basic quantities ---------------------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return self._y.shape[0]

    @property
    def n_outputs(self) -> int:
        return self._y.shape[1]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """λ of the (regularised) train-train kernel, float64, descending; those within the rounding tolerance
        N·eps·max|λ| of zero are exactly 0."""
        return self.eig.values

    @property
    def eigenvectors(self) -> torch.Tensor:
        """V, (N, N) float64; column i is the i-th kernel principal component."""
        return self.eig.vectors

    @property
    def rates(self) -> torch.Tensor:
        """Decay rate ηλ_i/N of each eigencomponent of the training residual (float64, descending)."""
        return self.learning_rate * self.eig.values / self.n_train

    def max_learning_rate(self) -> float:
        """Largest η for which discrete gradient descent is stable: 2N/λ_max.

        A GD step multiplies the residual's i-th component by 1 − ηλ_i/N, which shrinks it only while
        ηλ_i/N < 2. (With η = N/λ_max the top component is removed in one step.)

        Above it: the linearised model (``nk.linearize``, whose kernel is fixed) diverges, its residual along the
        top eigenvector growing by |1 − ηλ_max/N| > 1 per step (tests/dynamics/test_linearize.py pins this); a
        finite network's kernel moves instead, so it may diverge or settle after its NTK changes (the
        catapult regime, Lewkowycz et al. 2020), and this closed form no longer describes it.
        """
        top = float(self.eig.values[0])
        return 2.0 * self.n_train / top if top > 0 else math.inf

    # ----- per-eigencomponent view (Jacot et al. 2018, §5) ---------------------------------------------------
    def decay_factors(self, t) -> torch.Tensor:
        """e^{−ηλ_i t/N} for each eigencomponent: (N,) for one time, (T, N) for T times (float64)."""
        times, scalar = self._times(t)
        decay = finite_or_raise(self._decay(times), "decay factors", self._overflow_hint())
        return decay[0] if scalar else decay

    def residual_components(self, t, f0_train=None) -> torch.Tensor:
        """Vᵀ(f_t(X) − y): the training residual along each principal component, e^{−ηλ_i t/N} Vᵀ(f_0 − y).

        Shape (N, O), with a leading T axis for T times and no O axis when y was (N,); float64. Row i belongs to
        the i-th largest eigenvalue: these decay fastest, which is why early stopping keeps the top components.
        """
        times, scalar = self._times(t)
        c0, _ = self._residual0(f0_train)
        out = self._decay(times)[:, :, None] * c0[None]
        return self._shape(finite_or_raise(out, "residual components", self._overflow_hint()), scalar)

    # ----- outputs --------------------------------------------------------------------------------------------
    def train_outputs(self, t, f0_train=None) -> torch.Tensor:
        """f_t(X) = y + V e^{−ηλt/N} Vᵀ (f_0(X) − y) on the training points.

        Args:
            t: float, math.inf or 1-D tensor of T times (t counts GD steps of size η).
            f0_train: (N,) or (N, O) outputs at t = 0; None means f_0 = 0 (the infinite-width ensemble's mean).
        Returns:
            (N, O) or (N,); (T, N, O) or (T, N) for T times.
        """
        times, scalar = self._times(t)
        c0, dtype = self._residual0(f0_train)
        self._check_memory(times.numel(), self.n_train)
        decayed = self._decay(times).T[:, :, None] * c0[:, None, :]  # (N, T, O)
        residual = self._apply_v(decayed)
        out = residual + self._y[None]
        return self._finish(out, scalar, dtype, "train outputs")

    def dual_coefficients(self, t, f0_train=None) -> torch.Tensor:
        """α_t = V diag(φ(t)) Vᵀ (f_0(X) − y), so that f_t(x*) = f_0(x*) − Θ(x*, X) α_t.

        Always float64 of shape (T, N, O), with the T axis even for one time and the O axis even for (N,)
        targets (``ntkit.sklearn`` reads it so).
        """
        times, _ = self._times(t)
        c0, _ = self._residual0(f0_train)
        self._check_memory(times.numel(), self.n_train)
        return finite_or_raise(self._alpha(times, c0), "dual coefficients", self._overflow_hint())

    def test_outputs(self, t, ntk_test_train, f0_train=None, f0_test=None) -> torch.Tensor:
        """f_t(x*) = f_0(x*) − Θ(x*, X) V diag((1 − e^{−ηλt/N})/λ) Vᵀ (f_0(X) − y).

        Args:
            t: float, math.inf or 1-D tensor of T times.
            ntk_test_train: (M, N) kernel Θ(x*, X) between the test and the training points.
            f0_train: (N,) or (N, O) initial outputs on the training points (None: 0).
            f0_test: (M,) or (M, O) initial outputs on the test points (None: 0).
        Returns:
            (M, O) or (M,); with a leading T axis for T times.
        """
        k_test = as_cross_kernel(ntk_test_train, self.n_train, "ntk_test_train")
        if k_test.device != self._device:
            raise ValueError(f"ntk_test_train is on {k_test.device} but the training kernel is on {self._device}")
        m, o = k_test.shape[0], self.n_outputs
        times, scalar = self._times(t)
        self._check_memory(times.numel(), max(m, self.n_train))
        c0, dtype = self._residual0(f0_train)
        alpha = self._alpha(times, c0)  # (T, N, O)
        moved = k_test.to(torch.float64) @ alpha.permute(1, 0, 2).reshape(self.n_train, -1)  # one GEMM
        out = -moved.reshape(m, -1, o).permute(1, 0, 2)
        dtype = torch.promote_types(dtype, k_test.dtype)
        if f0_test is not None:
            f0 = as_outputs(f0_test, m, o, "f0_test")
            if f0.device != self._device:
                raise ValueError(f"f0_test is on {f0.device} but the training kernel is on {self._device}")
            out = out + f0.to(torch.float64)[None]
            dtype = torch.promote_types(dtype, f0.dtype)
        return self._finish(out, scalar, dtype, "test outputs")

    def loss(self, t, f0_train=None) -> torch.Tensor:
        """Training cost C(f_t) = (1/2N) Σ_j ‖f_t(x_j) − y_j‖², from the eigencomponents in O(N·O) per time.

        Returns a 0-D tensor for one time, (T,) for T times.
        """
        times, scalar = self._times(t)
        c0, dtype = self._residual0(f0_train)
        energy = c0.pow(2).sum(1)  # (N,)
        loss = 0.5 * (self._decay(times).pow(2) * energy).sum(1) / self.n_train
        loss = finite_or_raise(loss, "loss", self._overflow_hint())
        return (loss[0] if scalar else loss).to(dtype)

    # ----- internals --------------------------------------------------------------------------------------------
    def _times(self, t) -> tuple[torch.Tensor, bool]:
        times, scalar = as_times(t)
        if bool(torch.isinf(times).any()):
            self._require_positive_definite()
        return times.to(self._device), scalar

    def _require_positive_definite(self) -> None:
        lam_min, tol = float(self.eig.values[-1]), self.eig.tolerance
        if lam_min > tol:
            return
        advice = ("increase diag_reg" if self.diag_reg else "pass diag_reg > 0 (e.g. diag_reg=1e-4, which adds "
                  "1e-4·tr(Θ)/N·I)")
        raise ValueError(
            f"t = inf needs a positive definite train-train kernel, but its smallest eigenvalue is {lam_min:.3g} "
            f"(numerical zero tolerance {tol:.3g}): the residual along that direction never decays and Θ⁻¹ does "
            f"not exist. To reach the t = inf limit, {advice}, or evaluate a finite time t.")

    def _warn_if_indefinite(self) -> None:
        """Warn once, here, when the kernel has an eigenvalue below −tolerance: finite times are still computed
        (the ODE is defined), but the residual grows along that direction like e^{|λ|ηt/N}."""
        lam_min, lam_max, tol = float(self.eig.values[-1]), float(self.eig.values[0]), self.eig.tolerance
        if lam_min >= -tol:
            return
        relative = f" = {lam_min / lam_max:.3g} x the largest ({lam_max:.3g})" if lam_max > 0 else ""
        warnings.warn(
            f"GradientFlow: ntk_train_train is not positive semi-definite: its most negative eigenvalue is "
            f"{lam_min:.3g}{relative}, beyond the rounding tolerance {tol:.3g} (N x eps x max|eigenvalue|). "
            f"Gradient flow grows the residual along it like exp({-lam_min:.3g}·ηt/N) instead of shrinking it. An NTK "
            "or NNGP is PSD: check how the kernel was computed (nk.spectrum.check_positive_definite), or add "
            "diag_reg > 0.", RuntimeWarning, stacklevel=3)

    def _decay(self, times: torch.Tensor) -> torch.Tensor:
        """(T, N) e^{−ηλ_i t/N}; 0 at t = inf (only reached for a positive definite kernel)."""
        exponent = -self.rates[None, :] * times[:, None]
        return torch.where(torch.isinf(times)[:, None], torch.zeros_like(exponent), torch.exp(exponent))

    def _phi(self, times: torch.Tensor) -> torch.Tensor:
        """(T, N) φ_i(t) = (1 − e^{−ηλ_i t/N})/λ_i = −expm1(−ηλ_i t/N)/λ_i (no cancellation for small ηλ_i t/N),
        1/λ_i at t = inf, and 0 on the numerical null space λ_i = 0 (the minimum-norm dual coefficients: those
        components contribute Θ(x*, X) v_i = 0 to every output; see the module docstring)."""
        lam = self.eig.values[None, :]
        scaled_t = (self.learning_rate / self.n_train) * times[:, None]
        finite_t = torch.where(torch.isinf(scaled_t), torch.zeros_like(scaled_t), scaled_t)
        null = lam == 0
        safe_lam = torch.where(null, torch.ones_like(lam), lam)
        phi = torch.where(null, torch.zeros_like(lam), -torch.expm1(-lam * finite_t) / safe_lam)
        return torch.where(torch.isinf(scaled_t) & ~null, (1.0 / safe_lam).expand_as(phi), phi)

    def _residual0(self, f0_train) -> tuple[torch.Tensor, torch.dtype]:
        """Vᵀ(f_0(X) − y) in float64 (N, O), and the dtype results should take."""
        if f0_train is None:
            return self._initial_residual, self._dtype
        f0 = as_outputs(f0_train, self.n_train, self.n_outputs, "f0_train")
        if f0.device != self._device:
            raise ValueError(f"f0_train is on {f0.device} but the training kernel is on {self._device}")
        return self.eig.vectors.T @ (f0.to(torch.float64) - self._y), torch.promote_types(self._dtype, f0.dtype)

    def _alpha(self, times: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """(T, N, O) α_t = V diag(φ(t)) c_0 for c_0 = Vᵀ(f_0(X) − y)."""
        return self._apply_v(self._phi(times).T[:, :, None] * c0[:, None, :])

    def _apply_v(self, stacked: torch.Tensor) -> torch.Tensor:
        """V @ Z for Z of shape (N, T, O) as one (N, N) x (N, T·O) product; returns (T, N, O)."""
        n, t_count, o = stacked.shape
        return (self.eig.vectors @ stacked.reshape(n, t_count * o)).reshape(n, t_count, o).permute(1, 0, 2)

    def _check_memory(self, t_count: int, rows: int) -> None:
        # Three float64 (T, rows, O) temporaries are alive at once (coefficients, product, result).
        check_fits(3 * 8 * t_count * rows * self.n_outputs, self._device, "GradientFlow outputs",
                   "Evaluate fewer times per call.")

    def _shape(self, out: torch.Tensor, scalar: bool) -> torch.Tensor:
        if self._squeeze_outputs:
            out = out[..., 0]
        return out[0] if scalar else out

    def _finish(self, out: torch.Tensor, scalar: bool, dtype: torch.dtype, what: str) -> torch.Tensor:
        finite_or_raise(out, what, self._overflow_hint())
        return self._shape(out, scalar).to(dtype)

    def _overflow_hint(self) -> str:
        lam_min = float(self.eig.values[-1])
        if lam_min >= 0:  # a PSD kernel only shrinks the residual: the overflow came from huge inputs
            return "The initial outputs, targets or kernel are too large for float64"
        return (f"The kernel has eigenvalue {lam_min:.3g} < 0, so gradient flow grows the "
                "residual along it without bound; the kernel should be positive semi-definite (see "
                "nk.spectrum.check_positive_definite), or use diag_reg > 0 or a smaller t")

    def __repr__(self) -> str:
        return (f"GradientFlow(N={self.n_train}, O={self.n_outputs}, learning_rate={self.learning_rate:g}, "
                f"diag_reg={self.diag_reg:g}, λ ∈ [{float(self.eig.values[-1]):.3g}, "
                f"{float(self.eig.values[0]):.3g}])")
