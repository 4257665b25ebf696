r"""Convolutions: the finite module and the exact kernel rule side by side (Novak et al. 2019; Arora et al. 2019).

NTK parameterisation (DESIGN.md): z = (w_std / √(C_in·k)) W ⋆ a + b_std b with W, b ~ N(0, 1) and k the filter's
number of taps. Its rule on the covariance of positions (Novak et al. 2019, eq. (7); Arora et al. 2019, §4):

    Σ'[p, p'] = w_std² · (1/k) Σ_{d ∈ window} K[p·s + d, p'·s + d] + b_std²,      Θ' = Σ' + w_std² · (the same sum of Θ)

with the same tap d on both sides: a box filter along the diagonal of each (s, s') plane of the full state, or a
plain box filter of the diagonal state. Zero padding pads K with zeros that count in the 1/k average, exactly as
the finite network's zero padding does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_nonnegative_float, check_positive_int
from ..kernels.kernel import KernelState
from ..kernels.scratch import empty, out_buffer
from ..kernels.spatial import diagonal_window_sum, input_covariance, window_sum
from .base import Layer, Signature
from .dense import PARAMETERIZATIONS

__all__ = ["Conv1d", "Conv2d", "ConvModule", "resolve_padding"]

_CONV = {1: F.conv1d, 2: F.conv2d}


def _per_axis(value, dims: int, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims
    if len(values) != dims:
        raise ValueError(f"{name} must be an int or a tuple of {dims} ints; got {value!r}")
    return tuple(check_positive_int(v, name) for v in values)


def resolve_padding(padding, size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(left, right) zeros for one axis. "same": out = ⌈size/stride⌉ with the extra zero on the right (TensorFlow's
    and torch's rule); "valid": none; an int p: p on both sides."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    if padding == "valid":
        return 0, 0
    return padding, padding


def _output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


class ConvModule(nn.Module):
    """z = weight_scale · (W ⋆ pad(a)) + bias_scale · b, W of shape (C_out, C_in, *kernel), b of shape (C_out,).

    NTK parameterisation: W, b ~ N(0, 1), weight_scale = w_std/√(C_in·k), bias_scale = b_std; standard: W ~ N(0,
    w_std²/(C_in·k)), b ~ N(0, b_std²), both scales 1. ``padding`` holds (left, right) per axis, applied as zeros
    before a stride-s convolution (so "same" works with any stride)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, ...], padding, weight_scale: float,
                 bias_scale: float):
        super().__init__()
        self.dims = weight.ndim - 2
        self.in_channels, self.out_channels = weight.shape[1], weight.shape[0]
        self.kernel_size, self.stride, self.padding = tuple(weight.shape[2:]), tuple(stride), tuple(padding)
        self.weight_scale, self.bias_scale = float(weight_scale), float(bias_scale)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        # F.pad lists the last axis first.
        self._pad = [side for pair in reversed(self.padding) for side in pair]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.ndim != self.dims + 2 or a.shape[1] != self.in_channels:
            raise ValueError(f"ConvModule expects inputs (N, {self.in_channels}, {', '.join('*' * self.dims)}); got "
                             f"shape {tuple(a.shape)}")
        if any(self._pad):
            a = F.pad(a, self._pad)
        z = _CONV[self.dims](a, self.weight, stride=self.stride) * self.weight_scale
        return z + (self.bias * self.bias_scale).reshape(-1, *([1] * self.dims))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, weight_scale={self.weight_scale:.4g}, bias_scale={self.bias_scale:.4g}")


