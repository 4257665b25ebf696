"""Input checks for the dynamics functions: kernels, targets, initial outputs, times, learning rates.

Each check names the argument and says what was expected (the convention of ``ntkit._validation``).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .._validation import as_input_tensor, check_finite
from ..layers.base import Layer

__all__ = ["as_targets", "as_cost_targets", "CostTargets", "as_cross_kernel", "as_outputs", "as_times",
           "check_learning_rate", "check_positive_number", "output_dtype", "finite_or_raise", "check_module",
           "check_architecture", "as_model_input"]


def as_targets(y, n: int, name: str = "y_train") -> tuple[torch.Tensor, bool]:
    """Targets as an (N, O) tensor and whether they were given as (N,) (so results drop the O axis)."""
    t = as_input_tensor(y, name)
    if t.ndim > 2:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, O); got {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} rows but the train-train kernel is {n}x{n}; "
                         f"expected {name} of shape ({n},) or ({n}, O)")
    return (t[:, None], True) if t.ndim == 1 else (t, False)


class CostTargets(NamedTuple):
    """Targets checked for a cost: ``values`` (N, O) float64 (one-hot for class labels), ``for_cost`` what the
    cost function receives (``values``, or (N,) for a callable cost given (N,) targets), O, whether results drop
    the O axis, and the targets' floating dtype (None for integer labels)."""

    values: torch.Tensor
    for_cost: torch.Tensor
    outputs: int
    squeeze: bool
    dtype: torch.dtype | None


def as_cost_targets(y, n: int, cost_name: str | None, classes: int | None = None, *, name: str = "y_train",
                    against: str = "the {n}x{n} train-train kernel") -> CostTargets:
    """Targets y of shape (N,) or (N, O) for a cost: real numbers, or integer class labels for cross-entropy.

    ``cost_name`` is None for a user's callable cost. Integer labels become one-hot rows over ``classes``
    classes (default: max label + 1).
    """
    if not isinstance(y, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a tensor or array of targets; got {type(y).__name__}")
    t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim not in (1, 2) or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, O) to match {against.format(n=n)}; "
                         f"got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers or integer class labels; got dtype {t.dtype}")
    if not t.is_floating_point():
        if cost_name != "cross_entropy" or t.ndim != 1:
            raise TypeError(f"integer {name} is only understood as class labels (N,) for cost='cross_entropy'; "
                            f"got dtype {t.dtype} and shape {tuple(t.shape)}")
        classes = int(t.max()) + 1 if classes is None else classes
        if int(t.min()) < 0 or int(t.max()) >= classes:
            raise ValueError(f"class labels in {name} must lie in [0, {classes}); got [{int(t.min())}, "
                             f"{int(t.max())}]")
        one_hot = torch.nn.functional.one_hot(t.long(), classes).to(torch.float64)
        return CostTargets(one_hot, one_hot, classes, False, None)
    check_finite(t, name)
    values = (t[:, None] if t.ndim == 1 else t).to(torch.float64)
    if cost_name == "cross_entropy" and values.shape[1] < 2:
        raise ValueError(f"cost='cross_entropy' needs O >= 2 logits ({name} as (N, O) probabilities or integer "
                         "labels); for one logit and binary targets use cost='logistic'")
    squeeze = t.ndim == 1
    # Built-in costs take (N, O); a callable cost gets the targets in the shape the user gave them.
    for_cost = values[:, 0] if squeeze and cost_name is None else values
    return CostTargets(values, for_cost, values.shape[1], squeeze, t.dtype)


def as_cross_kernel(kernel, n: int, name: str) -> torch.Tensor:
    """A test-train kernel (M, N) whose second axis matches the N training points."""
    k = as_input_tensor(kernel, name, ndim=2)
    if k.shape[1] != n:
        raise ValueError(f"{name} must have shape (M, {n}) (test points x the {n} training points); "
                         f"got {tuple(k.shape)}")
    return k


