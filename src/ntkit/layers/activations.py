r"""Elementwise activations: the finite module and the dual kernel, side by side.

An activation's kernel rule (Jacot et al. 2018, Prop. 1 and Thm. 1) maps the Gaussian pre-activation covariance
Σ on {x, x'} to

    K = E[σ(u)σ(v)],     Θ ← Θ · E[σ'(u)σ'(v)],     (u, v) ~ N(0, [[Σ(x,x), Σ(x,x')], [Σ(x,x'), Σ(x',x')]]),

and the diagonal variances to E[σ(u)²] by a 1-D rule. ``nk.Activation(fn)`` does this for any σ by Gauss–Hermite
quadrature and Mehler's series (:mod:`ntkit.kernels.quadrature`); the named subclasses use closed forms from
:mod:`ntkit.kernels.dual`.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int
from ..kernels import dual as duals
from ..kernels import dual_inplace
from ..kernels.kernel import KernelState
from ..kernels.cache import carries_derivatives, memoized
from ..kernels.quadrature import DEFAULT_DEGREE, derivative_by_autograd, dual_by_quadrature, variance_by_quadrature
from .base import Layer, Signature

__all__ = ["Activation", "ReLU", "LeakyReLU", "Abs", "Erf", "GELU", "Sin", "Cos", "Identity", "Tanh", "Sigmoid",
           "Softplus", "ElementwiseModule", "activation_from_name", "ACTIVATION_NAMES"]


def _identity(u):
    return u


def _tanh_derivative(u):
    return 1.0 - torch.tanh(u) ** 2


def _sigmoid_derivative(u):
    return torch.sigmoid(u) * torch.sigmoid(-u)


class ElementwiseModule(nn.Module):
    """``nn.Module`` applying an elementwise function (for σ that torch.nn has no module for)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.fn(u)

    def extra_repr(self) -> str:
        return self.name


