"""How a spatial kernel is cut into work: state forms, the two stages of tiles, and tile sizes for the device.

A network such as Myrtle spends its time on the first stage, where a pair's full covariance has |S|² = 10⁶
entries; after the first pooling a pair holds 16x fewer. One tile size cannot suit both: tiles sized for the
first stage (one pair, ~4 MiB, in cache on a CPU) leave the later layers paying per-call overhead on a few
thousand numbers each. So the top-level layers are split after the first layer that shrinks the per-pair state
8-fold or more: the *prefix* runs on small sub-tiles, their outputs are gathered into a *group* tile sized for the
rest of the network, and the rest runs once per group.

Sizes come from the device: on a CPU each state of a sub-tile should stay near the caches (``CPU_TILE_ELEMENTS``),
on a GPU tiles are as large as a fraction of its free memory allows, so that a few large kernels replace many
small launches. Planning only reads a ``DeviceInfo``, so the CUDA choices are testable without a GPU.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .._memory import available_bytes
from .spatial import pair_size

__all__ = ["DeviceInfo", "SpatialPlan", "plan_spatial", "device_info", "tile_edges", "CPU_TILE_ELEMENTS"]

# Numbers in a CPU tile's working set (all its temporaries): 2²⁰, 4 MiB in float32, so that a rule's passes run
# in the L2/L3 caches (a state larger than this, one 32×32 pair, gets a tile of its own).
CPU_TILE_ELEMENTS = 1 << 20
# A CPU group's working set, in CPU tiles.
GROUP_TO_TILE = 8
# Share of a GPU's free memory one tile's working set may take (the rest holds the outputs and the caller's data).
GPU_MEMORY_SHARE = 0.25
# Temporaries alive at once per state entry in the costliest rule (NNGP, NTK, the dual's intermediates).
WORKING_COPIES = 8
# Split the layers after the first one whose output state per pair is this many times smaller than the largest
# before it.
SPLIT_SHRINK = 8


@dataclass(frozen=True)
class DeviceInfo:
    """What planning needs to know about a device: its kind ("cpu" or "cuda") and free memory in bytes."""

    kind: str
    free_bytes: int


def device_info(device: torch.device) -> DeviceInfo:
    return DeviceInfo(kind=torch.device(device).type, free_bytes=available_bytes(device))


@dataclass(frozen=True)
class SpatialPlan:
    input_form: str                 # the form the inputs' covariance takes
    forms: tuple[str, ...]          # the output form of each top-level layer
    split: int                      # layers[:split] run per sub-tile, layers[split:] per group
    sub_tile: tuple[int, int]       # (rows, cols) of a prefix sub-tile
    group: tuple[int, int]          # (rows, cols) of a group tile
    working_bytes: int              # the largest working set of one tile (for the memory check)


def tile_edges(n1: int, n2: int, per_pair: int, budget_elements: int) -> tuple[int, int]:
    """(rows, cols) with about budget / per_pair pairs per tile, as square as the grid allows."""
    pairs = max(1, budget_elements // max(per_pair, 1))
    side = max(1, math.isqrt(pairs))
    rows = min(n1, side)
    return rows, min(n2, max(1, pairs // rows))


def plan_spatial(layers, signatures, forms, input_form: str, in_spatial: tuple[int, ...], n1: int, n2: int,
                 itemsize: int, info: DeviceInfo, batch_size: int | None = None) -> SpatialPlan:
    """Choose the split and the tiles. ``signatures[i]`` and ``forms[i]`` describe layer i's output."""
    sizes = [pair_size(in_spatial, input_form)] + [pair_size(s.spatial, f) for s, f in zip(signatures, forms)]
    split = len(layers)
    for i in range(1, len(sizes)):
        if sizes[i] * SPLIT_SHRINK <= max(sizes[:i]) and i < len(layers):
            split = i
            break
    prefix_pair = max(sizes[:split + 1]) * WORKING_COPIES
    rest_pair = max(sizes[split:]) * WORKING_COPIES
    if info.kind == "cuda":  # the sub-tile and the group share the memory budget
        budget = group_budget = max(1, int(info.free_bytes * GPU_MEMORY_SHARE) // itemsize // 2)
    else:
        # Groups may outgrow the caches: their layers hold few numbers per pair, and their cost is the per-call
        # overhead that larger groups amortise (16 Myrtle pairs at 16×16: 7.1-7.7 ms per pair, 1-2: 8.1-8.6).
        budget, group_budget = CPU_TILE_ELEMENTS, GROUP_TO_TILE * CPU_TILE_ELEMENTS
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
        batch_size = int(batch_size)  # numpy integers too
        group = (min(batch_size, n1), min(batch_size, n2))
    else:
        group = tile_edges(n1, n2, rest_pair, group_budget)
    sub = tile_edges(group[0], group[1], prefix_pair, budget)
    if split == len(layers):  # no stage after the prefix: the sub-tiles are the tiles
        group = sub
    working = (sub[0] * sub[1] * prefix_pair + group[0] * group[1] * rest_pair) * itemsize
    return SpatialPlan(input_form, tuple(forms), split, sub, group, working)
