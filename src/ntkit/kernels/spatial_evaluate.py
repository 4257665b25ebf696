r"""Tiled evaluation of an architecture's kernel for (N, C, L) and (N, C, H, W) inputs.

Two passes (Novak et al. 2019 and neural-tangents carry the same two quantities):

1. **Self pass.** Every input x is paired with itself, (x, x), and run through the whole recursion in the same
   form as the pairs (NNGP only). Before each layer the per-position variances q(x, p) = K(x, x)[p, p] are read off
   that state and recorded on a tape. Pooling mixes positions, so q after a pooling layer needs the full
   self-covariance K(x, x)[p, p''] before it; this pass is what provides it, at the cost of N extra pairs.
2. **Pair pass.** The N1×N2 grid is cut into tiles of pairs sized to memory (few pairs at a time for a full
   32×32 covariance of 10⁶ numbers, thousands for a diagonal state); the tape replays the recorded variances of
   the tile's rows and columns before each layer, so activations and normalisations see exact q(x, p), q(x', p').
   When x2 is x1 only tiles on and above the diagonal are computed, and the rest is mirrored.

The state's form per layer (flat, diagonal or full; :mod:`ntkit.kernels.spatial`) comes from walking the layers
backwards from the flat readout (``Layer.input_form``): each state is kept only as full as the later layers need.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .._memory import check_fits
from .evaluate import _check_no_overflow
from .kernel import Kernel, KernelState
from .scratch import Scratch
from .spatial import diagonal, pair_size, variance_layout

__all__ = ["evaluate_spatial", "RecordingTape", "ReplayTape", "plan_tile"]

# A tile's state (and each of the few temporaries a rule holds) has about this many numbers: a few MiB, so the
# elementwise passes of a tile run in the CPU's caches. The self pass uses the same budget.
TILE_ELEMENTS = 1 << 20
# Temporaries alive at once per state entry in the costliest rule (NNGP, NTK, the dual's intermediates).
_WORKING_COPIES = 8
_PROGRESS_MIN_TILES = 64


class RecordingTape:
    """Self pass: reads q(x, p) off a tile of self-pairs (t, 1, ...) before each layer and records it."""

    def __init__(self):
        self.values: list[torch.Tensor] = []

    def supply(self, state: KernelState) -> KernelState:
        own = diagonal(state.nngp, len(state.spatial)) if state.form == "full" else state.nngp
        v = own[:, 0].clone()  # the state is overwritten in place by the next rules
        self.values.append(v)
        return state.replace(var1=variance_layout(v, state.form, 1, aligned=True),
                             var2=variance_layout(v, state.form, 2, aligned=True))


class ReplayTape:
    """Pair pass: before the k-th layer, the recorded variances of the tile's rows (x1) and columns (x2)."""

    def __init__(self, records1: list[torch.Tensor], records2: list[torch.Tensor], rows: slice, cols: slice):
        self.records1, self.records2, self.rows, self.cols = records1, records2, rows, cols
        self.step = 0

    def supply(self, state: KernelState) -> KernelState:
        v1 = self.records1[self.step][self.rows]
        v2 = self.records2[self.step][self.cols]
        self.step += 1
        return state.replace(var1=variance_layout(v1, state.form, 1), var2=variance_layout(v2, state.form, 2))


def plan_tile(n1: int, n2: int, per_pair: int, batch_size: int | None) -> tuple[int, int]:
    """Tile edges (rows, columns): ``batch_size`` when given, else about TILE_ELEMENTS / per_pair pairs per tile,
    as square as the grid allows."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
        return min(batch_size, n1), min(batch_size, n2)
    pairs = max(1, TILE_ELEMENTS // per_pair)
    side = max(1, math.isqrt(pairs))
    rows = min(n1, side)
    cols = min(n2, max(1, pairs // rows))
    return rows, cols


def _initial_state(x1: torch.Tensor, x2: torch.Tensor, aligned: bool, need_ntk: bool, tape,
                   scratch: Scratch) -> KernelState:
    """The state before the first layer: the inputs themselves (their covariance is formed by the first layer's
    ``apply_layer``, or never, when a first Conv reads its patches directly)."""
    return KernelState(nngp=None, ntk=0.0 if need_ntk else None, var1=None, var2=None, width=x1.shape[1],
                       gaussian=False, form="full", spatial=tuple(x1.shape[2:]), tape=tape,
                       inputs=(x1, x2, aligned), scratch=scratch)


def _self_variances(arch, x: torch.Tensor, chunk: int, scratch: Scratch) -> list[torch.Tensor]:
    """The tape of the self pass: for each layer in visiting order, q(x, p) for every point, (N, *S_layer)."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        tape = RecordingTape()
        arch.spatial_rule(_initial_state(part, part, True, False, tape, scratch), False, "flat")
        chunks.append(tape.values)
    return [torch.cat(values) for values in zip(*chunks)]


