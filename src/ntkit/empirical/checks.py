"""Argument checks for the empirical kernels: options, inputs (floating points or integer token ids, one tensor or
a tuple/list/dict of them, see ``trees.py``) and models.

Every check names the argument and says what was expected (the convention of ``ntkit._validation``). Models
whose output for one sample depends on the rest of the batch (BatchNorm using batch statistics) or on chance
(Dropout in training mode) have no well-defined per-sample Jacobian: they are refused with a message that says
to call ``model.eval()``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .._validation import as_input_tensor, check_finite, check_pair, check_positive_int
from .trees import describe, is_input_tree, named_leaves

__all__ = ["OUTPUTS", "METHODS", "check_output", "check_method", "check_batch_size", "check_max_memory",
           "as_model_input", "model_inputs", "check_output_fn", "check_model", "compute_dtype",
           "check_result_finite", "without_inference_tensors"]

OUTPUTS = ("full", "trace", "diagonal")
METHODS = ("auto", "layerwise", "jacobian", "vector_products")


def check_output(output) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
    return output


def check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return method


def check_batch_size(batch_size) -> int | None:
    return None if batch_size is None else check_positive_int(batch_size, "batch_size")


def check_max_memory(max_memory) -> int | None:
    """``max_memory`` in bytes (an int or float such as ``2 * 2**30``), or None for the default budget."""
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Real):
        raise TypeError(f"max_memory must be a number of bytes (e.g. 4 * 2**30 for 4 GiB) or None; got "
                        f"{max_memory!r}")
    if not np.isfinite(max_memory) or max_memory <= 0:
        raise ValueError(f"max_memory must be a positive, finite number of bytes; got {max_memory}")
    return int(max_memory)


def as_model_input(x, name: str) -> torch.Tensor:
    """A batch of model inputs (N, ...): floating (checked finite) or integer (token ids for embeddings).

    Unlike the analytic kernels, any trailing shape is allowed: the model defines what one sample is.
    """
    if isinstance(x, np.ndarray) and x.dtype.kind in "iub":
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex():
        if x.ndim == 0:
            raise ValueError(f"{name} must have a leading batch axis; got a scalar")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); at least one input point is needed")
        return x
    return as_input_tensor(x, name)


def _as_input_tree(x, name: str):
    """Several inputs: every leaf a tensor (or numpy array) with the same batch size N, all on one device."""
    leaves = named_leaves(x, name)
    if not leaves:
        raise ValueError(f"{name} holds no tensors; give one tensor (N, ...) or a tuple/list/dict of tensors")
    checked = []
    for leaf_name, leaf in leaves:
        if not isinstance(leaf, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{leaf_name} is of type {type(leaf).__name__}; every element of {name} must be a tensor "
                            "with the batch on axis 0 (fix other arguments of the model in a wrapper module)")
        checked.append(as_model_input(leaf, leaf_name))
    (first_name, _), first = leaves[0], checked[0]
    for (leaf_name, _), leaf in zip(leaves[1:], checked[1:]):
        if leaf.shape[0] != first.shape[0]:
            raise ValueError(f"the tensors of {name} must share the batch axis 0: {first_name} has shape "
                             f"{tuple(first.shape)} ({first.shape[0]} samples) but {leaf_name} has shape "
                             f"{tuple(leaf.shape)} ({leaf.shape[0]} samples)")
        if leaf.device != first.device:
            raise ValueError(f"{first_name} is on {first.device} but {leaf_name} is on {leaf.device}; put all of "
                             f"{name} on one device")
    # A top-level list becomes a tuple (the same model(*x) call): a list is what the block methods' features are.
    return tree_unflatten(checked, tree_flatten(tuple(x) if isinstance(x, list) else x)[1])


def _floating_dtype(*trees) -> torch.dtype | None:
    dtypes = [leaf.dtype for tree in trees if tree is not None for _, leaf in named_leaves(tree, "")
              if leaf.is_floating_point()]
    if not dtypes:
        return None
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def _check_tree_pair(x1, x2):
    """x2 must have x1's structure and, tensor by tensor, its per-sample shape, kind (floats or ids) and device."""
    spec1, spec2 = tree_flatten(x1)[1], tree_flatten(x2)[1]
    if spec1 != spec2:
        raise ValueError(f"x2 must have the same structure as x1; got x1: {describe(x1, 'x1')}; x2: "
                         f"{describe(x2, 'x2')}")
    for (name1, a), (name2, b) in zip(named_leaves(x1, "x1"), named_leaves(x2, "x2")):
        if a.is_floating_point() != b.is_floating_point():
            raise TypeError(f"{name1} has dtype {a.dtype} but {name2} has dtype {b.dtype}; give both as floats or "
                            "both as integer ids")
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"{name1} and {name2} must have the same per-sample shape; got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        if a.device != b.device:
            raise ValueError(f"{name1} is on {a.device} but {name2} is on {b.device}; put both on the same device")


