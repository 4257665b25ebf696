"""Per-call memo of values that depend on a block of points' variances: computed once per block, not per tile.

A tiled kernel evaluation meets each block of rows in every block of columns, and a block's variances are bitwise
the same in every tile (the rows of one tile are the columns of another: (t, 1) and (1, t)). What depends only on
them (quadrature activations' Hermite coefficients and 1-D moments, closed-form activations' propagated variances)
is computed once per block and layer inside a ``coefficient_cache`` block, and nothing outlives the call.

Lookups are by value: on a CPU the variances' bytes are hashed (one dictionary lookup per tile); on other devices
reading them would make the host wait for the device, so entries are compared with ``torch.equal`` instead
(few, large tiles there).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch

Tensor = torch.Tensor

__all__ = ["coefficient_cache", "memoized", "carries_derivatives"]

# Values already computed during one kernel evaluation, or None outside one.
_CACHE: ContextVar[dict | None] = ContextVar("ntkit_coefficient_cache", default=None)
_CACHE_ENTRIES = 512  # per key: more blocks than this are computed again (bounded memory)


@contextmanager
def coefficient_cache():
    """Within this block, ``memoized`` values are reused for the same key and the same variances. The engines
    enter it once per kernel evaluation. Inputs that carry derivatives (autograd, forward AD, torch.func) are never
    cached."""
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def carries_derivatives(q: Tensor) -> bool:
    """Whether ``q`` takes part in a derivative: autograd, forward AD or a torch.func transform."""
    from torch.autograd import forward_ad

    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)()
    return q.requires_grad or functorch_active or forward_ad.unpack_dual(q).tangent is not None


def memoized(key: tuple, q: Tensor, compute: Callable[[], Tensor]):
    """``compute()``, a function of ``q``'s values in order (not of its shape) and of ``key``, reused within a
    ``coefficient_cache`` block."""
    if torch.compiler.is_compiling():  # a compiled pass traces the arithmetic; nothing is looked up
        return compute()
    cache = _CACHE.get()
    if cache is None or carries_derivatives(q):
        return compute()
    flat = q.reshape(-1)
    slot = (*key, flat.numel(), q.dtype, q.device)
    if q.device.type == "cpu":
        entries = cache.setdefault(slot, {})
        content = flat.contiguous().view(torch.uint8).numpy().tobytes()  # bytes: -0.0 and NaN match only themselves
        if content in entries:
            return entries[content]
        value = compute()
        if len(entries) < _CACHE_ENTRIES:
            entries[content] = value
        return value
    entries = cache.setdefault(slot, [])
    for known, value in entries:
        if torch.equal(known, flat):
            return value
    value = compute()
    if len(entries) < _CACHE_ENTRIES:
        entries.append((flat.clone(), value))
    return value
