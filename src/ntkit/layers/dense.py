"""Fully-connected layer: the finite module and its kernel rule side by side."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_nonnegative_float, check_positive_int
from ..kernels.kernel import KernelState
from ..kernels.scratch import empty
from .base import Layer, Signature

__all__ = ["Dense", "DenseModule", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("ntk", "standard")


class DenseModule(nn.Module):
    """z = weight_scale · a Wᵀ + bias_scale · b, with trainable W (out, in) and b (out,).

    NTK parameterisation (Jacot et al. 2018, eq. (1)): W, b ~ N(0, 1), weight_scale = w_std/√n_in,
    bias_scale = b_std. Standard parameterisation: W ~ N(0, w_std²/n_in), b ~ N(0, b_std²), both scales 1.
    The scales are plain floats (not parameters), so gradients are taken with respect to W and b only; the
    empirical NTK reads them to use its layerwise fast path.
    """

    def __init__(self, in_features: int, out_features: int, weight_scale: float, bias_scale: float,
                 weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_scale = float(weight_scale)
        self.bias_scale = float(bias_scale)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.shape[-1] != self.in_features:
            raise ValueError(f"DenseModule expects inputs with {self.in_features} features; got shape "
                             f"{tuple(a.shape)}")
        return torch.nn.functional.linear(a, self.weight) * self.weight_scale + self.bias * self.bias_scale

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_scale={self.weight_scale:.4g}, bias_scale={self.bias_scale:.4g}")


class Dense(Layer):
    r"""Fully-connected layer z = (w_std/√n) W a + b_std b (NTK parameterisation, the default).

    Kernel rule (Jacot et al. 2018, Prop. 1 and Thm. 1), with K the input kernel of this layer:
        NTK param.:       Σ = w_std² K + b_std²,   Θ = Σ + w_std² Θ_in
        standard param.:  Σ = w_std² K + b_std²,   Θ = n_in K + 1 + w_std² Θ_in
    The standard-parameterisation NTK is the expected NTK at initialisation for the described widths (the
    convention of neural-tangents, Sohl-Dickstein et al. 2020): gradients with respect to W carry a_j(x) a_j(x')
    summed over the n_in inputs, so it grows with width instead of converging; its bias is always trainable
    (contributing 1), even with b_std = 0.

    Args:
        out_features: number of output units (the width of this layer).
        w_std: weight standard deviation σ_w (> 0 makes the layer random; 0 is allowed and gives a constant).
        b_std: bias standard deviation, Jacot's β.
        parameterization: "ntk" or "standard".
    """

    tile_cost = 3
    in_place_tile_cost = 0  # scales the tiles it is given; the first layer's NTK is one of the engine's 4 copies

    def __init__(self, out_features: int, w_std: float = 1.0, b_std: float = 0.0, parameterization: str = "ntk"):
        self.out_features = check_positive_int(out_features, "out_features")
        self.w_std = check_nonnegative_float(w_std, "w_std")
        self.b_std = check_nonnegative_float(b_std, "b_std")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")
        self.parameterization = parameterization

    def __repr__(self) -> str:
        extra = "" if self.parameterization == "ntk" else f", parameterization={self.parameterization!r}"
        return f"Dense({self.out_features}, w_std={self.w_std:g}, b_std={self.b_std:g}{extra})"

    def build_module(self, in_shape, generator, dtype, device):
        in_features = in_shape[0]
        # Drawn in float64 on the CPU, then cast and moved: one seed gives the same network in every dtype/device.
        weight = torch.randn(self.out_features, in_features, generator=generator, dtype=torch.float64)
        bias = torch.randn(self.out_features, generator=generator, dtype=torch.float64)
        if self.parameterization == "ntk":
            weight_scale, bias_scale = self.w_std / math.sqrt(in_features), self.b_std
        else:
            weight.mul_(self.w_std / math.sqrt(in_features))
            bias.mul_(self.b_std)
            weight_scale, bias_scale = 1.0, 1.0
        module = DenseModule(in_features, self.out_features, weight_scale, bias_scale,
                             weight.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype))
        return module, (self.out_features,)

    def infer(self, signature: Signature, where: str) -> Signature:
        if signature.spatial:
            raise ValueError(f"{where} needs a flat input but receives shape {signature.shape}: put nk.Flatten() "
                             "or nk.GlobalAvgPool() before it")
        return Signature(self.out_features, (), gaussian=True)

    def input_form(self, out_form: str) -> str:
        return "flat"

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        w2, b2 = self.w_std ** 2, self.b_std ** 2
        if state.in_place and self.parameterization == "ntk":
            # The same operations in place on the engine's tiles (kernel.KernelState.in_place): same values.
            nngp = state.nngp.mul_(w2).add_(b2)
            ntk = None
            if need_ntk and isinstance(state.ntk, torch.Tensor):
                ntk = state.ntk.mul_(w2).add_(nngp)
            elif need_ntk:  # before the first weight layer the NTK is the float 0.0: a pooled buffer for it
                ntk = torch.add(nngp, w2 * state.ntk, out=empty(state.scratch, nngp.shape, nngp))
            return state.replace(nngp=nngp, ntk=ntk, var1=w2 * state.var1 + b2, var2=w2 * state.var2 + b2,
                                 width=self.out_features, gaussian=True)
        nngp = w2 * state.nngp + b2
        ntk = None
        if need_ntk:
            if self.parameterization == "ntk":
                ntk = nngp + w2 * state.ntk
            else:
                ntk = state.width * state.nngp + 1.0 + w2 * state.ntk
        var1, var2 = state.var1, state.var2
        if var1 is not None:  # the flat engine propagates variances; the spatial engine's tape supplies them
            var1, var2 = w2 * var1 + b2, w2 * var2 + b2
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, width=self.out_features, gaussian=True)