def model_inputs(x1, x2):
    """Validate x1 and (optionally) x2 as batches of the same kind of sample on one device.

    Each is one tensor (N, ...) or a tuple/list/dict of tensors sharing N (``trees.py``). With several tensors,
    the floating ones are brought to one dtype (torch's promotion over all of them, x2's included) and the integer
    ones (ids) kept.
    """
    if not (is_input_tree(x1) or is_input_tree(x2)):
        x1 = as_model_input(x1, "x1")
        if x2 is None:
            return x1, None
        x2 = as_model_input(x2, "x2")
        if x1.is_floating_point() != x2.is_floating_point():  # before check_pair, whose promotion would cast ids
            raise TypeError(f"x1 has dtype {x1.dtype} but x2 has dtype {x2.dtype}; give both as floats or both as "
                            "integer ids")
        return check_pair(x1, x2)
    x1 = _as_input_tree(x1, "x1") if is_input_tree(x1) else as_model_input(x1, "x1")
    if x2 is not None:
        x2 = _as_input_tree(x2, "x2") if is_input_tree(x2) else as_model_input(x2, "x2")
        _check_tree_pair(x1, x2)
    dtype = _floating_dtype(x1, x2)

    def cast(t):
        return t.to(dtype) if t.is_floating_point() else t

    return tree_map(cast, x1), None if x2 is None else tree_map(cast, x2)


def without_inference_tensors(x):
    """The batch with inference tensors (made under ``torch.inference_mode()``) copied to normal ones, which
    autograd may save; call it outside inference mode."""
    return tree_map(lambda t: t.clone() if t.is_inference() else t, x)


def check_output_fn(output_fn):
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"output_fn must be a callable applied to the model's output (e.g. lambda out: out[0]) or "
                        f"None; got {type(output_fn).__name__}")
    return output_fn


def _batch_coupled_modules(model: nn.Module) -> list[str]:
    problems = []
    for name, module in model.named_modules():
        label = name or type(module).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training:
                problems.append(f"{label} ({type(module).__name__} in training mode uses batch statistics)")
            elif module.running_mean is None:
                problems.append(f"{label} ({type(module).__name__} with track_running_stats=False uses batch "
                                "statistics even in eval mode)")
        elif isinstance(module, (nn.modules.dropout._DropoutNd, nn.RReLU)) and module.training:
            if not isinstance(module, nn.modules.dropout._DropoutNd) or module.p > 0:
                problems.append(f"{label} ({type(module).__name__} in training mode is random)")
    return problems


def check_model(model) -> nn.Module:
    """Refuse non-modules and models whose per-sample output is not a function of that sample alone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    problems = _batch_coupled_modules(model)
    if problems:
        raise ValueError("the empirical kernels need a deterministic, per-sample model, but "
                         + "; ".join(problems) + ". Call model.eval() first (and set track_running_stats=True "
                         "on BatchNorm layers that have no running statistics).")
    return model


def compute_dtype(model: nn.Module, x) -> torch.dtype:
    """The dtype of the result: the inputs' floating dtype, else (integer ids only) the model's parameter dtype."""
    dtype = _floating_dtype(x)
    if dtype is not None:
        return dtype
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def check_result_finite(result: torch.Tensor, what: str) -> torch.Tensor:
    """A kernel with NaN or inf means the model's outputs or gradients overflowed: say so instead of returning it."""
    try:
        check_finite(result, what)
    except ValueError as err:
        raise FloatingPointError(f"{err}: the model's outputs or gradients are not finite for some inputs "
                                 "(overflow in float32? try float64 inputs)") from None
    return result