def evaluate_spatial(arch, x1: torch.Tensor, x2: torch.Tensor | None, *, get: tuple[str, ...],
                     batch_size: int | None, progress: bool | None) -> Kernel:
    """Evaluate ``arch``'s NNGP/NTK on validated (N, C, *S) inputs. See ``Serial.kernel`` for the arguments."""
    symmetric = x2 is None
    if symmetric:
        x2 = x1
    n1, n2 = x1.shape[0], x2.shape[0]
    spatial = tuple(x1.shape[2:])
    need_ntk = "ntk" in get
    form = arch.input_form("flat")
    per_pair = pair_size(spatial, form) * _WORKING_COPIES
    rows_per_tile, cols_per_tile = plan_tile(n1, n2, per_pair, batch_size)
    tile_bytes = rows_per_tile * cols_per_tile * per_pair * x1.element_size()
    check_fits(len(get) * n1 * n2 * x1.element_size() + tile_bytes, x1.device,
               f"the ({n1}, {n2}) kernel(s) {get} of {spatial} inputs ({form} spatial covariances, "
               f"{rows_per_tile}x{cols_per_tile} pairs per tile)",
               "Ask for one kernel (get='ntk'), a smaller batch_size, or compute blocks of rows of x1 in turn.")

    self_chunk = max(1, TILE_ELEMENTS // per_pair)
    scratch = Scratch()
    records1 = _self_variances(arch, x1, self_chunk, scratch)
    records2 = records1 if symmetric else _self_variances(arch, x2, self_chunk, scratch)

    out = {name: torch.empty(n1, n2, dtype=x1.dtype, device=x1.device) for name in get}
    tiles = [(i, j) for i in range(0, n1, rows_per_tile) for j in range(0, n2, cols_per_tile)
             if not symmetric or j + cols_per_tile > i]
    show = progress if progress is not None else len(tiles) >= _PROGRESS_MIN_TILES
    for i, j in tqdm(tiles, desc="kernel tiles", disable=None if show else True, leave=False):
        rows, cols = slice(i, min(i + rows_per_tile, n1)), slice(j, min(j + cols_per_tile, n2))
        tape = ReplayTape(records1, records2, rows, cols)
        state = arch.spatial_rule(_initial_state(x1[rows], x2[cols], False, need_ntk, tape, scratch), need_ntk,
                                  "flat")
        for name, value in (("nngp", state.nngp), ("ntk", state.ntk)):
            if name in out:
                out[name][rows, cols] = value
                if symmetric:  # the mirror image; tiles that straddle the diagonal are symmetrised below
                    out[name][cols, rows] = value.T
    nngp, ntk = out.get("nngp"), out.get("ntk")
    if symmetric:
        _symmetrize_mirrored(nngp, ntk)
    for name, value in (("NNGP", nngp), ("NTK", ntk)):
        _check_no_overflow(value, name, arch)
    return Kernel(nngp=nngp, ntk=ntk)


def _symmetrize_mirrored(nngp, ntk) -> None:
    """Tiles are rectangles, so some straddle the diagonal and write both triangles of it; keep the upper one."""
    for out in (nngp, ntk):
        if out is not None:
            upper = torch.triu(out, 1)
            out.copy_(upper + upper.T + torch.diag_embed(out.diagonal()))