class Activation(Layer):
    """Any elementwise activation σ, with its kernel by Gauss–Hermite quadrature (Mehler's series).

    Args:
        fn: elementwise torch function σ.
        derivative: σ' (default: autograd of ``fn``).
        degree: Gauss–Hermite points at unit variance. A pre-activation of variance q > 1 gets
            degree · 2^⌈log₂ q⌉ points (capped at ``ntkit.kernels.quadrature.MAX_RULE_POINTS``, with a warning
            giving the expected accuracy when that costs any), because σ(√q z) steepens with q and the error is a
            function of points / q. The rule is exact for polynomial σ of degree < points; each kernel entry costs
            at most ``points`` multiply-adds (Hermite coefficients per point, Mehler's series per pair). At the
            default 128, tanh's K and K̇ are accurate to 2e-11 relative in float64 for every variance q ≤ 16 and
            to 4e-8 at q = 30 (where the cap binds); float32 results are within float32 rounding.
        name: shown in reprs and error messages.
    """

    fusable = False  # the series loop is not an elementwise expression torch.compile should unroll
    needs_variances = True
    mutates_input = True  # dual_inplace may overwrite the covariance (and the NTK is scaled in place)
    # Temporaries of one tile: ρ, ρ², the two Horner accumulators, their products and sums, the outputs.
    tile_cost = 8

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], derivative: Callable | None = None, *,
                 degree: int = DEFAULT_DEGREE, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be a callable elementwise function; got {type(fn).__name__}")
        if derivative is not None and not callable(derivative):
            raise TypeError(f"derivative must be callable or None; got {type(derivative).__name__}")
        self.fn = fn
        self._given_derivative = derivative
        self.derivative = derivative if derivative is not None else derivative_by_autograd(fn)
        self.degree = check_positive_int(degree, "degree")
        self.name = name or getattr(fn, "__name__", "Activation")

    def __repr__(self) -> str:
        return f"Activation({self.name}, degree={self.degree})"

    # Architectures are pickled by scikit-learn (clone, joblib): the autograd derivative is a local closure, so it
    # is rebuilt on unpickling instead of stored. σ itself must be picklable (a torch function, not a lambda).
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("derivative")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        given = state["_given_derivative"]
        self.derivative = given if given is not None else derivative_by_autograd(self.fn)

    def module(self) -> nn.Module:
        return ElementwiseModule(self.fn, self.name)

    def build_module(self, in_shape, generator, dtype, device):
        return self.module(), in_shape

    def dual(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, derivative: bool = True):
        """(E[σ(u)σ(v)], E[σ'(u)σ'(v)] or None) for (u, v) ~ N(0, [[q1, c], [c, q2]])."""
        return dual_by_quadrature(self.fn, self.derivative, c, q1, q2, self.degree, derivative)

    def variance(self, q: torch.Tensor) -> torch.Tensor:
        """E[σ(u)²] for u ~ N(0, q)."""
        return variance_by_quadrature(self.fn, q, self.degree)

    def infer(self, signature: Signature, where: str) -> Signature:
        if not signature.gaussian:
            raise ValueError(
                f"{where} does not follow a Dense or Conv layer (it is first, after another activation, or after "
                "Flatten): an activation's kernel rule needs Gaussian pre-activations")
        return signature.replace(gaussian=False)

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        k, kdot = self.dual(state.nngp, state.var1, state.var2, derivative=need_ntk)
        return state.replace(nngp=k, ntk=state.ntk * kdot if need_ntk else None,
                             var1=self.variance(state.var1), var2=self.variance(state.var2), gaussian=False)

    def dual_inplace(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, derivative: bool = True,
                     scratch=None, self_pairs: bool = False):
        """``dual`` that may overwrite ``c`` and take buffers from the engine's ``scratch`` pool; same values.
        ``self_pairs``: ``c`` is a full-form state whose every pair is a point with itself (a hint)."""
        return self.dual(c, q1, q2, derivative)

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        # The spatial engine's tape supplies the variances before every layer, so none are propagated here. A state
        # that takes part in a derivative (inputs or hyperparameters with requires_grad) runs ``dual`` out of place:
        # the in-place rules write into out= buffers, which autograd cannot follow.
        if any(isinstance(t, torch.Tensor) and carries_derivatives(t) for t in (state.nngp, state.var1, state.var2)):
            k, kdot = self.dual(state.nngp, state.var1, state.var2, need_ntk)
        else:
            k, kdot = self.dual_inplace(state.nngp, state.var1, state.var2, need_ntk, state.scratch,
                                        self_pairs=state.self_pairs and state.form == "full")
        ntk = state.ntk.mul_(kdot) if need_ntk else None
        if state.scratch is not None:
            state.scratch.give(kdot)
        return state.replace(nngp=k, ntk=ntk, gaussian=False)


