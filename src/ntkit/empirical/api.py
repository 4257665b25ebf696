r"""``nk.empirical_ntk`` and ``nk.empirical_nngp``: finite-width kernels of any ``torch.nn.Module``."""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils._pytree import tree_leaves

from .blocks import assemble, plan_blocks
from .checks import (check_batch_size, check_max_memory, check_method, check_model, check_output, check_output_fn,
                     check_result_finite, compute_dtype, model_inputs, without_inference_tensors)
from .features import merge_features, slice_features
from .memory import Cost, memory_budget, plan_chunks
from .methods import JacobianMethod, LayerwiseMethod, VectorProductMethod
from .model_function import ModelFunction
from .probe import probe_model
from .trees import batch_size as _batch_size, take

__all__ = ["empirical_ntk", "empirical_nngp"]


# Split symmetric work into finer blocks when the contraction costs at least this many multiply-adds (~5 ms on
# 2 CPU cores); below it the per-block overhead outweighs the saving.
_SPLIT_MIN_FLOPS = 5e8


def _result_shape(n1: int, n2: int, outputs: int, mode: str) -> tuple[int, ...]:
    return {"full": (n1, n2, outputs, outputs), "trace": (n1, n2), "diagonal": (n1, n2, outputs)}[mode]


@contextlib.contextmanager
def _autograd_enabled():
    """Gradients on, also inside a caller's ``torch.no_grad()`` or ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _prepare(model, x1, x2, output_fn):
    """Checked inputs and the model as a function. Called outside inference mode: casts made under
    ``torch.inference_mode()`` would be inference tensors, which autograd cannot save, so the inputs' and the
    parameters' copies are made here as normal tensors."""
    check_model(model)
    check_output_fn(output_fn)
    if x2 is x1:  # the same tensor: compute each symmetric block once
        x2 = None
    x1, x2 = model_inputs(x1, x2)
    x1 = without_inference_tensors(x1)
    x2 = None if x2 is None else without_inference_tensors(x2)
    fn = ModelFunction(model, compute_dtype(model, x1), tree_leaves(x1)[0].device, output_fn)
    return fn, x1, x2


