r"""Layer normalisation over channels at each position, with its exact kernel.

In the infinite-width limit the channel statistics of a representation are deterministic: at position p of x the
mean square over channels is q(x, p) = K(x, x)[p, p], so normalising divides every entry of the covariance by
the two positions' norms (Xiao et al. 2020, "Disentangling trainability and generalization"; neural-tangents'
LayerNorm):

    K'[p, p'] = K[p, p'] / √(q(x, p) q(x', p')),        Θ'[p, p'] = Θ[p, p'] / √(q(x, p) q(x', p')).

With ``center=True`` the finite module also subtracts the channel mean; that mean vanishes in the limit only for
zero-mean representations, so ``center=True`` must follow a Dense/Conv layer (or a residual sum of them);
``center=False`` (RMS normalisation, the default) is exact after any layer. There are no affine parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_nonnegative_float
from ..kernels.dual import smallest_subnormal
from ..kernels.kernel import KernelState
from .base import Layer, Signature

__all__ = ["LayerNorm", "LayerNormModule"]


class LayerNormModule(nn.Module):
    """a / √(mean_c a² + eps) over the channel axis (1), after subtracting the channel mean when ``center``."""

    def __init__(self, center: bool, eps: float):
        super().__init__()
        self.center, self.eps = center, eps

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.center:
            a = a - a.mean(1, keepdim=True)
        return a * torch.rsqrt(a.pow(2).mean(1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"center={self.center}, eps={self.eps:g}"


class LayerNorm(Layer):
    """Normalise each position's channel vector to unit mean square (see the module docstring for the rule).

    Args:
        center: subtract the channel mean first (as ``nn.LayerNorm``); exact in the limit only on zero-mean
            (Gaussian) representations, so it must follow a Dense/Conv layer.
        eps: added to the mean square in the finite module (the limit uses eps = 0).
    """

    tile_cost = 3
    needs_variances = True
    mutates_input = True

    def __init__(self, center: bool = False, eps: float = 1e-5):
        if not isinstance(center, bool):
            raise TypeError(f"LayerNorm: center must be True or False; got {center!r}")
        self.center = center
        self.eps = check_nonnegative_float(eps, "LayerNorm: eps")

    def __repr__(self) -> str:
        return f"LayerNorm(center={self.center})"

    def infer(self, signature: Signature, where: str) -> Signature:
        if signature.channels < 2:
            raise ValueError(f"{where} normalises over channels but its input has {signature.channels} channel "
                             f"(shape {signature.shape}); it needs at least 2")
        if self.center and not signature.gaussian:
            raise ValueError(f"{where}: center=True is exact only on zero-mean (Dense/Conv) outputs; use "
                             "LayerNorm(center=False) here")
        return signature

    def build_module(self, in_shape, generator, dtype, device):
        return LayerNormModule(self.center, self.eps), in_shape

    @staticmethod
    def _inverse_root(q: torch.Tensor) -> torch.Tensor:
        # Clamped to the smallest subnormal, only so that q = 0 (whose covariances are 0) gives 0, not NaN: a
        # subnormal q is a variance like any other (see kernels.dual.smallest_subnormal).
        return torch.rsqrt(torch.clamp(q, min=smallest_subnormal(q.dtype)))

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        r1, r2 = self._inverse_root(state.var1), self._inverse_root(state.var2)
        # One factor at a time: r1·r2 alone overflows float32 for subnormal variances (q ~ 1e-44: r ~ 1e22) although
        # K·r1·r2 is O(1); K·r1 never does (|K| <= √q1·√q2).
        return state.replace(nngp=state.nngp * r1 * r2, ntk=state.ntk * r1 * r2 if need_ntk else None,
                             var1=state.var1 * r1 * r1, var2=state.var2 * r2 * r2)

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        r1, r2 = self._inverse_root(state.var1), self._inverse_root(state.var2)
        nngp = state.nngp.mul_(r1).mul_(r2)
        ntk = state.ntk.mul_(r1).mul_(r2) if need_ntk else None
        return state.replace(nngp=nngp, ntk=ntk)
