r"""The infinite-width NTK and NNGP of a fully-connected network as scikit-learn kernels.

    from sklearn.gaussian_process import GaussianProcessRegressor
    from ntkit.sklearn import NNGP, NTK
    gp = GaussianProcessRegressor(NNGP(hidden_layers=3) + WhiteKernel()).fit(X, y)   # w_std, b_std optimised

The kernels are those of ``nk.mlp(hidden_layers, width, activation=..., w_std=..., b_std=...)`` in the NTK
parameterisation (Jacot et al. 2018, Prop. 1 and Thm. 1; the NNGP is Lee et al. 2018's GP), for one output, in
float64; the width does not enter the limit. ``w_std`` and ``b_std`` (Jacot's β) are hyperparameters: sklearn's
``theta`` holds their logs (b_std first, the alphabetical order sklearn uses), and ``eval_gradient=True`` returns
the exact derivatives with respect to those logs: forward-mode AD (``torch.func.jvp``) through the same layer rules
``arch.kernel`` runs, with the Dense layers' w_std and b_std as tensors (see :func:`kernel_with_tangents`).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel
from torch.func import jvp

from .._validation import check_finite
from ..kernels.evaluate import run_layers
from ..layers import Dense, Layer, mlp
from ..layers.activations import ACTIVATION_NAMES

__all__ = ["NTK", "NNGP"]


def check_architecture(hidden_layers, activation, w_std, b_std, owner: str) -> None:
    """Raise a ValueError/TypeError naming the parameter of ``owner`` that is not a valid architecture setting."""
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, numbers.Integral) or hidden_layers < 0:
        raise ValueError(f"{owner}: hidden_layers must be a non-negative integer; got {hidden_layers!r}")
    if not isinstance(activation, str) or activation.lower().replace("-", "_") not in ACTIVATION_NAMES:
        raise ValueError(f"{owner}: activation must be one of {', '.join(ACTIVATION_NAMES)}; got {activation!r}")
    for name, value in (("w_std", w_std), ("b_std", b_std)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{owner}: {name} must be a finite non-negative number; got {value!r}")


def fully_connected(hidden_layers, activation, w_std, b_std):
    """``nk.mlp`` of the given depth and activation. Width 1: in the NTK parameterisation the limit does not
    depend on the width, so any width describes the same kernels."""
    return mlp(int(hidden_layers), 1, activation=activation, w_std=float(w_std), b_std=float(b_std))


def check_input_shape(input_shape, owner: str) -> tuple[int, ...] | None:
    """None, or the per-sample shape rows of X are reshaped to, e.g. (1, 28, 28)."""
    if input_shape is None:
        return None
    if not isinstance(input_shape, (tuple, list)) or not input_shape or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in input_shape):
        raise ValueError(f"{owner}: input_shape must be None or a tuple of positive ints such as (1, 28, 28); "
                         f"got {input_shape!r}")
    return tuple(int(v) for v in input_shape)


def resolve_architecture(architecture, input_shape, hidden_layers, activation, w_std, b_std, owner: str):
    """The ntkit architecture an estimator or kernel uses: ``architecture`` when given, else the MLP of the
    fully-connected parameters (checked either way, with errors naming ``owner``'s parameter)."""
    check_input_shape(input_shape, owner)
    if architecture is None:
        check_architecture(hidden_layers, activation, w_std, b_std, owner)
        return fully_connected(hidden_layers, activation, w_std, b_std)
    if not isinstance(architecture, Layer):
        raise TypeError(f"{owner}: architecture must be an ntkit architecture (nk.Serial, nk.myrtle(...), "
                        f"nk.cnn(...), ...) or None; got {type(architecture).__name__}")
    return architecture


def shaped(x: torch.Tensor, input_shape, owner: str) -> torch.Tensor:
    """Rows of the 2-D ``x`` as samples of ``input_shape`` (x itself when None)."""
    if input_shape is None:
        return x
    size = int(np.prod(input_shape))
    if x.shape[1] != size:
        raise ValueError(f"{owner}: X has {x.shape[1]} features but input_shape={tuple(input_shape)} holds {size}")
    return x.reshape(x.shape[0], *input_shape)


def check_real(X, name: str, owner: str) -> None:
    """Refuse complex data before a float64 conversion silently drops its imaginary part (sklearn's own check prints
    the whole array). Arrays and lists are checked here; other containers are left to sklearn's validation."""
    dtype = getattr(X, "dtype", None)
    if dtype is None and isinstance(X, (list, tuple)):
        dtype = np.asarray(X).dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "c":
        raise ValueError(f"{owner}: {name} has complex dtype {dtype}. Complex data not supported: the NTK and NNGP "
                         f"are defined for real inputs (use {name}.real, or the real and imaginary parts as "
                         "separate features)")


def as_float64_inputs(X, name: str, owner: str = "ntkit.sklearn") -> torch.Tensor:
    """A (N, d) float64 tensor from what sklearn passes a kernel (a 2-D real array). Every dtype is converted to
    float64, as scikit-learn does (float16 included); complex data is refused."""
    check_real(X, name, owner)
    array = np.asarray(X, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_features); got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return as_tensor(array)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A float64 tensor sharing memory with ``array`` when it is C-contiguous and writable (torch refuses read-only
    memory, e.g. memory-mapped inputs), a copy otherwise."""
    return torch.from_numpy(np.require(array, dtype=np.float64, requirements=["C", "W"]))


def _mirror_upper(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix (or stack of matrices) with the upper triangle and diagonal of ``matrix``."""
    upper = torch.triu(matrix)
    return upper + torch.triu(matrix, 1).transpose(-1, -2)


class _FullyConnectedKernel(Kernel):
    """Shared machinery of :class:`NTK` and :class:`NNGP`; ``kind`` names the kernel of ``arch.kernel``."""

    kind = "ntk"

    def __init__(self, hidden_layers=3, activation="relu", w_std=1.0, b_std=0.1, w_std_bounds=(1e-2, 1e2),
                 b_std_bounds=(1e-5, 1e2), architecture=None, input_shape=None):
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.w_std_bounds = w_std_bounds
        self.b_std_bounds = b_std_bounds
        self.architecture = architecture
        self.input_shape = input_shape

    # sklearn collects hyperparameters from the attributes named hyperparameter_*, in alphabetical order. A given
    # architecture carries its own w_std and b_std per layer, so the kernel then has no free hyperparameter.
    @property
    def hyperparameter_w_std(self):
        return Hyperparameter("w_std", "numeric", "fixed" if self.architecture is not None else self.w_std_bounds)

    @property
    def hyperparameter_b_std(self):
        return Hyperparameter("b_std", "numeric", "fixed" if self.architecture is not None else self.b_std_bounds)

    def _arch(self):
        return resolve_architecture(self.architecture, self.input_shape, self.hidden_layers, self.activation,
                                    self.w_std, self.b_std, type(self).__name__)

    def _check(self) -> None:
        name = type(self).__name__
        self._arch()
        for hyper in self.hyperparameters:
            # theta is log(value): a free hyperparameter at 0 would sit at log 0 = -inf
            if not hyper.fixed and getattr(self, hyper.name) <= 0:
                raise ValueError(f"{name}: {hyper.name} must be > 0 while it is a free hyperparameter (theta holds "
                                 f"its log); got {getattr(self, hyper.name)!r}. Use {hyper.name}_bounds='fixed' "
                                 "to keep it at 0.")


    def __call__(self, X, Y=None, eval_gradient=False):
        """k(X, Y), shape (n_X, n_Y); with ``eval_gradient`` (Y must be None) also ∂k/∂theta, (n_X, n_X, n_free)."""
        self._check()
        x = as_float64_inputs(X, "X", type(self).__name__)
        if eval_gradient:
            if Y is not None:
                raise ValueError("Gradient can only be evaluated when Y is None.")
            if self.architecture is not None:  # no free hyperparameters: the gradient has no columns
                return self(X), np.empty((x.shape[0], x.shape[0], 0))
            return self._value_and_gradient(x)
        y = None if Y is None else as_float64_inputs(Y, "Y", type(self).__name__)
        if y is not None and y.shape[1] != x.shape[1]:
            raise ValueError(f"X has {x.shape[1]} features but Y has {y.shape[1]}")
        owner = type(self).__name__
        x = shaped(x, self.input_shape, owner)
        y = None if y is None else shaped(y, self.input_shape, owner)
        value = self._arch().kernel(x, y, get=self.kind)[self.kind]
        return value.numpy()

    def _value_and_gradient(self, x: torch.Tensor):
        n0 = x.shape[1]
        gram = (x @ x.T) / n0
        sq = (x * x).sum(1) / n0
        gram.diagonal().copy_(sq)  # as arch.kernel: a point's self-correlation is exactly 1
        value, tangent = kernel_with_tangents(self._arch().flatten(), self.kind, gram, sq[:, None], sq[None, :],
                                              float(self.w_std), float(self.b_std), n0)
        # Mirror the upper triangle, as arch.kernel(X) does: the Gram product's rounding can differ between (i, j)
        # and (j, i), and a GP needs k(X, X) (and its derivatives) exactly symmetric.
        value, tangent = _mirror_upper(value), _mirror_upper(tangent)
        # overflow (huge w_std with many layers) must not reach the optimiser as NaN
        check_finite(value, f"{type(self).__name__} kernel value")
        check_finite(tangent, f"{type(self).__name__} kernel gradient")
        by_name = {"w_std": tangent[0], "b_std": tangent[1]}
        free = [by_name[h.name] for h in self.hyperparameters if not h.fixed]  # theta's order
        gradient = np.stack([g.numpy() for g in free], axis=-1) if free else np.empty((*value.shape, 0))
        return value.numpy(), gradient

    def diag(self, X):
        """k(x, x) for each row of X, (n_X,), from the N self-pairs (``arch.kernel_diagonal``), not the n_X² grid."""
        self._check()
        x = shaped(as_float64_inputs(X, "X", type(self).__name__), self.input_shape, type(self).__name__)
        return self._arch().kernel_diagonal(x, get=self.kind)[self.kind].numpy()

    def is_stationary(self):
        """False: the kernel depends on the inputs' norms and angle, not on x − x'."""
        return False

    def __repr__(self):
        if self.architecture is not None:
            return f"{type(self).__name__}(architecture={self.architecture!r}, input_shape={self.input_shape!r})"
        return (f"{type(self).__name__}(hidden_layers={self.hidden_layers}, activation={self.activation!r}, "
                f"w_std={self.w_std:.3g}, b_std={self.b_std:.3g})")


class NTK(_FullyConnectedKernel):
    r"""Infinite-width neural tangent kernel Θ of a fully-connected network, as a scikit-learn kernel.

    Θ is the limit of Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_p for ``nk.mlp(hidden_layers, width, activation=activation,
    w_std=w_std, b_std=b_std)`` in the NTK parameterisation (Jacot et al. 2018, Thm. 1):
    Dense: Σ ← w²K + b², Θ ← Σ + w²Θ; activation: K ← E[σ(u)σ(v)], Θ ← Θ·E[σ'(u)σ'(v)], from Σ⁽⁰⁾ = x·x'/n0.
    A GP with this kernel is the posterior of Lee et al. 2019's linearised network only for its mean at t = ∞;
    for a kernel machine use :class:`ntkit.sklearn.NTKRegressor`.

    Args:
        hidden_layers: number of activations (Jacot's L = hidden_layers + 1 weight layers).
        activation: a name from ``ntkit.layers.ACTIVATION_NAMES`` ("relu", "erf", "tanh", ...).
        w_std, b_std: weight and bias standard deviations (hyperparameters; theta holds their logs). The defaults
            1.0 and 0.1 are ``nk.mlp``'s (Jacot et al.'s β = 0.1); b_std must be > 0 while it is free, since
            log 0 = −∞ (``b_std_bounds="fixed"`` allows 0).
        w_std_bounds, b_std_bounds: (low, high) for the optimiser, or "fixed".
        architecture: any ntkit architecture (e.g. ``nk.myrtle(5)``, ``nk.cnn(3)``) instead of the MLP above;
            its layers carry their own w_std and b_std, so the kernel then has no free hyperparameters.
        input_shape: the per-sample shape rows of X are reshaped to, e.g. (1, 28, 28) for an image architecture.
    """

    kind = "ntk"


class NNGP(_FullyConnectedKernel):
    r"""Infinite-width NNGP kernel Σ of a fully-connected network, as a scikit-learn kernel.

    Σ(x, x') = lim E[f(x) f(x')] at initialisation for ``nk.mlp(hidden_layers, width, activation=activation,
    w_std=w_std, b_std=b_std)`` (Jacot et al. 2018, Prop. 1; Lee et al. 2018, eq. (4)): Dense: Σ ← w²K + b²;
    activation: K ← E[σ(u)σ(v)], from Σ⁽⁰⁾ = x·x'/n0. Exact Bayesian inference with it is Lee et al. 2018's NNGP.

    Args: as :class:`NTK`.
    """

    kind = "nngp"


def kernel_with_tangents(layers, kind: str, gram, var1, var2, w_std: float, b_std: float, in_features: int):
    r"""The kernel ``kind`` of a fully-connected ``layers`` on (gram, var1, var2), and its derivatives in log w_std
    and log b_std, where every Dense layer has that w_std and b_std.

    The derivatives are forward-mode AD (``torch.func.jvp``) of ``run_layers``, the recursion ``arch.kernel``
    evaluates: the Dense layers' w_std and b_std are swapped for 0-dim tensors, and a tangent of w along w gives
    w·∂k/∂w = ∂k/∂log w. The only rules AD cannot run through as written are the rectified duals' arccos at
    ρ = ±1, where ``ntkit.kernels.dual`` supplies the derivative (``_ArcCosine``); quadrature activations'
    Mehler series has no singularity (its rule size per variance is a step function of q and has no tangent).

    Args:
        layers: ``arch.flatten()`` of a fully-connected architecture (its Dense layers are restored afterwards).
        gram, var1, var2: Σ⁽⁰⁾ = x·x'/n0 on the wanted pairs and |x|²/n0 of both sides, broadcastable.
        in_features: n0, the width the first layer's rule sees.
    Returns:
        (value, tangent): value shaped like ``gram``; tangent (2, *gram.shape) = (∂/∂log w_std, ∂/∂log b_std).
    """
    dense = [layer for layer in layers if isinstance(layer, Dense)]

    def kernel_at(w, b):
        for layer in dense:
            layer.w_std, layer.b_std = w, b
        nngp, ntk = run_layers(layers, kind == "ntk", in_features, gram, var1, var2)
        return ntk if kind == "ntk" else nngp

    saved = [(layer.w_std, layer.b_std) for layer in dense]
    point = (torch.tensor(w_std, dtype=gram.dtype), torch.tensor(b_std, dtype=gram.dtype))
    try:
        value, d_log_w = jvp(kernel_at, point, (point[0], torch.zeros_like(point[1])))
        _, d_log_b = jvp(kernel_at, point, (torch.zeros_like(point[0]), point[1]))
    finally:
        for layer, (w, b) in zip(dense, saved):
            layer.w_std, layer.b_std = w, b
    return value, torch.stack([d_log_w, d_log_b])
