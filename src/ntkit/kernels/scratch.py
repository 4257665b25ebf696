"""Reusable buffers for one spatial kernel evaluation.

A full 32×32 covariance is 4 MiB per pair, and every rule needs a few such tensors. Allocated fresh, each one is
mapped from the operating system and page-faulted in (glibc serves large requests with mmap and returns them on
free), which measured as about half of a Myrtle kernel's time on 2 cores. The engine therefore lends each
evaluation a small pool: a rule takes an output buffer with ``empty``, and the engine gives the input state's
buffers back after the rule has produced its output. Buffers are matched by size, so a network's repeated shapes
reuse a handful of them. Nothing is global: the pool lives in one ``arch.kernel`` call.
"""

from __future__ import annotations

import math
import weakref

import torch

from .cache import carries_derivatives

__all__ = ["Scratch"]


class Scratch:
    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        # Lent buffers by storage address, held weakly: one that a rule drops instead of giving back is freed as
        # usual (and its address may be reused by a later buffer, which then replaces the entry).
        self._lent: dict[int, weakref.ref] = {}

    def empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` with the dtype and device of ``like``."""
        key = (math.prod(shape), like.dtype, like.device)
        free = self._free.get(key)
        base = free.pop() if free else torch.empty(key[0], dtype=like.dtype, device=like.device)
        self._lent[base.untyped_storage().data_ptr()] = weakref.ref(base)
        return base.view(shape)

    def give(self, *tensors) -> None:
        """Return buffers (or views of them) that no live tensor uses any more; others are ignored, and so are
        tensors in an autograd graph (it may hold them for the backward pass)."""
        for t in tensors:
            if isinstance(t, torch.Tensor) and not t.requires_grad:
                ref = self._lent.pop(t.untyped_storage().data_ptr(), None)
                base = None if ref is None else ref()
                if base is not None:
                    self._free.setdefault((base.numel(), base.dtype, base.device), []).append(base)


def empty(scratch: Scratch | None, shape, like: torch.Tensor) -> torch.Tensor:
    """``scratch.empty`` when a pool is lent, a fresh tensor otherwise."""
    if scratch is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return scratch.empty(shape, like)


def out_buffer(scratch: Scratch | None, shape, like: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor | None:
    """A buffer for an op's ``out=`` argument, or None (the op allocates its result) when an input takes part in a
    derivative (``cache.carries_derivatives``): ops with ``out=`` cannot be differentiated."""
    if any(carries_derivatives(t) for t in inputs):
        return None
    return empty(scratch, shape, like)
