"""Memory budget and chunk planning for the empirical kernels.

A block method computes per-sample features for a chunk of rows and a chunk of columns, then contracts them into
a block of the result. Its memory is modelled as

    output + fixed + c·per_sample + 2c·feature + c²·per_pair  (+ n·feature if every chunk's features are cached)

for a chunk of c samples. The planner picks the largest c under the budget (``max_memory``, by default half of
the memory free on the device: MemAvailable on the CPU, the driver's count on CUDA) and refuses, with the
estimate, a request that does not fit even at c = 1. The model is an estimate (activations are measured on one
sample by ``probe.py``), not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._memory import available_bytes, format_bytes

__all__ = ["Cost", "ChunkPlan", "memory_budget", "chunk_bytes", "plan_chunks", "DEFAULT_FRACTION"]

DEFAULT_FRACTION = 0.5  # of free memory: leaves room for the caller's own tensors and the allocator's slack


@dataclass(frozen=True)
class Cost:
    """Bytes a block method needs: per sample of a chunk (transient), per sample of features (kept), per pair of a
    block, and a fixed amount."""

    per_sample: int
    feature: int
    per_pair: int
    fixed: int = 0
    working: int | None = None  # per-sample bytes the working-set limit counts, when not all of ``per_sample``


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int
    cache: bool  # keep every chunk's features (each computed once) instead of recomputing column features
    estimate: int  # bytes at this plan


def memory_budget(max_memory: int | None, device: torch.device) -> int:
    return max_memory if max_memory is not None else int(DEFAULT_FRACTION * available_bytes(device))


def chunk_bytes(cost: Cost, c: int) -> int:
    """Working memory of a chunk of c samples: c·(per_sample + 2·feature) + c²·per_pair."""
    return c * (cost.per_sample + 2 * cost.feature) + c * c * cost.per_pair


def _largest_chunk(cost: Cost, room: int, limit: int) -> int:
    """Largest c <= limit with chunk_bytes(c) <= room (0 if even c = 1 does not fit)."""
    linear = cost.per_sample + 2 * cost.feature
    if room < chunk_bytes(cost, 1):
        return 0
    if cost.per_pair == 0:
        return min(limit, room // max(linear, 1))
    c = int((-linear + math.sqrt(linear * linear + 4.0 * cost.per_pair * room)) / (2 * cost.per_pair))
    while c > 1 and chunk_bytes(cost, c) > room:  # float rounding
        c -= 1
    return max(1, min(limit, c))


def plan_chunks(cost: Cost, n1: int, n2: int, symmetric: bool, output_bytes: int, budget: int,
                batch_size: int | None, what: str, working_set: int | None = None) -> ChunkPlan:
    """Chunk size and caching for an (n1, n2) result; raises MemoryError with the estimate when it cannot fit."""
    limit = max(n1, n2)
    base = output_bytes + cost.fixed  # held whatever the chunk
    room = budget - base
    at_one = base + chunk_bytes(cost, 1)
    hint = ("Pass a larger max_memory if more is free, use output='trace' or 'diagonal' (smaller results), "
            "fewer points, or method='vector_products' (no stored Jacobians).")
    if room <= 0 or at_one > budget:
        raise MemoryError(f"{what} needs about {format_bytes(at_one)} even one sample at a time (the result alone is "
                          f"{format_bytes(output_bytes)}), but the budget is {format_bytes(budget)}. {hint}")
    cache_bytes = (n1 if symmetric else n1 + n2) * cost.feature
    if batch_size is not None:
        c = min(batch_size, limit)
        need = chunk_bytes(cost, c)
        if need > room:
            raise MemoryError(f"{what} with batch_size={batch_size} needs about {format_bytes(base + need)} "
                              f"but the budget is {format_bytes(budget)}; use a smaller batch_size or leave it to "
                              "the planner (batch_size=None).")
        cache = need + cache_bytes <= room
        return ChunkPlan(c, cache, base + need + (cache_bytes if cache else 0))
    if working_set is not None:
        # Chunks whose transient tensors stay within ``working_set`` run faster (measured on the conv nets of
        # benchmarks/empirical_ntk.py: 64 samples at ~5 MB each were 1.4x slower than 16); never below 8.
        per_sample = cost.per_sample if cost.working is None else cost.working
        limit = min(limit, max(8, working_set // max(per_sample, 1)))
    if cache_bytes <= room // 2:
        c = _largest_chunk(cost, room - cache_bytes, limit)
        if c >= 1:
            return ChunkPlan(c, True, base + chunk_bytes(cost, c) + cache_bytes)
    c = _largest_chunk(cost, room, limit)
    return ChunkPlan(c, False, base + chunk_bytes(cost, c))
