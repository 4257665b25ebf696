r"""Kernel machines on the infinite-width NTK/NNGP: the infinite-width network trained for time t, as estimators.

Conventions (Jacot et al. 2018; DESIGN.md): cost C = ½ E_{p_in}‖f − y‖² over the N training points; gradient descent
with learning rate η makes f follow ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j). From the mean initial function
f_0 = 0 of the infinite-width ensemble the outputs at time t are (Lee et al. 2019, eq. (9)–(10)), with
Θ + rI = V diag(λ) Vᵀ, r = diag_reg · tr(Θ)/N:

    f_t(x*) = Θ(x*, X) V diag((1 − e^{−ηλt/N}) / λ) Vᵀ y          →  Θ(x*, X)(Θ + rI)⁻¹ y   at t = ∞,

i.e. kernel ridge regression at t = ∞ (Arora et al. 2019 "exact computation with an infinitely wide net";
Lee et al. 2018 for the NNGP). Both estimators store the dual coefficients α = V diag(φ(t)) Vᵀ y, so predicting is
one kernel row block and one product: f_t(x*) = Θ(x*, X) α.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._memory import available_bytes
from .._validation import resolve_device
from .kernels import as_tensor, check_real, resolve_architecture, shaped

__all__ = ["NTKRegressor", "NTKClassifier"]

KERNEL_KINDS = ("ntk", "nngp")
# How (K + rI) α = Y is solved: the dense kernel by Cholesky (finite t: one eigendecomposition), conjugate gradients
# on a KernelOperator (Nyström-preconditioned; the kernel is never held whole), or Falkon on Nyström centres.
LINEAR_SOLVERS = ("auto", "cholesky", "cg", "nystrom")
# "auto": dense up to this many training points (and while twice the float64 kernel fits in half the free memory),
# conjugate gradients up to CG_MAX_N, Falkon beyond (a CG product recomputes N² kernel entries per iteration).
DENSE_MAX_N = 20_000
CG_MAX_N = 50_000


def _check_targets_ndim(y, owner: str, expected: str, max_ndim: int) -> None:
    """Name y and the expected shape for targets of too many axes (sklearn's message names neither)."""
    shape = getattr(y, "shape", None)
    if shape is None and isinstance(y, (list, tuple)):
        shape = np.asarray(y).shape
    if shape is not None and len(shape) > max_ndim:  # other containers: sklearn's validation judges them
        raise ValueError(f"{owner}: y must be {expected}; got a {len(shape)}-D array of shape {tuple(shape)}")


def _check_positive(value, name: str, owner: str, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value >= 0 if allow_zero else value > 0) and (allow_inf or math.isfinite(value))
    if not ok:
        kind = "non-negative" if allow_zero else "positive"
        extra = " (or math.inf)" if allow_inf else ""
        raise ValueError(f"{owner}: {name} must be a {kind} finite number{extra}; got {value!r}")
    return float(value)


class _KernelMachine(BaseEstimator):
    """Shared fitting of the dual coefficients α_t (see the module docstring) and kernel evaluation."""

    def __init__(self, hidden_layers=3, activation="relu", w_std=1.0, b_std=0.1, kernel="ntk", t=math.inf,
                 learning_rate=1.0, diag_reg=1e-4, architecture=None, input_shape=None, device=None, solver="auto",
                 centres=None, tol=1e-8):
        self.solver = solver
        self.centres = centres
        self.tol = tol
        self.device = device
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.kernel = kernel
        self.t = t
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.architecture = architecture
        self.input_shape = input_shape

    def _arch(self):
        return resolve_architecture(self.architecture, self.input_shape, self.hidden_layers, self.activation,
                                    self.w_std, self.b_std, type(self).__name__)

    def _check_params(self) -> None:
        owner = type(self).__name__
        self._arch()
        if self.kernel not in KERNEL_KINDS:
            raise ValueError(f"{owner}: kernel must be one of {KERNEL_KINDS}; got {self.kernel!r}")
        _check_positive(self.t, "t", owner, allow_zero=True, allow_inf=True)
        _check_positive(self.learning_rate, "learning_rate", owner)
        _check_positive(self.diag_reg, "diag_reg", owner, allow_zero=True)
        resolve_device(self.device, f"{owner}: device")
        if self.centres is not None and (isinstance(self.centres, bool) or not isinstance(self.centres, numbers.Integral)
                                         or self.centres < 1):
            raise ValueError(f"{owner}: centres must be None or a positive integer; got {self.centres!r}")
        _check_positive(self.tol, "tol", owner)

    def _linear_solver(self, n: int) -> str:
        """The solver ``solver`` names for n training points ("auto" resolved; see LINEAR_SOLVERS)."""
        owner = type(self).__name__
        solver = "auto" if self.solver == "regression" else self.solver  # "regression": NTKClassifier's old name
        if solver not in LINEAR_SOLVERS:
            raise ValueError(f"{owner}: solver must be one of {self._solver_names()}; got {self.solver!r}")
        if solver == "auto":
            dense_bytes = 2 * n * n * 8
            device = resolve_device(self.device, f"{owner}: device")
            if n <= DENSE_MAX_N and dense_bytes <= available_bytes(device) // 2:
                solver = "cholesky"
            else:
                solver = "cg" if n <= CG_MAX_N else "nystrom"
        if solver != "cholesky" and not math.isinf(self.t):
            raise ValueError(f"{owner}: solver={solver!r} solves t = inf (kernel ridge regression); finite t needs "
                             "the eigendecomposition of solver='cholesky'")
        if solver != "cholesky" and not self.diag_reg > 0:
            raise ValueError(f"{owner}: solver={solver!r} needs diag_reg > 0 (the ridge makes the system well posed "
                             "for an iterative solver)")
        return solver

    def _solver_names(self) -> tuple[str, ...]:
        return LINEAR_SOLVERS

    def _kernel(self, x1: np.ndarray, x2: np.ndarray | None = None) -> torch.Tensor:
        """The (N1, N2) float64 NTK or NNGP of the architecture (``nk.mlp(hidden_layers, ., activation, w_std,
        b_std)`` unless ``architecture`` is given), rows reshaped to ``input_shape`` when given."""
        owner = type(self).__name__
        device = resolve_device(self.device, f"{owner}: device")
        x1 = shaped(as_tensor(x1), self.input_shape, owner).to(device)
        x2 = None if x2 is None else shaped(as_tensor(x2), self.input_shape, owner).to(device)
        return self._arch().kernel(x1, x2, get=self.kernel)[self.kernel]

    def _fit_dual_coef(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """α_t (M, O) for targets (N, O): over the N training points, or over M Nyström centres (``support_``)."""
        solver = self._linear_solver(len(x))
        self.solver_ = solver
        self.support_ = x
        if solver in ("cg", "nystrom"):
            return self._iterative_coef(x, targets, solver)
        k_train = self._kernel(x)
        y = as_tensor(targets).to(k_train.device)
        if math.isinf(self.t):
            return self._ridge_coef(k_train, y).cpu().numpy()
        # Finite t: the closed form of nk.GradientFlow (one eigendecomposition); α_t = −dual_coefficients for f_0 = 0.
        # Imported here: ntkit.dynamics loads the empirical-NTK machinery, which t = inf never needs.
        from ..dynamics.gradient_flow import GradientFlow

        flow = GradientFlow(k_train, y, learning_rate=self.learning_rate, diag_reg=self.diag_reg)
        return (-flow.dual_coefficients(float(self.t))[0]).cpu().numpy()

    def _iterative_coef(self, x: np.ndarray, targets: np.ndarray, solver: str) -> np.ndarray:
        """(K + rI)⁻¹ Y by Nyström-preconditioned CG, or Falkon's Nyström KRR (then ``support_`` = the centres);
        r = diag_reg · mean(diag K), the dense path's ridge, from the O(N) diagonal."""
        from ..operators import KernelOperator, conjugate_gradient, falkon

        owner = type(self).__name__
        device = resolve_device(self.device, f"{owner}: device")
        inputs = shaped(as_tensor(x), self.input_shape, owner).to(device)
        arch = self._arch()
        reg = self.diag_reg * float(arch.kernel_diagonal(inputs, get=self.kernel)[self.kernel].mean())
        y = as_tensor(targets).to(device)
        if solver == "cg":
            op = KernelOperator(arch, inputs, get=self.kernel)
            alpha, self.solve_report_ = conjugate_gradient(op, y, reg=reg, tol=self.tol,
                                                           rank=min(len(x), max(100, int(math.sqrt(len(x))))))
        else:
            centres = self.centres or min(len(x), max(100, int(10 * math.sqrt(len(x)))))
            model = falkon(arch, inputs, y, centres=centres, reg=reg, get=self.kernel, tol=self.tol)
            alpha, self.solve_report_ = model.alpha, model.report
            self.support_ = model.centres.reshape(len(model.centres), -1).cpu().numpy()
        if not self.solve_report_.converged:
            warnings.warn(f"{owner}: solver={solver!r} stopped at relative residual "
                          f"{self.solve_report_.relative_residual:.2g} (tol={self.tol:g}) after "
                          f"{self.solve_report_.iterations} iterations", RuntimeWarning, stacklevel=4)
        return alpha.cpu().numpy()

    def _ridge_coef(self, k_train: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(Θ + rI)⁻¹ y with r = diag_reg·tr(Θ)/N, GradientFlow's regulariser, by a Cholesky solve.

        GradientFlow gives the same α at t = ∞ from an eigendecomposition, which costs several times a Cholesky
        factorisation (≈ N³/3 flops); t = ∞ is the default and what cross-validation repeats, so it gets the
        cheaper route. The tests check that both agree.
        """
        n = k_train.shape[0]
        reg = self.diag_reg * float(torch.diagonal(k_train).mean())
        factor, info = torch.linalg.cholesky_ex(k_train + reg * torch.eye(n, dtype=k_train.dtype,
                                                                         device=k_train.device))
        if int(info) != 0:
            raise ValueError(
                f"{type(self).__name__}: the train-train {self.kernel.upper()} kernel (+ diag_reg·tr/N·I, diag_reg="
                f"{self.diag_reg:g}) is not positive definite (duplicated or collinear samples?), so t = inf has no "
                "unique solution. Pass diag_reg > 0 (e.g. 1e-4) or a finite t.")
        return torch.cholesky_solve(y, factor)

    def _outputs(self, X) -> np.ndarray:
        """f_t(x*) = Θ(x*, S) α_t, (M, O), S the training points (or the Nyström centres), streamed by row panels:
        the test kernel is never held whole."""
        from ..operators import KernelOperator

        check_is_fitted(self, "dual_coef_")
        owner = type(self).__name__
        check_real(X, "X", owner)
        x = validate_data(self, X, reset=False, dtype=np.float64)
        device = resolve_device(self.device, f"{owner}: device")
        test = shaped(as_tensor(x), self.input_shape, owner).to(device)
        support = shaped(as_tensor(getattr(self, "support_", self.X_fit_)), self.input_shape, owner).to(device)
        op = KernelOperator(self._arch(), test, support, get=self.kernel, store=None)
        return (op @ torch.from_numpy(self.dual_coef_)).cpu().numpy()


class NTKRegressor(RegressorMixin, _KernelMachine):
    r"""The infinite-width fully-connected network trained by gradient flow on the MSE for time t.

    Predicts f_t(x*) = Θ(x*, X) V diag((1 − e^{−ηλt/N})/λ) Vᵀ y, the mean output of the infinite-width ensemble
    (Lee et al. 2019, eq. (10); Jacot et al. 2018's scaling ∂_t f = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j)), with Θ the
    NTK (or the NNGP: the network with only its last layer trained) of ``nk.mlp(hidden_layers, ., activation,
    w_std=w_std, b_std=b_std)`` and Θ + rI = V diag(λ) Vᵀ, r = diag_reg·tr(Θ)/N. At t = ∞ (default) this is
    kernel ridge regression Θ(x*, X)(Θ + rI)⁻¹ y. No intercept is fitted (the network's bias plays that role);
    standardise y, or wrap in ``TransformedTargetRegressor``, for targets far from zero.

    Args:
        hidden_layers: number of activations (Jacot's L = hidden_layers + 1).
        activation: name from ``ntkit.layers.ACTIVATION_NAMES``.
        w_std, b_std: weight and bias standard deviations of the NTK parameterisation; the defaults 1.0 and 0.1 are
            ``nk.mlp``'s and the GP kernels' (Jacot et al.'s β = 0.1: a bias keeps the kernel positive definite on
            inputs along one ray through the origin, where a bias-free ReLU kernel is singular).
        kernel: "ntk" (all layers trained) or "nngp" (only the readout trained / Bayesian posterior mean).
        t: training time in gradient-descent steps of size ``learning_rate`` (0 ≤ t ≤ inf).
        learning_rate: η (> 0); only the product η·t matters.
        diag_reg: relative ridge r/(tr Θ/N) ≥ 0, as ``nk.GradientFlow``'s diag_reg.
        architecture: any ntkit architecture (``nk.cnn(3)``, ``nk.myrtle(5)``, an ``nk.Serial``) instead of the
            MLP of the parameters above (which are then ignored).
        input_shape: the per-sample shape the rows of X are reshaped to, e.g. (1, 28, 28) for images.
        device: where kernels and solves run ("cpu", "cuda", "cuda:1"; None: the CPU); inputs and results stay
            NumPy arrays, float64.
        solver: "cholesky" (the dense kernel: one Cholesky factorisation at t = ∞, an eigendecomposition at
            finite t), "cg" (t = ∞: conjugate gradients on ``nk.KernelOperator``, Nyström-preconditioned, the
            kernel never held whole), "nystrom" (t = ∞: Falkon on ``centres`` Nyström centres, Rudi et al. 2017) or
            "auto" (default: cholesky up to N = 20,000 when the kernel fits in memory, cg up to 50,000, nystrom
            beyond).
        centres: Nyström centres for solver="nystrom" (default 10·√N, at least 100).
        tol: relative residual at which the iterative solvers stop.

    Attributes:
        X_fit_: (N, d) training inputs (float64); dual_coef_: (N, O) α_t, or (M, O) over the Nyström centres
        support_ (solver "nystrom"); solver_: the solver used; solve_report_: the iterative solver's report;
        n_features_in_.
    """

    # __init__ (the parameters above) is _KernelMachine's.

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Fit to X (N, d) and y (N,) or (N, O)."""
        self._check_params()
        check_real(X, "X", "NTKRegressor")
        _check_targets_ndim(y, "NTKRegressor", "targets of shape (n_samples,) or (n_samples, n_outputs)", 2)
        check_real(y, "y", "NTKRegressor")
        x, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        self.X_fit_ = x
        self.dual_coef_ = self._fit_dual_coef(x, y.reshape(len(y), -1))
        return self

    def predict(self, X):
        """f_t(X): (M,) when y was 1-D, else (M, O)."""
        out = self._outputs(X)
        return out[:, 0] if self._y_ndim == 1 else out


class NTKClassifier(ClassifierMixin, _KernelMachine):
    r"""Classification with the infinite-width network: one-hot regression on the NTK/NNGP, or an SVM on it.

    By default (``solver="auto"``, or any of :class:`NTKRegressor`'s solvers) it trains the infinite-width network
    on centred one-hot targets y_ik = 1[y_i = k] − 1/K by gradient flow on the MSE for time t (the
    :class:`NTKRegressor` closed form; Arora et al. 2019 and Lee et al. 2018 classify this way); the scores are the K
    outputs f_t(x*). ``solver="svm"`` fits ``sklearn.svm.SVC(kernel="precomputed", C=C)`` on the kernel instead (Arora et al.
    2020's NTK-SVM); its scores are SVC's one-vs-rest decision values (binary: ±d/2).

    ``predict`` returns the class of the largest score. ``predict_proba`` is the softmax of the scores: a monotone
    map, consistent with ``predict``, but not calibrated (wrap in ``CalibratedClassifierCV`` for calibration).

    Args: as :class:`NTKRegressor`, plus
        solver: "auto", "cholesky", "cg", "nystrom" (one-hot kernel regression, as NTKRegressor's; "regression" is
            accepted for "auto") or "svm" (dense kernel); C: SVC's penalty (> 0, used by solver="svm" only; t,
            learning_rate and diag_reg are used by the regression solvers only).

    Attributes: classes_, n_features_in_, X_fit_, and dual_coef_ (N or M, K) with solver_ for the regression
    solvers, or svc_ for "svm".
    """

    def __init__(self, hidden_layers=3, activation="relu", w_std=1.0, b_std=0.1, kernel="ntk", t=math.inf,
                 learning_rate=1.0, diag_reg=1e-4, architecture=None, input_shape=None, device=None,
                 solver="auto", centres=None, tol=1e-8, C=1.0):
        super().__init__(hidden_layers, activation, w_std, b_std, kernel, t, learning_rate, diag_reg, architecture,
                         input_shape, device, solver, centres, tol)
        self.C = C

    def _solver_names(self) -> tuple[str, ...]:
        return (*LINEAR_SOLVERS, "svm")

    def fit(self, X, y):
        """Fit to X (N, d) and class labels y (N,) of at least two classes."""
        self._check_params()
        if self.solver not in (*self._solver_names(), "regression"):  # named before any work
            raise ValueError(f"NTKClassifier: solver must be one of {self._solver_names()}; got {self.solver!r}")
        _check_positive(self.C, "C", "NTKClassifier")
        check_real(X, "X", "NTKClassifier")
        # 2-D stays sklearn's to judge: a (n_samples, 1) column is accepted with a DataConversionWarning
        _check_targets_ndim(y, "NTKClassifier", "class labels of shape (n_samples,)", 2)
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})")
        self.X_fit_ = x
        for stale in ("svc_", "dual_coef_", "support_", "solver_", "solve_report_"):  # a refit with another
            self.__dict__.pop(stale, None)                                               # solver must not reuse them
        if self.solver == "svm":
            self.svc_ = SVC(kernel="precomputed", C=float(self.C)).fit(self._kernel(x).cpu().numpy(), codes)
        else:
            n_classes = len(self.classes_)
            targets = np.eye(n_classes)[codes] - 1.0 / n_classes
            self.dual_coef_ = self._fit_dual_coef(x, targets)
        return self

    def _scores(self, X) -> np.ndarray:
        """(M, K) class scores: network outputs f_t(x*) (regression) or SVC's one-vs-rest decision values."""
        if hasattr(self, "svc_"):  # fitted with solver="svm"
            check_real(X, "X", "NTKClassifier")
            x = validate_data(self, X, reset=False, dtype=np.float64)
            decision = self.svc_.decision_function(self._kernel(x, self.X_fit_).cpu().numpy())
            return np.stack([-decision / 2, decision / 2], axis=1) if decision.ndim == 1 else decision
        check_is_fitted(self, "dual_coef_")
        return self._outputs(X)

    def decision_function(self, X):
        """Scores: (M,) score of classes_[1] minus that of classes_[0] for two classes, else (M, K)."""
        scores = self._scores(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict(self, X):
        """The class of the largest score."""
        scores = self._scores(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X):
        """softmax(scores): sums to one, argmax = predict; uncalibrated (see the class docstring)."""
        scores = self._scores(X)
        scores = scores - scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)
