"""How a flat (N, d) kernel is cut into tiles, and when its recursion is worth compiling, by device.

Tiles. On a CPU a tile's temporaries should stay near the caches: about 2²⁰ numbers per rule's working set on one
thread (tiles of a few hundred points; ~6x faster than one full-grid pass on 2 cores, benchmarks/analytic_kernel.py).
With more threads every pass of a tile is split between them and ends at a barrier, so tiles grow to amortise it:
2²¹ more numbers per extra thread (measured on 2 cores, N = 4,000 ReLU MLP, fresh processes: tiles of 384² 187 ms,
544² 166 ms, 640² 161 ms, 768² 168-180 ms; N = 20,000: 640² 3.3-3.9 s against 384²'s ~5 s; on one thread N =
1,000 was fastest at 384²: larger tiles there mean more work on the diagonal tiles, computed whole). On a
GPU the cost is the launches, one per elementwise pass: cache-sized tiles mean hundreds of tiny launches (measured
on an H200 at N = 4,000: 16-210 ms against 2.4 ms for one full-grid eager pass), so GPU tiles are as large as a
share of the free memory allows, capped at ``GPU_TILE_ENTRIES`` entries, where one more doubling stops paying (the
N = 20,000 grid in 8192² tiles: 17 ms, against 52 ms for the whole grid in one pass, whose gigabyte temporaries
cost more than the launches saved).

Compilation. ``torch.compile`` fuses a tile's recursion into one pass, but its first call costs seconds (5-26 s on
a CPU, 29-47 s on an H200; issue 11), which a user's first kernel must not wait for. The default therefore follows
the ski-rental rule: run eagerly, count the seconds spent eagerly on this architecture (per kernel kind and input
width, in this process), and compile once they reach the break-even C/s, where C is what compiling costs on this
device and s the share of eager time the compiled pass saves (compiling removes only part of the rent, so the
classic threshold C would compile workloads that never earn C back), then keep the compiled pass for every later
call, whatever the shapes (``dynamic=True``). No workload pays more than twice what the best choice in hindsight
would have cost, small and one-off workloads never compile, and a long one switches mid-call at a tile boundary.
``fused=True`` compiles at once; ``fused=False`` never compiles.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .spatial_plan import GPU_MEMORY_SHARE, DeviceInfo

__all__ = ["FlatPlan", "plan_flat", "compile_pays", "COMPILE_SECONDS", "FUSE_MIN_ENTRIES", "GPU_TILE_ENTRIES"]

# Eager tiles are sized so that one rule's temporaries (tile_cost tiles) fit in about 2²⁰ elements on one thread,
# and in (2·threads − 1)·2²⁰ with more.
CPU_EAGER_BUDGET = 1 << 20
# A fused pass keeps its temporaries in registers, so its CPU tiles only need to amortise the call overhead.
CPU_FUSED_TILE = 512
# GPU tiles: at most this many entries (64M: 256 MiB per float32 temporary).
GPU_TILE_ENTRIES = 1 << 26
# Grids smaller than this never compile by default: compiling costs seconds once and saves little on them.
FUSE_MIN_ENTRIES = 1 << 22
# Eager seconds on one architecture after which compiling pays, by device kind: C/s (module docstring), measured
# (docs/benchmarks.md). CPU: C ≈ 5 s, s ≈ 0.2 at best (0.22 at N = 4,000, ~0 at N = 20,000 on 2 cores since the
# eager tiles grew with the threads). CUDA: C = 29-47 s on an H200 with s unmeasured, so C alone (the flat closed
# forms run the Triton pass there and never compile).
COMPILE_SECONDS = {"cpu": 25.0, "cuda": 40.0}
_DEFAULT_COMPILE_SECONDS = 40.0


@dataclass(frozen=True)
class FlatPlan:
    tile: int      # edge of the square tiles of the N1×N2 grid
    working: int   # numbers alive at once for one tile (its rule's temporaries)


def plan_flat(tile_cost: int, n1: int, n2: int, itemsize: int, info: DeviceInfo, fuse: bool,
              batch_size: int | None = None, threads: int = 1) -> FlatPlan:
    """Tile edge for an n1×n2 grid whose costliest rule keeps ``tile_cost`` tile-sized temporaries; ``threads``:
    the CPU's intra-op threads that will run the tiles."""
    copies = tile_cost + 4
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
        batch_size = int(batch_size)  # numpy integers too
        tile = batch_size
    elif info.kind == "cuda":
        entries = min(GPU_TILE_ENTRIES, int(info.free_bytes * GPU_MEMORY_SHARE) // (copies * itemsize))
        side = max(128, math.isqrt(max(entries, 1)))
        tile = min(max(n1, n2), side - side % 128 if side >= 256 else side)
    elif fuse:
        tile = CPU_FUSED_TILE
    else:
        side = math.isqrt(CPU_EAGER_BUDGET * (2 * max(threads, 1) - 1) // copies)
        tile = max(64, min(1024, side - side % 32))
    return FlatPlan(tile=tile, working=copies * min(tile, n1) * min(tile, n2))


def compile_pays(eager_seconds: float, device_kind: str) -> bool:
    """The ski-rental rule: compile once the eager seconds spent reach the device's break-even (``COMPILE_SECONDS``)."""
    return eager_seconds >= COMPILE_SECONDS.get(device_kind, _DEFAULT_COMPILE_SECONDS)
