r"""Pooling and readouts of spatial representations: the finite module and the exact rule side by side.

* AvgPool (Novak et al. 2019, §2.2; DESIGN.md) averages a window on each side independently:
  Σ'[p, p'] = (1/k²) Σ_{d, d' ∈ window} K[p·s + d, p'·s + d'] (per axis; padding zeros counted, like torch's
  ``count_include_pad=True``). It mixes positions, so it needs the full covariance of its input.
* GlobalAvgPool averages all positions of both sides: Σ' = (1/|S|²) Σ_{p, p'} K[p, p'] (the CNTK-GAP readout of
  Arora et al. 2019); it needs the full covariance too.
* Flatten followed by Dense has fan-in C·|S|, so the Dense layer sees the diagonal's average
  (1/|S|) Σ_p K[p, p] (the CNN-GP readout of Novak et al. 2019): a Flatten readout needs only the diagonal.
Averages are linear maps of Gaussian processes, so AvgPool and GlobalAvgPool outputs stay Gaussian (an activation
may follow them); Flatten's flat kernel keeps only the average variance, so an activation goes before it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels.kernel import KernelState
from ..kernels.spatial import diagonal, window_sum
from .base import Layer, Signature
from .conv import _per_axis

__all__ = ["AvgPool1d", "AvgPool2d", "GlobalAvgPool", "Flatten", "GlobalAvgPoolModule"]


def _mean_positions(t, spatial_axes: int):
    return t if not isinstance(t, torch.Tensor) else t.mean(tuple(range(2, 2 + spatial_axes)))


def _needs_spatial(signature: Signature, where: str, dims: int | None) -> None:
    if not signature.spatial:
        raise ValueError(f"{where} needs a spatial input but receives flat shape {signature.shape} per sample "
                         "(it comes after a Flatten, a global pooling, or flat (N, d) inputs)")
    if dims is not None and len(signature.spatial) != dims:
        raise ValueError(f"{where} expects {dims} spatial axes but receives shape {signature.shape} per sample")


class _AvgPool(Layer):
    dims = 0
    tile_cost = 3

    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = _per_axis(kernel_size, self.dims, f"{name}: kernel_size")
        self.stride = self.kernel_size if stride is None else _per_axis(stride, self.dims, f"{name}: stride")
        values = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,) * self.dims
        if len(values) != self.dims or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"{name}: padding must be a non-negative int or {self.dims} of them; got {padding!r}")
        if any(2 * p > k for p, k in zip(values, self.kernel_size)):
            raise ValueError(f"{name}: padding {values} must be at most half of kernel_size {self.kernel_size} "
                             "(torch's rule for average pooling)")
        self.padding = values

    def __repr__(self) -> str:
        k = self.kernel_size[0] if len(set(self.kernel_size)) == 1 else self.kernel_size
        extra = "" if self.stride == self.kernel_size else f", stride={self.stride}"
        extra += "" if not any(self.padding) else f", padding={self.padding}"
        return f"{type(self).__name__}({k}{extra})"

    def _output(self, spatial):
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial, self.kernel_size, self.stride,
                                                                    self.padding))

    def infer(self, signature: Signature, where: str) -> Signature:
        _needs_spatial(signature, where, self.dims)
        out = self._output(signature.spatial)
        for axis, (n, size) in enumerate(zip(signature.spatial, out)):
            if size < 1:
                raise ValueError(f"{where}: kernel_size {self.kernel_size[axis]} is larger than the input ({n} "
                                 f"along spatial axis {axis})")
        return signature.replace(spatial=out)

    def build_module(self, in_shape, generator, dtype, device):
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d}[self.dims]
        module = pool(self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return module, (in_shape[0], *self._output(tuple(in_shape[1:])))

    def input_form(self, out_form: str) -> str:
        return "full"

    def _pool(self, t, scratch):
        if not isinstance(t, torch.Tensor):
            return t
        scale, source = 1.0 / math.prod(self.kernel_size) ** 2, t
        for axis, (k, s, p) in enumerate(zip(self.kernel_size, self.stride, self.padding)):
            for dim in (2 + axis, 2 + self.dims + axis):  # each side's window independently
                summed = window_sum(t, dim, k, s, (p, p), scale, scratch)
                if t is not source and scratch is not None:
                    scratch.give(t)
                t, scale = summed, 1.0
        return t

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        nngp = self._pool(state.nngp, state.scratch)
        ntk = self._pool(state.ntk, state.scratch) if need_ntk else None
        form = "full"
        if out_form == "diagonal":
            nngp = diagonal(nngp, self.dims).contiguous()
            ntk = diagonal(ntk, self.dims).contiguous() if isinstance(ntk, torch.Tensor) else ntk
            form = "diagonal"
        return state.replace(nngp=nngp, ntk=ntk, form=form, spatial=self._output(state.spatial))


class AvgPool1d(_AvgPool):
    """Average pooling of (N, C, L) sequences, as ``nn.AvgPool1d(kernel_size, stride, padding)``
    (stride defaults to kernel_size; padding zeros count in the average)."""

    dims = 1


class AvgPool2d(_AvgPool):
    """Average pooling of (N, C, H, W) images, as ``nn.AvgPool2d(kernel_size, stride, padding)``
    (stride defaults to kernel_size; padding zeros count in the average)."""

    dims = 2


class GlobalAvgPoolModule(nn.Module):
    """(N, C, *S) -> (N, C): the mean over all positions."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.mean(tuple(range(2, a.ndim)))


class GlobalAvgPool(Layer):
    """Mean over all positions, (N, C, *S) -> (N, C); rule Σ' = (1/|S|²) Σ_{p, p'} K[p, p'] (full input)."""

    tile_cost = 1

    def infer(self, signature: Signature, where: str) -> Signature:
        _needs_spatial(signature, where, None)
        return signature.replace(spatial=())

    def build_module(self, in_shape, generator, dtype, device):
        return GlobalAvgPoolModule(), (in_shape[0],)

    def input_form(self, out_form: str) -> str:
        return "full"

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        axes = 2 * len(state.spatial)
        return state.replace(nngp=_mean_positions(state.nngp, axes),
                             ntk=_mean_positions(state.ntk, axes) if need_ntk else None, form="flat", spatial=())


class Flatten(Layer):
    """(N, C, *S) -> (N, C·|S|) as ``nn.Flatten()``; with the next Dense's fan-in C·|S| its rule is the average of
    the diagonal, (1/|S|) Σ_p K[p, p] (a Flatten readout needs only the diagonal). Identity on flat inputs."""

    tile_cost = 1

    def infer(self, signature: Signature, where: str) -> Signature:
        if not signature.spatial:
            return signature
        return Signature(signature.channels * math.prod(signature.spatial), (), gaussian=False)

    def build_module(self, in_shape, generator, dtype, device):
        return nn.Flatten(), (math.prod(in_shape),)

    def input_form(self, out_form: str) -> str:
        return "diagonal"

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        if state.form == "flat":
            return state
        axes = len(state.spatial)
        return state.replace(nngp=_mean_positions(state.nngp, axes),
                             ntk=_mean_positions(state.ntk, axes) if need_ntk else None, form="flat", spatial=(),
                             width=state.width * math.prod(state.spatial), gaussian=False)
