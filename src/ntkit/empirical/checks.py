"""Argument checks for the empirical kernels: options, inputs (floating points or integer token ids) and models.

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

from .._validation import as_input_tensor, check_finite, check_pair, check_positive_int

__all__ = ["OUTPUTS", "METHODS", "check_output", "check_method", "check_batch_size", "check_max_memory",
           "as_model_input", "model_inputs", "check_model", "compute_dtype", "check_result_finite"]

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


def model_inputs(x1, x2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate x1 and (optionally) x2 as batches of the same kind of sample on one device."""
    x1 = as_model_input(x1, "x1")
    if x2 is None:
        return x1, None
    x2 = as_model_input(x2, "x2")
    if x1.is_floating_point() != x2.is_floating_point():  # before check_pair, whose promotion would cast ids
        raise TypeError(f"x1 has dtype {x1.dtype} but x2 has dtype {x2.dtype}; give both as floats or both as "
                        "integer ids")
    return check_pair(x1, x2)


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


def compute_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype of the result: the inputs' floating dtype, else (integer ids) the model's parameter dtype."""
    if x.is_floating_point():
        return x.dtype
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
