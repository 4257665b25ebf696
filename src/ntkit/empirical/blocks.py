"""Assemble an (N1, N2, ...) kernel from blocks of rows and columns, computing each symmetric block once.

``features(side, rows)`` gives the features of a chunk of samples (side 1 for x1, 2 for x2), ``slice_features
(features, rows)`` a sub-range of them, and ``contract(f_rows, f_cols)`` a block in the public layout. Features
are computed per ``chunk`` of samples; blocks are ``block`` samples on a side (a divisor of the chunk), so that
with x2 None the work above the diagonal can be tiled finely without recomputing features. A block below the
diagonal is the transpose Θ(x', x)_{ba} = Θ(x, x')_{ab}; diagonal blocks are made exactly symmetric (their two
halves come from different summation orders).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from tqdm.auto import tqdm


__all__ = ["assemble", "swap_block", "tqdm_disable"]

_PROGRESS_MIN_BLOCKS = 16


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
    current row chunk and the current column chunk), so a row's features are computed once per row."""

    def __init__(self, features: Callable, slice_features: Callable, chunk: int, cache: bool, sizes):
        self.features, self.slice_features = features, slice_features
        self.chunk, self.cache, self.sizes = chunk, cache, sizes
        self.stored: OrderedDict = OrderedDict()

    def get(self, side: int, start: int, stop: int):
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


def assemble(n1: int, n2: int, symmetric: bool, chunk: int, block: int, cache: bool, features: Callable,
             slice_features: Callable, contract: Callable, out: torch.Tensor, mode: str, progress: bool | None,
             desc: str) -> torch.Tensor:
    """Fill ``out`` block by block (see the module docstring)."""
    if chunk % block:
        raise ValueError(f"block ({block}) must divide chunk ({chunk})")
    store = _FeatureStore(features, slice_features, chunk, cache, (n1, n1 if symmetric else n2))
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
