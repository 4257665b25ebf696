r"""Entries of a float32 kernel whose pair of points is nearly parallel (or antiparallel), recomputed in float64.

The rectified duals (ReLU, LeakyReLU, Abs) contain θ = arccos ρ, whose slope is infinite at ρ = ±1. Two points
1e-3 apart (relative) have 1 − ρ ≈ 5e-7, a few float32 ulps, and float32 stores c and q only to ±ε: θ comes out
off by a large fraction of itself, and the float32 NTK by ~3e-4 of max|K| (float64: 1e-8). No float32 formula in
(c, q1, q2) can do better: the information is gone once c is rounded.

So the flat engine flags, per tile, the pairs whose correlation at the input of a rectified layer is within
``NEAR_PARALLEL`` (1e-4) of ±1, and recomputes exactly those pairs' recursion in float64 from the float32 inputs
(which float64 holds exactly). Where the engine's eager CPU tiles run every rectified layer in place, those rules
report the pairs from the reduction they already take (``dual_inplace.rectified_tile_``): no cost for tiles without
such pairs. Elsewhere (compiled tiles, GPUs, rectified layers inside residual branches) the engine tests the final
NNGP against the rows' and columns' final variances (three tile passes): ρ close to 1 stays close to 1 through
every layer rule (Dense with a bias and the rectified duals only raise it), so this catches pairs that become
parallel inside the network, as a zero row and a tiny row do once a bias is added; it misses pairs antiparallel at
a ReLU's input without a bias before it (x and nearly −x at the first layer with b_std = 0).

Unflagged pairs have θ > √(2·1e-4) ≈ 0.014, where a few ulps of ρ move K̇ by ~ε/θ: below 1e-5 of the kernel's
scale per layer. The diagonal entries of the points in such pairs are recomputed the same way, so that a point and
its copy keep bitwise equal values. Not applied to float64 inputs (accurate already), to inputs that
carry derivatives (the float32 values are what is differentiated), nor on devices without float64 (MPS). The
convolutional engine tests its output instead (``SpatialPairs``).
"""

from __future__ import annotations

import torch

from .cache import carries_derivatives
from .dual import NEAR_PARALLEL

__all__ = ["NearParallelRefiner", "kinked_layers", "float64_self_kernels", "refinable", "SpatialPairs"]

Tensor = torch.Tensor


def _walk(layer):
    """A layer and every layer inside it (Serial's layers, Residual's block and shortcut, ...)."""
    yield layer
    for value in getattr(layer, "__dict__", {}).values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "kernel_rule"):
                yield from _walk(item)


def refinable(*inputs: Tensor) -> bool:
    """Whether the kernels of these inputs get their near-parallel pairs recomputed: float32 (float64 is accurate
    already), on a device with float64 (not Apple's MPS), without derivatives to carry."""
    return all(x.dtype == torch.float32 and x.device.type != "mps" and not carries_derivatives(x) for x in inputs)


def kinked_layers(layers) -> list:
    """The layers (nested ones included) whose dual float32 cannot resolve near ρ = ±1 (``kinked``)."""
    return [inner for layer in layers for inner in _walk(layer) if getattr(inner, "kinked", False)]


def float64_self_kernels(run, x: Tensor, need_ntk: bool) -> tuple[Tensor, Tensor | None]:
    """K(x_i, x_i) in float64, rounded to x's dtype: the diagonal that recomputed pairs agree with. ``run`` as for
    ``NearParallelRefiner``."""
    wide = x.double()
    sq = (wide * wide).sum(1) / x.shape[1]
    nngp, ntk = run(sq, sq, sq)
    return nngp.to(x.dtype), (ntk.to(x.dtype) if need_ntk else None)


def _inverse_roots(q: Tensor) -> Tensor:
    """1/√q with zero variances mapped to a large finite number (0·that = 0: a zero row is never flagged by it)."""
    return torch.rsqrt(torch.clamp(q, min=torch.finfo(q.dtype).tiny))


