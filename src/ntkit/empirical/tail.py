r"""The model's linear read-out tail: cotangents every sample shares, computed once instead of n times.

Suppose the output is f = V_k L_k(⋯ V_1 L_1(u)), each L_j a fast-path ``nn.Linear``, ntkit ``DenseModule`` or
convolution of the model and each V_j a reshape that keeps every sample's values in its own row (``flatten(1)``).
These maps are linear with fixed coefficients and act on each sample alike, so the vjp of the unit seed e_a,
∂f_a/∂z_j at every L_j's output and ∂f_a/∂u at the tail's input, is the same for every sample. The capture
(``capture.py``) takes them from one sample's replay of the tail and starts the batched backward pass at u, so the
tail's layers run no backward pass over the batch: for the torch.func tutorial's CNN (the last convolution feeds a
Linear read-out directly) that is one of its two batched convolution backward passes. The layer rules receive
these cotangents as expanded views (stride 0 along the samples) and may use one product for all samples.

The tail is found from the tensors themselves, walking back from f: f must be (a row-keeping view of) a tail
layer's output, that layer's input (a view of) the next one's output, and so on; a layer qualifies only if it was
called once, neither its input nor its output was modified in place afterwards, and it is a Linear or convolution
(whose forward is the library's own: ``layerwise.find_rule``). Each step is a function of one tensor, so f depends
on everything before the tail through u alone, and the backward pass from u with ∂f_a/∂u is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from .layerwise import ConvRule, LinearRule
from .probe import FastLayer

__all__ = ["Call", "find_tail", "tail_cotangents", "batched_backward_flops", "MIN_SAVED_FLOPS"]

# The replay on one sample costs ~1 ms of dispatch (measured: 0.8 ms for an MLP's Linear read-out); below this
# many multiply-adds of batched backward pass saved, the full backward pass is taken.
MIN_SAVED_FLOPS = 1e8


@dataclass
class Call:
    """One call of a fast layer in the capture's forward pass."""

    layer: FastLayer
    input: torch.Tensor  # as the module received it, in the autograd graph
    saved_input: torch.Tensor  # detached; a copy where the forward later modifies the input in place
    output: torch.Tensor  # the module's output + δ, as handed back to the model
    delta: torch.Tensor
    input_version: int
    output_version: int
    tensors: dict[str, torch.Tensor]  # the module's own parameters and buffers during the call (the cast copies)


def _rows_of(view: torch.Tensor, base: torch.Tensor, n: int) -> bool:
    """True when ``view`` is ``base`` or a reshape of it that keeps sample i's values, in order, in row i."""
    if view is base:
        return True
    return (view._base is base and view.shape[0] == base.shape[0] == n and view.numel() == base.numel()
            and view.is_contiguous() and base.is_contiguous() and view.storage_offset() == base.storage_offset())


def _linear_in_input(call: Call) -> bool:
    return (isinstance(call.layer.rule, (LinearRule, ConvRule)) and len(call.layer.out_shapes) == 1
            and call.input._version == call.input_version and call.output._version == call.output_version)


def find_tail(calls: list[Call], f: torch.Tensor, n: int) -> tuple[list[Call], torch.Tensor] | None:
    """(the tail's calls from the output back, its input u), or None when the output is no fast layer's."""
    chain, current = [], f
    while True:
        call = next((c for c in calls if _rows_of(current, c.output, n)), None)
        if call is None or not _linear_in_input(call) or call in chain:
            break
        chain.append(call)
        current = call.input
    return (chain, current) if chain else None


def batched_backward_flops(chain: list[Call], outputs: int) -> int:
    """Multiply-adds of the tail's input gradients in the batched backward pass (what sharing saves): for each
    layer, O · n · (output elements per sample) · (weights per output channel)."""
    total = 0
    for call in chain:
        weight = call.tensors["weight"]
        total += outputs * call.output.numel() * (weight.numel() // weight.shape[0])
    return total


def tail_cotangents(chain: list[Call], u: torch.Tensor, f: torch.Tensor):
    """The tail replayed on the first sample: (∂f_a/∂u, [∂f_a/∂δ per call of ``chain``]), each (O, n, ...)
    expanded along the n samples; None if the replay does not reproduce f's first row (then the caller takes the
    full backward pass)."""
    n, outputs = f.shape
    start = u[:1].detach().requires_grad_()
    z, deltas = start, []
    with torch.enable_grad():
        for call in reversed(chain):
            out = functional_call(call.layer.module, call.tensors, (z.reshape(1, *call.input.shape[1:]),))
            delta = torch.zeros_like(out, requires_grad=True)
            deltas.append(delta)
            z = out + delta
        first = z.reshape(1, -1)
        scale = f[:1].detach().abs().amax().clamp_min(1.0)
        if first.shape != (1, outputs) or not torch.allclose(first.detach(), f[:1].detach(), rtol=0,
                                                             atol=float(1e3 * torch.finfo(f.dtype).eps * scale)):
            return None
        seeds = torch.eye(outputs, dtype=f.dtype, device=f.device)[:, None, :]
        grads = torch.autograd.grad(first, [start, *deltas], seeds, is_grads_batched=True, allow_unused=True)
    grads = [torch.zeros_like(t).expand(outputs, *t.shape) if g is None else g for g, t in zip(grads, [start, *deltas])]
    expanded = [g.expand(outputs, n, *g.shape[2:]) for g in grads]
    return expanded[0], list(reversed(expanded[1:]))