def empirical_ntk(model, x1, x2=None, *, output: str = "full", method: str = "auto", batch_size: int | None = None,
                  max_memory: int | float | None = None, progress: bool | None = None,
                  output_fn=None) -> torch.Tensor:
    r"""The empirical (finite-width) NTK of any ``torch.nn.Module`` at its current parameters.

        Θ(x, x')_ab = Σ_p ∂f_a(x)/∂θ_p · ∂f_b(x')/∂θ_p        (Jacot, Gabriel & Hongler 2018)

    over the trainable parameters θ (``requires_grad=False`` ones are excluded); f(x) is the model's output for
    the single sample x, flattened to O values. Under gradient descent with learning rate η on the cost
    C = ½ E_{p_in}‖f − y‖² over N points, f moves as ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j).

    Several outputs: a model (or ``output_fn``) returning a tuple, list, dict or namedtuple of tensors, nested or
    not, each (N, ...), has f(x) = [f_1(x), f_2(x), ...], each tensor flattened per sample (row-major) and the
    tensors concatenated in ``torch.utils._pytree`` order: depth first, sequences by position, dicts in insertion
    order (not sorted), namedtuples by field; ``None`` entries are skipped. So ``(out, weights)`` gives O =
    O_out + O_weights with out's outputs first, and Θ's blocks Θ[..., :O_out, :O_out] are out's own NTK.
    Several inputs: x1 = (a, b) is called as model(a, b), x1 = {"a": a, "b": b} as model(a=a, b=b).

    Args:
        model: any ``nn.Module`` mapping a batch (N, ...) to outputs (N, ...) or a pytree of them. It must be
            deterministic and treat samples independently: BatchNorm in training mode or Dropout in training mode
            are refused (call ``model.eval()``). Its parameters must be on the inputs' device; floating ones are
            used in the inputs' dtype.
        x1: (N1, ...) inputs: floats (numpy accepted), or integer ids for embedding models; or a tuple/list of such
            tensors (called as ``model(*x1)``) or a dict (``model(**x1)``), all with the N1 samples on axis 0
            (their floating tensors are brought to one dtype).
        x2: (N2, ...) inputs with x1's structure, or None for x2 = x1 (each symmetric block is computed once).
        output: "full" (N1, N2, O, O); "trace" (N1, N2), Σ_a Θ_aa, the trace of each O×O block: the SUM over
            outputs (for a network with iid outputs, trace / O estimates the one-output infinite-width Θ; note
            that ``empirical_nngp``'s "trace" is the MEAN (1/O) Σ_a f_a(x) f_a(x')); "diagonal" (N1, N2, O), Θ_aa.
        method: "layerwise" (the fast path: Linear/Dense, Conv1d/2d/3d, Embedding and the affine parameters of
            LayerNorm/GroupNorm/eval BatchNorm contract input Grams with output-cotangent Grams, never a P-sized
            Jacobian; any other parameter is added through per-sample Jacobians, so it is exact for every model);
            "jacobian" (per-sample Jacobians by vmap(jacrev), contracted); "vector_products" (NTK-vector products
            by vjp/jvp, nothing P·N-sized stored); "auto" (layerwise when the model has layers it knows, else
            jacobian, else vector_products when the Jacobian of one sample does not fit).
        batch_size: samples per chunk (default: planned from max_memory).
        max_memory: memory budget in bytes (default: half of the free RAM, or of the free GPU memory). A request
            that cannot fit even one sample at a time raises MemoryError with the estimate.
        progress: tqdm bar over blocks: True always, False never, None on a terminal for 16 blocks or more.
        output_fn: a callable applied to the model's output before it is flattened, to select or transform
            outputs, e.g. ``output_fn=lambda out: out[0]`` for ``nn.MultiheadAttention``'s attention output alone.
            It must be differentiable (torch operations) and act on each sample alone.

    Returns:
        A tensor of the requested shape, in the inputs' dtype (the model's for integer inputs) and on their device,
        also when called under ``torch.no_grad()`` or ``torch.inference_mode()`` (computed outside inference mode).
    """
    output, method = check_output(output), check_method(method)
    batch_size, max_memory = check_batch_size(batch_size), check_max_memory(max_memory)
    with _autograd_enabled():
        fn, x1, x2 = _prepare(model, x1, x2, output_fn)
        symmetric = x2 is None
        n1, n2 = _batch_size(x1), _batch_size(x1 if symmetric else x2)
        structure = probe_model(fn, x1, fast=method in ("auto", "layerwise"))
        outputs = structure.outputs
        shape = _result_shape(n1, n2, outputs, output)
        if not fn.params:  # nothing trainable: the kernel is zero
            return torch.zeros(shape, dtype=fn.dtype, device=fn.device)
        budget = memory_budget(max_memory, fn.device)
        output_bytes = math.prod(shape) * fn.dtype.itemsize
        chosen, plan = _choose_method(fn, structure, output, method, n1, n2, symmetric, output_bytes, budget,
                                      batch_size)
        sides = (x1, x1 if symmetric else x2)
        kept = plan.cache and chosen.name != "vector_products"
        # Merged blocks hold at most what a chunk's transient tensors held (freed once its features are formed).
        cost = chosen.cost()
        mergeable = max(1, cost.per_sample // max(cost.feature, 1)) if kept else 1
        split = kept and n1 >= 64 and n1 * n1 * chosen.pair_flops() >= _SPLIT_MIN_FLOPS
        chunk, block = plan_blocks(n1, n2, symmetric, plan.chunk, mergeable, split, outputs if output == "full" else 1)
        result = torch.empty(shape, dtype=fn.dtype, device=fn.device)

        def features(side, rows):
            return chosen.features(take(sides[side - 1], rows))

        assemble(n1, n2, symmetric, chunk, block, plan.cache, features, slice_features, chosen.contract, result,
                 output, progress, f"empirical NTK ({chosen.name})", merge_features)
    return check_result_finite(result, "the empirical NTK")


def _choose_method(fn, structure, output, method, n1, n2, symmetric, output_bytes, budget, batch_size):
    """The method object and its chunk plan; "auto" takes vector products when the Jacobian path cannot fit."""
    def planned(method_class, *sizes):
        chosen = method_class(fn, structure, output, *sizes)
        what = f"the empirical NTK ({n1}x{n2}, output={output!r}, method={chosen.name!r})"
        return chosen, chosen.plan(n1, n2, symmetric, output_bytes, budget, batch_size, what)

    if method == "auto":
        if structure.fast_layers:
            method = "layerwise"
        else:
            try:
                return planned(JacobianMethod)
            except MemoryError:
                method = "vector_products"
    if method == "layerwise":
        return planned(LayerwiseMethod, n1, n2)
    return planned(JacobianMethod if method == "jacobian" else VectorProductMethod)


def empirical_nngp(model, x1, x2=None, *, output: str = "full", batch_size: int | None = None,
                   max_memory: int | float | None = None, output_fn=None) -> torch.Tensor:
    r"""The output Gram of a finite network, the finite-width counterpart of the NNGP kernel.

        full:     K(x, x')_ab = f_a(x) f_b(x')                       (N1, N2, O, O)
        diagonal: K(x, x')_a  = f_a(x) f_a(x')                       (N1, N2, O)
        trace:    K(x, x')    = (1/O) Σ_a f_a(x) f_a(x')             (N1, N2)   the MEAN over outputs

    For a network at random initialisation with iid outputs, each f_a is a draw from the NNGP prior
    (Lee et al. 2018, arXiv 1711.00165), so every entry above estimates the one-output Σ(x, x') and "trace"
    averages the O estimates. Note the difference from ``empirical_ntk``'s "trace", Σ_a Θ_aa, which SUMS over
    outputs (the trace of the O×O block); here it is the mean, so that it compares directly with
    ``arch.kernel(x).nngp``.

    Args: as ``empirical_ntk`` (model, x1, x2, output, batch_size, max_memory, output_fn; several inputs and
    outputs as there). Returns the inputs' dtype/device.
    """
    output = check_output(output)
    batch_size, max_memory = check_batch_size(batch_size), check_max_memory(max_memory)
    with torch.inference_mode(False):
        fn, x1, x2 = _prepare(model, x1, x2, output_fn)
    with torch.no_grad():
        structure = probe_model(fn, x1, fast=False)
        n1, n2, outputs = _batch_size(x1), _batch_size(x1 if x2 is None else x2), structure.outputs
        shape = _result_shape(n1, n2, outputs, output)
        output_bytes = math.prod(shape) * fn.dtype.itemsize
        budget = memory_budget(max_memory, fn.device)
        per_sample = structure.activation_bytes + 2 * outputs * fn.dtype.itemsize
        plan = plan_chunks(Cost(per_sample, 0, 0, 0), n1, n2, x2 is None, output_bytes, budget, batch_size,
                           f"the empirical NNGP ({n1}x{n2}, output={output!r})")

        def outputs_of(x):
            return torch.cat([fn(take(x, slice(i, i + plan.chunk))) for i in range(0, _batch_size(x), plan.chunk)])

        f1 = outputs_of(x1)
        f2 = f1 if x2 is None else outputs_of(x2)
        if output == "full":
            result = f1[:, None, :, None] * f2[None, :, None, :]
        elif output == "diagonal":
            result = f1[:, None, :] * f2[None, :, :]
        else:
            result = (f1 @ f2.T) / outputs
    return check_result_finite(result, "the empirical NNGP")
