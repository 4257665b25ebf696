"""Mehler's series of a flat tile in one Triton pass per parity, for CUDA devices (``quadrature._horner``).

Why. A quadrature activation's dual kernel is Σ_m r^m g_m(x) h_m(x') with r = ρ², summed by Horner's rule over
the tens of terms that float32 can see (``kernels/quadrature.py``). Eager torch makes two passes over the tile per
term (acc·r, then + g_m h_m); on a GPU each is a launch and a read and write of the whole tile, so a tanh kernel costs
~80 tile passes per layer against erf's ~20. Here each program keeps its block of the accumulator in registers and
reads r once, the coefficients of its rows and columns per term (a few hundred bytes), and writes the sum once.

The number of terms is a compile-time constant (a runtime loop bound trips Triton's interpreter), rounded up to a
power of two and the coefficients padded with zeros at the top, so at most nine variants are ever compiled (8 to
2,048 terms) and Horner's rule is unchanged: it starts from 0·r + 0 = 0. Values agree with eager torch to the
dtype's rounding (the compiler fuses each step into one multiply-add); float32 and float64.
"""

from __future__ import annotations

import warnings

import torch

from . import triton_support
from .triton_support import tl, triton

__all__ = ["horner"]

_BLOCK_M, _BLOCK_N, _WARPS = 8, 128, 4  # as kernels/triton_flat.py: full 512-byte rows per load and store
_MIN_TERMS = 8


def horner(first: torch.Tensor, second: torch.Tensor, r: torch.Tensor) -> torch.Tensor | None:
    """Σ_m r^m first[m] second[m] for a flat tile: ``first`` (L, t1, 1), ``second`` (L, 1, t2), ``r`` (t1, t2);
    or None where the kernel does not apply (another shape, dtype or device, autograd, Triton unusable), for the
    caller's torch loop."""
    if (r.ndim != 2 or first.ndim != 3 or second.ndim != 3 or first.shape[0] != second.shape[0]
            or first.shape[1:] != (r.shape[0], 1) or second.shape[1:] != (1, r.shape[1])
            or r.dtype not in (torch.float32, torch.float64) or first.dtype != r.dtype or second.dtype != r.dtype
            or not triton_support.usable(r.device) or not first.shape[0] or not r.numel()):
        return None
    if torch.is_grad_enabled() and (first.requires_grad or second.requires_grad or r.requires_grad):
        return None
    try:
        return _launch(first, second, r)
    except Exception as err:  # a GPU or Triton build the kernel fails on: torch's loop from now on
        triton_support.disable(err)
        warnings.warn(f"ntkit: the Triton series kernel failed ({type(err).__name__}: {err}); falling back to "
                      "eager torch", RuntimeWarning, stacklevel=4)
        return None


def _launch(first: torch.Tensor, second: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    terms = first.shape[0]
    padded = max(_MIN_TERMS, 1 << (terms - 1).bit_length())
    t1, t2 = r.shape
    rows = first.new_zeros(padded, t1)
    rows[:terms] = first[:, :, 0]
    cols = second.new_zeros(padded, t2)
    cols[:terms] = second[:, 0, :]
    r = r.contiguous()
    out = torch.empty_like(r)
    grid = (triton.cdiv(t1, _BLOCK_M), triton.cdiv(t2, _BLOCK_N))
    triton_support.build(_horner_tile)[grid](
        r, rows, cols, out, t1, t2, WIDE=triton_support.wide_offsets(t1, t2, t2), N_TERMS=padded,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=_WARPS)
    return out


def _horner_tile(r_ptr, rows_ptr, cols_ptr, out_ptr, t1, t2, WIDE: tl.constexpr, N_TERMS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One block: acc ← acc·r + rows[m] colsᵀ[m] for m from N_TERMS − 1 down to 0 (r, out: contiguous (t1, t2);
    rows: (N_TERMS, t1); cols: (N_TERMS, t2))."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:  # offsets past 2³¹
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    row_in = rows < t1
    col_in = cols < t2
    inside = row_in[:, None] & col_in[None, :]
    offsets = rows[:, None] * t2 + cols[None, :]
    r = tl.load(r_ptr + offsets, mask=inside, other=0.0)
    acc = r * 0.0
    for step in range(N_TERMS):
        term = N_TERMS - 1 - step
        g = tl.load(rows_ptr + term * t1 + rows, mask=row_in, other=0.0)
        h = tl.load(cols_ptr + term * t2 + cols, mask=col_in, other=0.0)
        acc = acc * r + g[:, None] * h[None, :]
    tl.store(out_ptr + offsets, acc, mask=inside)
