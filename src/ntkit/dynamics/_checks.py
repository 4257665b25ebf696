"""Input checks for the dynamics functions: kernels, targets, initial outputs, times, learning rates.

Each check names the argument and says what was expected (the convention of ``ntkit._validation``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._validation import as_input_tensor, check_finite

__all__ = ["as_targets", "as_cross_kernel", "as_outputs", "as_times", "check_learning_rate", "output_dtype"]


def as_targets(y, n: int, name: str = "y_train") -> tuple[torch.Tensor, bool]:
    """Targets as an (N, O) tensor and whether they were given as (N,) (so results drop the O axis)."""
    t = as_input_tensor(y, name)
    if t.ndim > 2:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, O); got {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} rows but the train-train kernel is {n}x{n}; "
                         f"expected {name} of shape ({n},) or ({n}, O)")
    return (t[:, None], True) if t.ndim == 1 else (t, False)


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


def as_times(t, name: str = "t", *, allow_inf: bool = True) -> tuple[torch.Tensor, bool]:
    """Times as a float64 CPU tensor (T,) and whether a single time (float or 0-D) was given.

    Accepts a number, ``math.inf``, a 0-D or 1-D tensor, numpy array or list. Negative or NaN times are
    refused: the dynamics run forward from t = 0.
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a non-negative time or a 1-D tensor of times; got {t!r}")
    if isinstance(t, numbers.Real):
        times, scalar = torch.tensor([float(t)], dtype=torch.float64), True
    elif isinstance(t, (torch.Tensor, np.ndarray, list, tuple)):
        times = torch.as_tensor(np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64))
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
        raise ValueError(f"{name} must be finite here")
    return times, scalar


def check_learning_rate(value, name: str = "learning_rate") -> float:
    """A finite, strictly positive learning rate η."""
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