class _ClosedForm(Activation):
    """An activation whose dual kernel has a closed form; subclasses set ``_fn`` and implement ``dual``."""

    fusable = True
    tile_cost = 8

    def __init__(self, fn, name: str, degree: int = DEFAULT_DEGREE):
        super().__init__(fn, degree=degree, name=name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def variance(self, q):
        # The 2-D rule at ρ = 1: bitwise the same arithmetic as the diagonal of the grid, so that Σ(x, x) and
        # the propagated variance agree exactly and correlations of a point with itself stay exactly 1. Within one
        # kernel evaluation a block's variances are computed once per layer, not once per tile (coefficient_cache).
        return memoized(("variance", id(self)), q, lambda: self.dual(q, q, q, derivative=False)[0]).reshape(q.shape)

    def quadrature_dual(self, c, q1, q2, derivative: bool = True):
        """The same expectations by quadrature (what the closed form is tested against)."""
        return Activation.dual(self, c, q1, q2, derivative)

    # The in-place twin of ``dual`` in kernels.dual_inplace (bitwise its values), for the flat engine's eager tiles
    # (``KernelState.in_place``), set in the class that defines ``dual``; None: ``dual`` runs out of place.
    tile_rule = None

    def kernel_rule(self, state, need_ntk):
        rule = self._paired_tile_rule() if state.in_place else None
        if rule is None:
            return super().kernel_rule(state, need_ntk)
        k, kdot = rule(state.nngp, state.var1, state.var2, need_ntk, state.scratch, self_pairs=state.self_pairs)
        return self._in_place_state(state, need_ntk, k, kdot)

    def dual_inplace(self, c, q1, q2, derivative=True, scratch=None, self_pairs=False):
        # The convolutional engine's states: the tile rule where the variances span the state (they do for its
        # pair states), else ``dual``.
        rule = self._paired_tile_rule()
        if rule is None or torch.broadcast_shapes(q1.shape, q2.shape) != c.shape:
            return self.dual(c, q1, q2, derivative)
        return rule(c, q1, q2, derivative, scratch, self_pairs=self_pairs)

    def _paired_tile_rule(self):
        """``tile_rule`` of the class that defines this layer's ``dual``: a subclass's own ``dual`` runs as it is."""
        for owner in type(self).__mro__:
            if "dual" in owner.__dict__:
                rule = owner.__dict__.get("tile_rule")
                return rule.__func__ if isinstance(rule, staticmethod) else rule
        return None

    def _in_place_state(self, state, need_ntk, k, kdot):
        """The next state from an in-place tile rule's K (in the NNGP's storage) and K̇ (a scratch buffer)."""
        ntk = state.ntk.mul_(kdot) if need_ntk else None
        if need_ntk and state.scratch is not None:
            state.scratch.give(kdot)
        return state.replace(nngp=k, ntk=ntk, var1=self.variance(state.var1), var2=self.variance(state.var2),
                             gaussian=False)


class _Rectified(_ClosedForm):
    """σ(u) = a·u for u > 0, b·u for u < 0, with ``slopes`` = (a, b): the arc-cosine family of ``dual.rectified``."""

    slopes: tuple[float, float] = (1.0, 0.0)
    in_place_tile_cost = 3  # norm, K̇ and sin θ (kernels.dual_inplace.rectified_tile_)
    kinked = True  # θ = arccos ρ: float32 cannot resolve it near ρ = ±1 (kernels.near_parallel)

    def dual(self, c, q1, q2, derivative=True):
        return duals.rectified(c, q1, q2, *self.slopes, derivative)

    def dual_inplace(self, c, q1, q2, derivative=True, scratch=None, self_pairs=False):
        return dual_inplace.rectified_(c, q1, q2, *self.slopes, derivative, scratch, self_pairs)

    def kernel_rule(self, state, need_ntk):
        if not state.in_place:
            return super().kernel_rule(state, need_ntk)
        # The flat engine's eager tiles: in place, bitwise the values of ``dual`` (kernels.dual_inplace).
        k, kdot = dual_inplace.rectified_tile_(state.nngp, state.var1, state.var2, *self.slopes, need_ntk,
                                               state.scratch, near_parallel=state.near_parallel,
                                               self_pairs=state.self_pairs)
        return self._in_place_state(state, need_ntk, k, kdot)


class ReLU(_Rectified):
    """σ(u) = max(u, 0); arc-cosine kernel of degree 1 (Cho & Saul 2009)."""

    slopes = (1.0, 0.0)

    def __init__(self):
        super().__init__(torch.relu, "relu")

    def module(self):
        return nn.ReLU()


class LeakyReLU(_Rectified):
    """σ(u) = max(u, 0) + s·min(u, 0) with s = ``negative_slope``."""

    def __init__(self, negative_slope: float = 0.01):
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"negative_slope must be a real number; got {negative_slope!r}")
        if not math.isfinite(negative_slope):  # NaN would surface later as a kernel "overflow"
            raise ValueError(f"negative_slope must be a finite real number; got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.slopes = (1.0, self.negative_slope)
        super().__init__(partial(F.leaky_relu, negative_slope=self.negative_slope), "leaky_relu")

    def __repr__(self) -> str:
        return f"LeakyReLU({self.negative_slope:g})"

    def module(self):
        return nn.LeakyReLU(self.negative_slope)


class Abs(_Rectified):
    """σ(u) = |u|."""

    slopes = (1.0, -1.0)

    def __init__(self):
        super().__init__(torch.abs, "abs")

class Erf(_ClosedForm):
    """σ = erf; arcsine kernel (Williams 1997)."""

    def __init__(self):
        super().__init__(torch.erf, "erf")

    in_place_tile_cost = 5  # b, |c|, 4(b − |c|), m (then D) and 1 + 2(q1 + q2) (kernels.dual_inplace.erf_tile_)
    tile_rule = staticmethod(dual_inplace.erf_tile_)

    def dual(self, c, q1, q2, derivative=True):
        return duals.erf(c, q1, q2, derivative)


class GELU(_ClosedForm):
    """σ(u) = u Φ(u), the exact (erf) GELU, as ``nn.GELU(approximate='none')``."""

    def __init__(self):
        super().__init__(F.gelu, "gelu")

    in_place_tile_cost = 5  # b, |c|, b − |c| (then t, arctan t, r) and 1 + q1 + q2, m or c/(1+q1) (gelu_tile_)
    tile_rule = staticmethod(dual_inplace.gelu_tile_)

    def module(self):
        return nn.GELU()

    def dual(self, c, q1, q2, derivative=True):
        return duals.gelu(c, q1, q2, derivative)


class Sin(_ClosedForm):
    """σ = sin."""

    in_place_tile_cost = 6  # b (then e^{|c|−h}), |c|, b − |c|, e^{−|c|−h} and the expm1 branch's two (sin_tile_)
    tile_rule = staticmethod(dual_inplace.sin_tile_)

    def __init__(self):
        super().__init__(torch.sin, "sin")

    def dual(self, c, q1, q2, derivative=True):
        return duals.sin(c, q1, q2, derivative)


class Cos(_ClosedForm):
    """σ = cos."""

    in_place_tile_cost = 6  # as Sin's (kernels.dual_inplace.cos_tile_)
    tile_rule = staticmethod(dual_inplace.cos_tile_)

    def __init__(self):
        super().__init__(torch.cos, "cos")

    def dual(self, c, q1, q2, derivative=True):
        return duals.cos(c, q1, q2, derivative)


class Identity(_ClosedForm):
    """σ(u) = u (a deep linear network)."""

    def __init__(self):
        super().__init__(_identity, "identity")

    def module(self):
        return nn.Identity()

    def dual(self, c, q1, q2, derivative=True):
        return duals.identity(c, q1, q2, derivative)


class Tanh(Activation):
    """σ = tanh, by quadrature (no closed form), with σ' = 1 - tanh²."""

    def __init__(self, degree: int = DEFAULT_DEGREE):
        super().__init__(torch.tanh, _tanh_derivative, degree=degree, name="tanh")

    def module(self):
        return nn.Tanh()


class Sigmoid(Activation):
    """σ = logistic sigmoid, by quadrature, with σ' = s(1 - s)."""

    def __init__(self, degree: int = DEFAULT_DEGREE):
        super().__init__(torch.sigmoid, _sigmoid_derivative, degree=degree,
                         name="sigmoid")

    def module(self):
        return nn.Sigmoid()


class Softplus(Activation):
    """σ(u) = log(1 + eᵘ), by quadrature, with σ' = sigmoid."""

    def __init__(self, degree: int = DEFAULT_DEGREE):
        super().__init__(F.softplus, torch.sigmoid, degree=degree, name="softplus")

    def module(self):
        return nn.Softplus()


_BY_NAME = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "abs": Abs, "erf": Erf, "gelu": GELU, "sin": Sin, "cos": Cos,
    "identity": Identity, "linear": Identity, "tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus,
}
ACTIVATION_NAMES = tuple(_BY_NAME)


def activation_from_name(activation: str | Activation) -> Activation:
    """An activation instance from a name such as "relu" (case-insensitive) or an instance itself."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower().replace("-", "_")
        if key in _BY_NAME:
            return _BY_NAME[key]()
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATION_NAMES)} "
                         f"or pass nk.Activation(fn)")
    raise TypeError(f"activation must be a name or an nk activation instance; got {type(activation).__name__}")
