r"""Residual connections: x + block(x), or shortcut(x) + block(x) (He et al. 2016), with their exact kernel.

When the block ends with a weight layer (Dense or Conv, or a pooling of one) its output is zero-mean given its
input, with weights independent of everything on the other branch, so the cross-covariance of the two branches
vanishes and the kernels add (Yang 2019, arXiv 1902.04760; neural-tangents' FanInSum after FanOut):

    Σ_out = Σ_block + Σ_shortcut,        Θ_out = Θ_block + Θ_shortcut,

with Σ_shortcut = Σ_in, Θ_shortcut = Θ_in for the identity shortcut.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.kernel import KernelState
from ..kernels.spatial import input_covariance, stronger_form
from .base import Layer, Serial, Signature, build_sequence, convert_form

__all__ = ["Residual", "ResidualModule"]


class ResidualModule(nn.Module):
    """block(x) + shortcut(x), the identity when ``shortcut`` is None."""

    def __init__(self, block: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + (x if self.shortcut is None else self.shortcut(x))


def _add(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.add_(b)
    return a + b


class Residual(Layer):
    """``Residual(*block, shortcut=None)``: block(x) + x, or block(x) + shortcut(x) (a projection, e.g. a 1×1 conv
    where the block changes the channels). The block must end with a Dense/Conv layer (or a pooling of one) so that
    its output is independent of the shortcut's; both branches must give the same shape."""

    def __init__(self, *block: Layer, shortcut: Layer | None = None):
        if not block:
            raise ValueError("Residual needs at least one layer in its block")
        self.block = Serial(*block)
        if shortcut is not None and not isinstance(shortcut, Layer):
            raise TypeError(f"Residual: shortcut must be an ntkit layer or None; got {type(shortcut).__name__}")
        self.shortcut = None if shortcut is None else (shortcut if isinstance(shortcut, Serial) else Serial(shortcut))

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.block.layers)
        extra = "" if self.shortcut is None else f", shortcut={self.shortcut!r}"
        return f"Residual({inner}{extra})"

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return self.block.fusable and (self.shortcut is None or self.shortcut.fusable)

    @property
    def tile_cost(self) -> int:  # type: ignore[override]
        costs = [layer.tile_cost for layer in self.block.flatten()]
        if self.shortcut is not None:
            costs += [layer.tile_cost for layer in self.shortcut.flatten()]
        return max(costs) + 3

    def infer(self, signature: Signature, where: str) -> Signature:
        block = self.block.infer(signature, f"{where}, block")
        if not block.gaussian:
            raise ValueError(f"{where}: the block must end with a Dense or Conv layer (or a pooling of one): only "
                             "then is its output independent of the shortcut's, so that the kernels add")
        short = signature if self.shortcut is None else self.shortcut.infer(signature, f"{where}, shortcut")
        if block.shape != short.shape:
            raise ValueError(f"{where}: the block gives shape {block.shape} but the shortcut gives {short.shape}; "
                             "pass shortcut= (e.g. a 1×1 Conv) to match them")
        return block.replace(gaussian=short.gaussian)

    def input_form(self, out_form: str) -> str:
        form = self.block.input_form(out_form)
        return stronger_form(form, out_form if self.shortcut is None else self.shortcut.input_form(out_form))

    def build_module(self, in_shape, generator, dtype, device):
        block, shape = build_sequence(self.block.flatten(), in_shape, generator, dtype, device)
        shortcut = None if self.shortcut is None else \
            build_sequence(self.shortcut.flatten(), in_shape, generator, dtype, device)[0]
        return ResidualModule(block, shortcut), shape

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        """Flat inputs: the flat engine's rules, variances propagated alongside."""
        branches = []
        in_place, state = state.in_place, state.replace(in_place=False)  # both branches read the same input tiles
        for path in (self.block, self.shortcut):
            out = state
            for layer in ([] if path is None else path.flatten()):
                out = layer.kernel_rule(out, need_ntk)
            branches.append(out)
        a, b = branches
        return a.replace(nngp=a.nngp + b.nngp, ntk=a.ntk + b.ntk if need_ntk else None, var1=a.var1 + b.var1,
                         var2=a.var2 + b.var2, gaussian=b.gaussian, in_place=in_place)

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        if state.nngp is None:  # the network starts with this block: both branches read the inputs' covariance
            x1, x2, aligned = state.inputs
            form = self.input_form(out_form)
            state = state.replace(nngp=input_covariance(x1, x2, form, aligned, state.scratch), form=form,
                                  inputs=None)
        block = self.block.spatial_rule(state.replace(owned=False), need_ntk, out_form)
        if self.shortcut is None:
            short = convert_form(state, out_form)
        else:
            short = self.shortcut.spatial_rule(state.replace(owned=False), need_ntk, out_form)
        result = block.replace(nngp=_add(block.nngp, short.nngp), ntk=_add(block.ntk, short.ntk) if need_ntk
                               else None, gaussian=short.gaussian)
        if state.scratch is not None and short is not state:
            state.scratch.give(short.nngp, short.ntk)
        return result
