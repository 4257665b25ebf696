"""Assemble an (N1, N2, ...) kernel from blocks of rows and columns, computing each symmetric block once.

``features(side, rows)`` gives a chunk's features (side 1 for x1, 2 for x2); ``contract(f_rows, f_cols)`` gives
the block in the public layout. When x2 is None only blocks on and above the diagonal are computed; a block
below is the transpose Θ(x', x)_{ba} = Θ(x, x')_{ab}, and diagonal blocks are made exactly symmetric (their two
halves come from different summation orders).
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

__all__ = ["assemble", "swap_block"]

_PROGRESS_MIN_BLOCKS = 16


def swap_block(block: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ(x', x) from Θ(x, x'): swap the sample axes and, for full blocks, the output axes."""
    return block.permute(1, 0, 3, 2) if mode == "full" else block.transpose(0, 1)


def assemble(n1: int, n2: int, symmetric: bool, chunk: int, cache: bool, features: Callable,
             contract: Callable, out: torch.Tensor, mode: str, progress: bool | None, desc: str) -> torch.Tensor:
    """Fill ``out`` block by block (see the module docstring)."""
    starts1, starts2 = range(0, n1, chunk), range(0, n2, chunk)
    pairs = [(i, j) for i in starts1 for j in starts2 if not symmetric or j >= i]
    show = progress if progress is not None else len(pairs) >= _PROGRESS_MIN_BLOCKS
    stored: dict = {}

    def get(side: int, start: int, n: int):
        key = (side, start)
        if key in stored:
            return stored[key]
        value = features(side, slice(start, min(start + chunk, n)))
        if cache:
            stored[key] = value
        return value

    row_key = None
    row_features = None
    for i, j in tqdm(pairs, desc=desc, disable=None if show else True, leave=False):
        if row_key != i:
            row_key, row_features = i, get(1, i, n1)
        col_features = row_features if symmetric and i == j else get(1 if symmetric else 2, j, n2)
        block = contract(row_features, col_features)
        rows, cols = slice(i, min(i + chunk, n1)), slice(j, min(j + chunk, n2))
        if symmetric and i == j:
            block = (block + swap_block(block, mode)) / 2
        out[rows, cols] = block
        if symmetric and i != j:
            out[cols, rows] = swap_block(block, mode)
    return out