class _Conv(Layer):
    dims = 0
    tile_cost = 3
    reads_inputs = True

    def __init__(self, out_channels: int, kernel_size=3, stride=1, padding="same", w_std: float = 1.0,
                 b_std: float = 0.0, parameterization: str = "ntk"):
        name = type(self).__name__
        self.out_channels = check_positive_int(out_channels, f"{name}: out_channels")
        self.kernel_size = _per_axis(kernel_size, self.dims, f"{name}: kernel_size")
        self.stride = _per_axis(stride, self.dims, f"{name}: stride")
        values = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,) * self.dims
        if len(values) != self.dims or not all(v in ("same", "valid") if isinstance(v, str) else
                                               isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in values):
            raise ValueError(f"{name}: padding must be 'same', 'valid' or a non-negative int (or {self.dims} of "
                             f"them); got {padding!r}")
        self.padding = values
        self.w_std = check_nonnegative_float(w_std, f"{name}: w_std")
        self.b_std = check_nonnegative_float(b_std, f"{name}: b_std")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"{name}: parameterization must be one of {PARAMETERIZATIONS}; got "
                             f"{parameterization!r}")
        self.parameterization = parameterization

    def __repr__(self) -> str:
        k = self.kernel_size[0] if len(set(self.kernel_size)) == 1 else self.kernel_size
        s = "" if set(self.stride) == {1} else f", stride={self.stride}"
        p = self.padding[0] if len(set(self.padding)) == 1 else self.padding
        extra = "" if self.parameterization == "ntk" else f", parameterization={self.parameterization!r}"
        return (f"{type(self).__name__}({self.out_channels}, {k}{s}, padding={p!r}, w_std={self.w_std:g}, "
                f"b_std={self.b_std:g}{extra})")

    def _pads(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        return [resolve_padding(p, n, k, s) for p, n, k, s in zip(self.padding, spatial, self.kernel_size,
                                                                    self.stride)]

    def infer(self, signature: Signature, where: str) -> Signature:
        if len(signature.spatial) != self.dims:
            layout = {1: "(N, C, L)", 2: "(N, C, H, W)"}[self.dims]
            raise ValueError(f"{where} expects {self.dims} spatial axes (inputs {layout}) but receives shape "
                             f"{signature.shape} per sample" + (" (it comes after a Flatten or global pooling)"
                                                                if not signature.spatial else ""))
        out = []
        for axis, (n, k, s, pad) in enumerate(zip(signature.spatial, self.kernel_size, self.stride,
                                                  self._pads(signature.spatial))):
            size = _output_size(n, k, s, pad)
            if size < 1:
                raise ValueError(f"{where}: kernel_size {k} is larger than the input ({n} along spatial axis "
                                 f"{axis}) with padding={self.padding[axis]!r}")
            out.append(size)
        return Signature(self.out_channels, tuple(out), gaussian=True)

    def build_module(self, in_shape, generator, dtype, device):
        channels, spatial = in_shape[0], tuple(in_shape[1:])
        taps = math.prod(self.kernel_size)
        weight = torch.randn(self.out_channels, channels, *self.kernel_size, generator=generator, dtype=torch.float64)
        bias = torch.randn(self.out_channels, generator=generator, dtype=torch.float64)
        if self.parameterization == "ntk":
            weight_scale, bias_scale = self.w_std / math.sqrt(channels * taps), self.b_std
        else:
            weight.mul_(self.w_std / math.sqrt(channels * taps))
            bias.mul_(self.b_std)
            weight_scale, bias_scale = 1.0, 1.0
        module = ConvModule(weight.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype), self.stride,
                            self._pads(spatial), weight_scale, bias_scale)
        out = self.infer(Signature(channels, spatial), "")
        return module, out.shape

    def _box(self, t: torch.Tensor, state: KernelState, pads, scale: float) -> torch.Tensor:
        """scale · Σ_d t[p·s + d, p'·s + d]: one separable pass per spatial axis."""
        dims, source = len(state.spatial), t
        for axis, (k, s, pad) in enumerate(zip(self.kernel_size, self.stride, pads)):
            factor = scale if axis == 0 else 1.0
            if state.form == "full":
                summed = diagonal_window_sum(t, (2 + axis, 2 + dims + axis), k, s, pad, factor, state.scratch)
            else:
                summed = window_sum(t, 2 + axis, k, s, pad, factor, state.scratch)
            if t is not source and state.scratch is not None:
                state.scratch.give(t)  # the previous axis's partial sum
            t = summed
        return t

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(t, C, *S) -> (t, C·k, *S_out): each output position's zero-padded input window as channels."""
        pads = self._pads(tuple(x.shape[2:]))
        x = F.pad(x, [side for pair in reversed(pads) for side in pair])
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            x = x.unfold(2 + axis, k, s)  # (t, C, O₁, ..., k₁, ...): window taps appended at the end
        order = [0, 1, *range(2 + self.dims, 2 + 2 * self.dims), *range(2, 2 + self.dims)]
        x = x.permute(order)
        return x.reshape(x.shape[0], -1, *x.shape[2 + self.dims:])

    def input_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        """A first conv reads Σ⁽⁰⁾'s window sums straight from the inputs: (1/k) Σ_d Σ⁽⁰⁾[p·s + d, p'·s + d] is
        the covariance of the C·k-channel patches, one matrix product with k times the channels instead of a
        covariance of positions followed by its box filter (exactly the same sum)."""
        x1, x2, aligned = state.inputs
        patches1 = self._patches(x1)
        patches2 = patches1 if x2 is x1 else self._patches(x2)
        cov = input_covariance(patches1, patches2, state.form, aligned, state.scratch)  # box average of Σ⁽⁰⁾
        ntk = None
        if need_ntk and self.parameterization == "standard":
            ntk = torch.mul(cov, state.width * math.prod(self.kernel_size),
                            out=out_buffer(state.scratch, cov.shape, cov, cov))
            ntk.add_(1.0)
        nngp = cov.mul_(self.w_std ** 2).add_(self.b_std ** 2)
        if need_ntk and ntk is None:
            ntk = empty(state.scratch, nngp.shape, nngp).copy_(nngp)
        return state.replace(nngp=nngp, ntk=ntk, width=self.out_channels, gaussian=True,
                             spatial=tuple(patches1.shape[2:]), inputs=None)

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        pads = self._pads(state.spatial)
        scale = self.w_std ** 2 / math.prod(self.kernel_size)
        standard = need_ntk and self.parameterization == "standard"
        # NTK parameterisation: Σ' = scale·box(K) + b², Θ' = Σ' + scale·box(Θ). Standard: Θ' gets C_in·box(K) + 1
        # instead of Σ' (gradients of W carry C_in·k input products, k of them in the box sum; see nk.Dense).
        box_k = self._box(state.nngp, state, pads, 1.0 if standard else scale)
        ntk = None
        if standard:
            ntk = torch.mul(box_k, state.width, out=out_buffer(state.scratch, box_k.shape, box_k, box_k))
            ntk.add_(1.0)
            box_k.mul_(scale)
        nngp = box_k.add_(self.b_std ** 2)  # in place: the box sum is this rule's own tensor
        if need_ntk:
            box_theta = self._box(state.ntk, state, pads, scale) if isinstance(state.ntk, torch.Tensor) else None
            if ntk is None:
                ntk = empty(state.scratch, nngp.shape, nngp).copy_(nngp) if box_theta is None else box_theta.add_(nngp)
            elif box_theta is not None:
                ntk.add_(box_theta)
        spatial = tuple(_output_size(n, k, s, pad) for n, k, s, pad in zip(state.spatial, self.kernel_size,
                                                                             self.stride, pads))
        return state.replace(nngp=nngp, ntk=ntk, width=self.out_channels, gaussian=True, spatial=spatial)


class Conv1d(_Conv):
    """1-D convolution over (N, C, L) sequences; see the module docstring for the parameterisation and rule.

    Args:
        out_channels: output channels (the width of this layer; the NTK-parameterisation limit does not depend
            on it).
        kernel_size: taps k; stride: s; padding: "same" (output ⌈L/s⌉, zeros counted in the average), "valid"
            or an int of zeros on each side.
        w_std, b_std: weight and bias standard deviations; parameterization: "ntk" or "standard".
    """

    dims = 1


class Conv2d(_Conv):
    """2-D convolution over (N, C, H, W) images; kernel_size, stride and padding take an int or a pair.
    See :class:`Conv1d` for the arguments and the module docstring for the rule."""

    dims = 2
