"""Input checks shared by every public entry point.

Each check raises an error that names the offending argument and says what was expected, so that a user
never gets a NaN or a broadcasting surprise from deep inside a kernel recursion.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_input_tensor",
    "check_pair",
    "check_positive_int",
    "check_nonnegative_float",
    "check_finite",
    "refuse_half_precision",
    "resolve_device",
]


def as_input_tensor(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Return ``x`` as a floating torch tensor, keeping its dtype and device.

    numpy arrays and Python lists are accepted; lists become float32 (the library default), numpy arrays keep
    their floating dtype. Integer, boolean and complex inputs are refused rather than silently cast: a kernel
    of integer pixels is almost always a forgotten ``/ 255``.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name} must be a numeric array; got a numpy array of dtype object")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor, array or nested list of numbers: {err}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a tensor with a shape but no values); create it on 'cpu' "
                         "or 'cuda'")
    if t.is_complex():
        raise TypeError(f"{name} has complex dtype {t.dtype}; kernels are defined for real inputs")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} has dtype {t.dtype}; expected a floating dtype (float32 or float64). "
            f"Convert explicitly, e.g. {name}.float() (and scale pixel values to [0, 1] first)."
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            shapes = " or ".join({2: "(N, d)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}.get(k, f"{k}-D")
                                 for k in allowed)
            raise ValueError(f"{name} must have shape {shapes}; got a {t.ndim}-D tensor of shape {tuple(t.shape)}")
    if t.ndim == 0:
        raise ValueError(f"{name} must have a leading batch axis; got a scalar")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); at least one input point is needed")
    if t.numel() == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)}); each point needs at least one")
    check_finite(t, name)
    return t


HALF_PRECISION = (torch.float16, torch.bfloat16)


def refuse_half_precision(t: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse float16/bfloat16 inputs to the infinite-width kernels (the README's convention: refused, not upcast).

    Half precision keeps 3 (bfloat16: 2) significant digits and float16 overflows past 65504, which a kernel
    recursion's variances reach with ordinary inputs: the kernel would come back silently wrong in that dtype. An
    explicit ``.float()`` costs the caller nothing and keeps "the kernel has the inputs' dtype" true. (The
    empirical NTK of a half-precision model is computed in the model's dtype, as its forward pass is.)
    """
    if t.dtype in HALF_PRECISION:
        raise TypeError(f"{name} has dtype {t.dtype}; infinite-width kernels are computed in float32 or float64 "
                        "only (half precision keeps ~3 significant digits and float16 overflows past 65504, which "
                        f"the kernel recursion reaches easily). Pass {name}.float() (float32) or {name}.double().")
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise if ``t`` holds NaN or infinity, saying how many and where the first one is."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or inf), the first at index {first}")


def check_pair(x1: torch.Tensor, x2: torch.Tensor, names: tuple[str, str] = ("x1", "x2")
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that two inputs can be compared by a kernel and bring them to a common dtype.

    ``names`` are the caller's parameter names for the two inputs (e.g. ("x_train", "x_test")), used in errors."""
    a, b = names
    if x1.device != x2.device:
        raise ValueError(f"{a} is on {x1.device} but {b} is on {x2.device}; put both on the same device")
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"{a} and {b} must have the same feature shape; got {a} {tuple(x1.shape)} and {b} {tuple(x2.shape)}"
        )
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    return x1.to(dtype), x2.to(dtype)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, refusing booleans, floats and values < 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def check_nonnegative_float(value: Any, name: str) -> float:
    """Return ``value`` as a float, refusing negatives, NaN and infinity."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative real number; got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number; got {value}")
    return value


def resolve_device(device, name: str = "device") -> torch.device:
    """A torch.device from a name such as "cpu", "cuda" or "cuda:1" (None: the CPU), refusing one this machine does
    not have with an error naming the argument ``name``."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda'; got {device!r} ({err})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r} was requested but CUDA is not available on this machine (this torch "
                         f"build: {torch.__version__}); use 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r} was requested but MPS is not available on this machine; use 'cpu'")
    return resolved
