"""One batched pass that records, for every fast-path module, its inputs and the output cotangents ∂f_a/∂z.

Each fast module's output z is replaced by z + δ with δ a zero leaf tensor; then ∂f_a/∂δ = ∂f_a/∂z for every
sample at once (samples are independent, which ``probe.py`` checked), one backward pass per output a. Taking
gradients with respect to δ rather than z keeps them right when the model later modifies z in place
(``ReLU(inplace=True)``). No parameter gradient is formed: the parameters are detached constants here.
"""

from __future__ import annotations

import warnings

import torch

from .model_function import ModelFunction
from .probe import FastLayer

__all__ = ["capture_layers"]


def _record(layers: list[FastLayer], clone_inputs: bool):
    records = {id(layer.module): ([], []) for layer in layers}

    def hook(module, args, output):
        inputs, deltas = records[id(module)]
        a = args[0].detach()
        inputs.append((a.clone() if clone_inputs else a, a._version))
        delta = torch.zeros_like(output, requires_grad=True)
        deltas.append(delta)
        return output + delta

    return records, hook


def _cotangents(f: torch.Tensor, deltas: list[torch.Tensor]) -> list[torch.Tensor]:
    """∂f_a/∂δ for every δ and output a, each as an (n, O, *δ.shape[1:]) view.

    One backward pass vmapped over the O unit cotangents (``is_grads_batched``), which on CPU is 1.5-2x faster
    than O separate passes; if a backward formula cannot be batched, the O passes one by one.
    """
    n, outputs = f.shape
    if not deltas:
        return []
    if not f.requires_grad:  # no fast layer influences the output
        return [d.new_zeros(n, outputs, *d.shape[1:]) for d in deltas]
    seeds = torch.eye(outputs, dtype=f.dtype, device=f.device)[:, None, :].expand(outputs, n, outputs)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            grads = torch.autograd.grad(f, deltas, seeds, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
        return [torch.zeros(n, outputs, *d.shape[1:], dtype=d.dtype, device=d.device) if g is None
                else g.transpose(0, 1) for g, d in zip(grads, deltas)]
    except RuntimeError:
        pass
    per_output = []
    for a in range(outputs):
        grads = torch.autograd.grad(f, deltas, seeds[a], retain_graph=a < outputs - 1, allow_unused=True)
        per_output.append([torch.zeros_like(d) if g is None else g for g, d in zip(grads, deltas)])
    return [torch.stack([row[k] for row in per_output], 1) for k in range(len(deltas))]


def capture_layers(fn: ModelFunction, layers: list[FastLayer], x: torch.Tensor):
    """Run ``fn`` on the batch ``x``; return [(inputs, cotangents) per layer], each a list per call."""
    for clone_inputs in (False, True):
        records, hook = _record(layers, clone_inputs)
        handles = [layer.module.register_forward_hook(hook) for layer in layers]
        try:
            with torch.enable_grad():
                f = fn(x)
        finally:
            for handle in handles:
                handle.remove()
        # A captured input modified in place later in the forward (x += ...) no longer holds what the layer saw:
        # capture again, copying inputs.
        if clone_inputs or all(a._version == version for inputs, _ in records.values() for a, version in inputs):
            break
    for layer in layers:
        calls = len(records[id(layer.module)][0])
        if calls != len(layer.out_shapes):
            raise RuntimeError(f"module {layer.name!r} ran {calls} time(s) on this batch but {len(layer.out_shapes)} "
                               "time(s) when probed: its use depends on the data. Use method='jacobian'.")
    all_deltas = [d for layer in layers for d in records[id(layer.module)][1]]
    with torch.enable_grad():
        cots = _cotangents(f, all_deltas)
    out, k = [], 0
    for layer in layers:
        inputs = [a for a, _ in records[id(layer.module)][0]]
        calls = len(inputs)
        out.append((inputs, cots[k:k + calls]))
        k += calls
    return out