def as_outputs(f, rows: int, outputs: int, name: str) -> torch.Tensor:
    """Initial outputs f_0 of shape (rows,) (when outputs == 1) or (rows, outputs), returned as (rows, outputs)."""
    t = as_input_tensor(f, name)
    if t.ndim == 1:
        t = t[:, None]
    if tuple(t.shape) != (rows, outputs):
        raise ValueError(f"{name} must have shape ({rows}, {outputs})" + (f" or ({rows},)" if outputs == 1 else "")
                         + f"; got {tuple(t.shape)}")
    return t


def as_times(t, name: str = "t", *, allow_inf: bool = True, why_finite: str = "") -> tuple[torch.Tensor, bool]:
    """Times as a float64 CPU tensor (T,) and whether a single time (float or 0-D) was given.

    Accepts a number, ``math.inf``, a 0-D or 1-D tensor, numpy array or list. Negative or NaN times are
    refused: the dynamics run forward from t = 0. With ``allow_inf=False`` infinite times are refused too,
    and ``why_finite`` says why.
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a non-negative time or a 1-D tensor of times; got {t!r}")
    if isinstance(t, numbers.Real):
        times, scalar = torch.tensor([float(t)], dtype=torch.float64), True
    elif isinstance(t, (torch.Tensor, np.ndarray, list, tuple)):
        try:
            times = torch.as_tensor(np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t,
                                               dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold real numbers (times); {err}") from None
        if times.ndim > 1:
            raise ValueError(f"{name} must be a number or a 1-D tensor of times; got shape {tuple(times.shape)}")
        scalar = times.ndim == 0
        times = times.reshape(-1)
        if times.numel() == 0:
            raise ValueError(f"{name} is empty; give at least one time")
    else:
        raise TypeError(f"{name} must be a non-negative number, math.inf, or a 1-D tensor of times; "
                        f"got {type(t).__name__}")
    if bool(torch.isnan(times).any()):
        raise ValueError(f"{name} contains NaN")
    if bool((times < 0).any()):
        raise ValueError(f"{name} must be non-negative (gradient flow runs forward from t = 0); "
                         f"got {float(times.min()):g}")
    if not allow_inf and bool(torch.isinf(times).any()):
        raise ValueError(f"{name} must be finite" + (f" ({why_finite})" if why_finite else ""))
    return times, scalar


def check_learning_rate(value, name: str = "learning_rate") -> float:
    """A finite, strictly positive learning rate η."""
    return check_positive_number(value, name)


def check_positive_number(value, name: str) -> float:
    """A finite, strictly positive real number (a learning rate, an ODE tolerance), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number; got {value}")
    return value


def output_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted floating dtype of the user's tensors: results come back in it."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def finite_or_raise(t: torch.Tensor, name: str, hint: str) -> torch.Tensor:
    """Refuse to return a non-finite result, saying why it happened."""
    try:
        check_finite(t, name)
    except ValueError as err:
        raise FloatingPointError(f"{err}. {hint}") from None
    return t


def check_module(model) -> nn.Module:
    """Refuse anything that is not a ``torch.nn.Module`` (an ntkit architecture is built first)."""
    if not isinstance(model, nn.Module):
        hint = " (build an ntkit architecture first: arch.build(in_features))" if isinstance(model, Layer) else ""
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}{hint}")
    return model


def check_architecture(arch) -> Layer:
    """Refuse anything that is not an ntkit architecture (a built nn.Module has no exact kernel)."""
    if not isinstance(arch, Layer):
        raise TypeError(f"arch must be an ntkit architecture (nk.Serial, nk.mlp(...)); got {type(arch).__name__}")
    return arch


def as_model_input(x, name: str, model: nn.Module) -> torch.Tensor:
    """Inputs for ``model``: a floating tensor with the dtype and device of the model's parameters."""
    t = as_input_tensor(x, name)
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    if reference is not None and (t.dtype != reference.dtype or t.device != reference.device):
        raise ValueError(f"{name} is {t.dtype} on {t.device} but the model's parameters are {reference.dtype} on "
                         f"{reference.device}; convert one of them (e.g. {name}.to(model_dtype))")
    return t
