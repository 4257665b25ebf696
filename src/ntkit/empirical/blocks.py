"""Assemble an (N1, N2, ...) kernel from blocks of rows and columns, computing each symmetric block once.

``features(side, rows)`` gives the features of a chunk of samples (side 1 for x1, 2 for x2), ``slice_features
(features, rows)`` a sub-range of them, ``merge_features(list)`` several chunks' joined, and ``contract(f_rows,
f_cols)`` a block in the public layout. Features are computed per ``chunk`` of samples; blocks are ``block``
samples on a side: a divisor of the chunk, so that with x2 None the work above the diagonal can be tiled finely
without recomputing features, or, when every chunk's features are kept, a multiple of it, so that small chunks
are contracted in products large enough to be bound by arithmetic rather than by reading the features. A block
below the diagonal is the transpose Θ(x', x)_{ba} = Θ(x, x')_{ab}; diagonal blocks are made exactly symmetric
(their two halves come from different summation orders).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from tqdm.auto import tqdm


__all__ = ["assemble", "plan_blocks", "swap_block", "tqdm_disable"]

_PROGRESS_MIN_BLOCKS = 16

# A block product with r rows per side (samples, or samples x outputs for the full NTK) does about r/4
# multiply-adds per byte of features it reads (float32): below ~64 rows it is bound by memory (the torch.func
# tutorial's CNN at N = 64, trace: 15 products of 14 x 14 samples took 33 ms, one of 70 x 70 15 ms). Small chunks
# whose features are kept are merged into blocks of about this many rows.
MERGED_BLOCK = 128


def plan_blocks(n1: int, n2: int, symmetric: bool, chunk: int, mergeable: int, split: bool,
                rows_per_sample: int = 1) -> tuple[int, int]:
    """(chunk, block) for ``assemble``. ``mergeable``: how many chunks' features may be merged into one block (1
    when features are not kept, or not mergeable). ``split``: with x2 None and features kept, the contraction is
    large enough that blocks of about n1/4 samples, which contract only 10 of the 16 block pairs, pay for their
    overhead. ``rows_per_sample``: rows of the block products per sample (O for the full NTK, else 1)."""
    target = min(-(-MERGED_BLOCK // rows_per_sample), max(n1, n2))
    merge = min(mergeable, -(-target // chunk))
    if merge > 1:
        return chunk, chunk * merge
    if split and symmetric:
        block = min(chunk, -(-n1 // 4))
        return chunk - chunk % block, block
    return chunk, chunk


def tqdm_disable(progress: bool | None, many: bool):
    """tqdm's ``disable``: shown when asked (progress=True, also off a terminal), hidden when refused
    (progress=False); with progress=None, shown on a terminal when there are ``many`` steps."""
    if progress is None:
        return None if many else True
    return not progress


def swap_block(block: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ(x', x) from Θ(x, x'): swap the sample axes and, for full blocks, the output axes."""
    return block.permute(1, 0, 3, 2) if mode == "full" else block.transpose(0, 1)


class _FeatureStore:
    """Features by chunk: all kept when ``cache``, else the two most recently used chunks of each side (the
    current row chunk and the current column chunk), so a row's features are computed once per row. A block of
    several chunks (``cache`` only) is merged once and replaces its chunks."""

    def __init__(self, features: Callable, slice_features: Callable, merge_features: Callable | None, chunk: int,
                 cache: bool, sizes):
        self.features, self.slice_features, self.merge_features = features, slice_features, merge_features
        self.chunk, self.cache, self.sizes = chunk, cache, sizes
        self.stored: OrderedDict = OrderedDict()

    def get(self, side: int, start: int, stop: int):
        if stop - start > self.chunk:
            return self._merged(side, start, stop)
        first = start - start % self.chunk
        key = (side, first)
        if key in self.stored:
            self.stored.move_to_end(key)
        else:
            if not self.cache:
                same_side = [k for k in self.stored if k[0] == side]
                for old in same_side[:max(len(same_side) - 1, 0)]:
                    del self.stored[old]
            self.stored[key] = self.features(side, slice(first, min(first + self.chunk, self.sizes[side - 1])))
        feats = self.stored[key]
        if start == first and stop - start == self.chunk:
            return feats
        return self.slice_features(feats, slice(start - first, stop - first))

    def _merged(self, side: int, start: int, stop: int):
        key = (side, start, stop)
        if key not in self.stored:
            starts = range(start, stop, self.chunk)
            parts = [self.get(side, first, min(first + self.chunk, stop)) for first in starts]
            for first in starts:
                del self.stored[(side, first)]
            self.stored[key] = self.merge_features(parts)
        return self.stored[key]


def assemble(n1: int, n2: int, symmetric: bool, chunk: int, block: int, cache: bool, features: Callable,
             slice_features: Callable, contract: Callable, out: torch.Tensor, mode: str, progress: bool | None,
             desc: str, merge_features: Callable | None = None) -> torch.Tensor:
    """Fill ``out`` block by block (see the module docstring)."""
    if chunk % block and (block % chunk or not cache or merge_features is None):
        raise ValueError(f"block ({block}) must divide chunk ({chunk}), or be a multiple of it when features are "
                         "kept and can be merged")
    store = _FeatureStore(features, slice_features, merge_features, chunk, cache, (n1, n1 if symmetric else n2))
    col_side = 1 if symmetric else 2
    pairs = [(i, j) for i in range(0, n1, block) for j in range(0, n2, block) if not symmetric or j >= i]
    many = len(pairs) >= _PROGRESS_MIN_BLOCKS
    for i, j in tqdm(pairs, desc=desc, disable=tqdm_disable(progress, many), leave=False):
        rows, cols = slice(i, min(i + block, n1)), slice(j, min(j + block, n2))
        row_features = store.get(1, rows.start, rows.stop)
        col_features = row_features if symmetric and i == j else store.get(col_side, cols.start, cols.stop)
        value = contract(row_features, col_features)
        if symmetric and i == j:
            value = (value + swap_block(value, mode)) / 2
        out[rows, cols] = value
        if symmetric and i != j:
            out[cols, rows] = swap_block(value, mode)
    return out