class NearParallelRefiner:
    """Recomputes one call's near-parallel float32 pairs. ``run(gram, var1, var2)`` is the layer stack on 1-D
    pairs (``evaluate.run_layers`` without a scratch pool)."""

    def __init__(self, run, x1: Tensor, x2: Tensor, symmetric: bool):
        self.run, self.x1, self.x2 = run, x1, x2
        self.symmetric, self.width = symmetric, x1.shape[1]
        self.refined = 0  # pairs recomputed in this call (tests read it)
        self._points: list[Tensor] = []  # rows and columns of the recomputed pairs (symmetric kernels)

    def _parallel_at_output(self, nngp: Tensor, rows: slice, cols: slice, final: tuple[Tensor, Tensor],
                            buffer: Tensor | None) -> Tensor | None:
        """|ρ| > 1 − NEAR_PARALLEL of the final NNGP as a mask, or None when no entry is (one reduction decides).
        ``final``: the tile's final variances of the rows (t1, 1) and the columns (1, t2), K(x, x) of each."""
        ratio = torch.mul(nngp, _inverse_roots(final[0]), out=buffer).mul_(_inverse_roots(final[1]))
        if self.symmetric and rows == cols:
            ratio.diagonal().zero_()  # a point with itself (ρ = 1) is not a pair to recompute: one reduction decides
        low, high = torch.aminmax(ratio)
        if not bool((high > 1.0 - NEAR_PARALLEL) | (low < NEAR_PARALLEL - 1.0)):
            return None
        return ratio.abs_() > 1.0 - NEAR_PARALLEL

    def refine(self, nngp: Tensor, ntk: Tensor | None, masks: list | None, rows: slice, cols: slice,
               final: tuple[Tensor, Tensor], buffer: Tensor | None = None) -> None:
        """Overwrite the tile's flagged pairs with their float64 values: those in ``masks`` (reported by the rules),
        or with ``masks=None`` those nearly parallel at the output (``final``: the tile's final variances). A
        diagonal tile's own diagonal (a point with itself) is skipped (``refine_diagonal``)."""
        if masks is None:
            flags = self._parallel_at_output(nngp, rows, cols, final, buffer)
        else:
            flags = None
            for mask in masks:
                flags = mask if flags is None else flags.logical_or_(mask)
        if flags is None:
            return
        if self.symmetric and rows == cols:
            flags.fill_diagonal_(False)
        ii, jj = flags.nonzero(as_tuple=True)
        if not ii.numel():
            return
        r, c = self.x1[rows].double(), self.x2[cols].double()
        gram = (r @ c.T)[ii, jj] / self.width  # a tile Gram: cheaper than gathering k rows of both
        var1 = (r * r).sum(1)[ii] / self.width  # as float64_self_kernels forms them (per row: the same sums)
        var2 = (c * c).sum(1)[jj] / self.width
        nngp64, ntk64 = self.run(gram, var1, var2)
        nngp[ii, jj] = nngp64.to(nngp.dtype)
        if ntk is not None:
            ntk[ii, jj] = ntk64.to(ntk.dtype)
        self.refined += int(ii.numel())
        if self.symmetric:
            self._points += [ii + rows.start, jj + cols.start]

    def refine_diagonal(self, out_nngp: Tensor | None, out_ntk: Tensor | None) -> None:
        """A symmetric kernel's diagonal entries K(x, x) of the points in recomputed pairs, from
        ``float64_self_kernels``: a point and its copy then keep equal values (bitwise), so duplicates leave the
        kernel positive semidefinite. The other diagonal entries stay as computed (no float64 work when no pair
        was flagged)."""
        if not self._points:
            return
        index = torch.unique(torch.cat(self._points))
        nngp, ntk = float64_self_kernels(self.run, self.x1[index], out_ntk is not None)
        for out, value in ((out_nngp, nngp), (out_ntk, ntk)):
            if out is not None:
                out[index, index] = value





class SpatialPairs:
    """The convolutional engine's version (``spatial_evaluate``): near-duplicate images had float32 kernels 3e-4
    off. As the grid writes each group, ``note`` flags the pairs whose NNGP correlation K(x, x')/√(K(x, x) K(x', x'))
    (computed whichever kernels were asked for; K(x, x) from the engine's self pass) is within ``NEAR_PARALLEL``
    of ±1; ``finish`` recomputes them in float64, one ``arch.kernel`` call per row that has any, and for a
    symmetric kernel sets the diagonal entries of the points involved from float64 self-kernels too, so that a
    point and its copy keep equal values. Nothing is computed in float64 when no pair is flagged.

    The test is on the network's output, not per position: it misses pairs nearly antiparallel at a ReLU's input
    without a bias before it (x and nearly −x), as the flat engine's output test does. ``kernel_diagonal`` stays
    in float32: equal to the refined diagonal entries to float32 rounding."""

    def __init__(self, arch, x1: Tensor, x2: Tensor, symmetric: bool, get: tuple[str, ...], self1: Tensor,
                 self2: Tensor):
        self.arch, self.x1, self.x2, self.symmetric, self.get = arch, x1, x2, symmetric, get
        self.left, self.right = _inverse_roots(self1), _inverse_roots(self2)
        self.flagged: dict[int, list[int]] = {}  # row -> columns to recompute
        self.refined = 0

    def note(self, rows: slice, cols: slice, nngp: Tensor) -> None:
        """Flag the near-parallel pairs of a group from its (t1, t2) NNGP (above the diagonal when symmetric)."""
        flags = (nngp * self.left[rows, None] * self.right[None, cols]).abs_() > 1.0 - NEAR_PARALLEL
        if self.symmetric:
            row_index = torch.arange(rows.start, rows.stop, device=flags.device)[:, None]
            flags &= torch.arange(cols.start, cols.stop, device=flags.device)[None, :] > row_index
        if bool(flags.any()):
            for i, j in flags.nonzero().tolist():
                self.flagged.setdefault(rows.start + i, []).append(cols.start + j)

    def finish(self, out: dict) -> None:
        """Overwrite ``out`` ("nngp"/"ntk" -> (N1, N2)) at the flagged pairs (and their points' diagonal)."""
        if not self.flagged:
            return
        if self.symmetric:
            points = sorted({*self.flagged, *(j for columns in self.flagged.values() for j in columns)})
            index = torch.tensor(points, device=self.x1.device)
            selves = self.arch.kernel_diagonal(self.x1[index].double(), get=self.get)
            for name, values in out.items():
                values[index, index] = selves[name].to(values.dtype)
        for row, columns in self.flagged.items():
            columns = torch.tensor(columns, device=self.x1.device)
            wide = self.arch.kernel(self.x1[row:row + 1].double(), self.x2[columns].double(), get=self.get)
            for name, values in out.items():
                values[row, columns] = wide[name][0].to(values.dtype)
                if self.symmetric:
                    values[columns, row] = values[row, columns]
            self.refined += int(columns.numel())
