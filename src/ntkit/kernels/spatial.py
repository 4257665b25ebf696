r"""The spatial forms of a kernel state and the windowed sums that conv and pooling rules are made of.

A pair of inputs (x, x') of shape (C, S₁[, S₂]) has, after any conv layer, a covariance between every position p
of x and p' of x': K[p, p'] (DESIGN.md, "Spatial kernels"). A tile of t1 × t2 pairs is held in one of three forms:

* ``"flat"``     (t1, t2): no spatial axes (after Flatten, GlobalAvgPool, or for (N, d) inputs);
* ``"diagonal"`` (t1, t2, S₁[, S₂]): only p = p'. Conv and activation rules map the diagonal to the diagonal, and a
  Flatten readout needs nothing else, so a network without pooling costs O(|S|) per pair;
* ``"full"``     (t1, t2, S₁, S₁', S₂, S₂'): every (p, p'), axis pairs interleaved as in neural-tangents, so that
  each rule works on one (s, s') plane at a time. Pooling (which mixes positions) needs it: O(|S|²) per pair.

Per-position variances q(x, p) = K(x, x)[p, p] travel beside the pair state as ``var1`` (t1, 1, ...) and ``var2``
(1, t2, ...), laid out by :func:`variance_layout` so that they broadcast against the pair state: an activation's
dual kernel then applies entrywise, unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["FORMS", "input_covariance", "variance_layout", "diagonal", "window_sum", "diagonal_window_sum",
           "to_form", "pair_size", "stronger_form"]

FORMS = ("flat", "diagonal", "full")


def stronger_form(a: str, b: str) -> str:
    """The form that can serve both: full > diagonal > flat."""
    return a if FORMS.index(a) >= FORMS.index(b) else b


def pair_size(spatial: tuple[int, ...], form: str) -> int:
    """Numbers held per pair of inputs in ``form``."""
    size = math.prod(spatial)
    return {"flat": 1, "diagonal": size, "full": size * size}[form]


def _flat_positions(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def input_covariance(x1: Tensor, x2: Tensor, form: str, aligned: bool = False) -> Tensor:
    r"""Σ⁽⁰⁾(x, x')[p, p'] = Σ_c x[c, p] x'[c, p'] / C for every pair of a tile, in ``form``.

    x1: (t1, C, *S), x2: (t2, C, *S). ``aligned=True`` pairs x1[i] with x2[i] only (t1 == t2) and returns
    (t1, 1, ...), the layout of a tile with one column: it gives each point's covariance with itself."""
    channels, spatial = x1.shape[1], tuple(x1.shape[2:])
    a, b = _flat_positions(x1), _flat_positions(x2)
    if form == "flat":
        if aligned:
            return ((a * b).sum((1, 2)) / (channels * max(1, math.prod(spatial))))[:, None]
        return (a.flatten(1) @ b.flatten(1).T) / a[0].numel()
    if form == "diagonal":
        cov = (a * b).sum(1)[:, None] if aligned else torch.einsum("acp,bcp->abp", a, b)
        return (cov / channels).reshape(*cov.shape[:2], *spatial)
    if form != "full":
        raise ValueError(f"unknown form {form!r}")
    if aligned:
        cov = torch.einsum("tcp,tcq->tpq", a, b)[:, None]
    else:
        # One GEMM: (t1·P, C) @ (C, t2·P), then the pair axes to the front.
        cov = (a.transpose(1, 2).reshape(-1, channels) @ b.permute(1, 0, 2).reshape(channels, -1))
        cov = cov.reshape(a.shape[0], a.shape[2], b.shape[0], b.shape[2]).permute(0, 2, 1, 3)
    cov = cov.reshape(*cov.shape[:2], *spatial, *spatial) / channels
    d = len(spatial)
    order = [0, 1] + [i for axis in range(d) for i in (2 + axis, 2 + d + axis)]
    return cov.permute(order).contiguous()


def variance_layout(v: Tensor, form: str, side: int, aligned: bool = False) -> Tensor:
    """Per-position variances v (t, *S) laid out to broadcast against a pair state of ``form``.

    side 1 -> (t, 1, ...) varying along p; side 2 -> (1, t, ...) varying along p' ((t, 1, ...) when ``aligned``)."""
    t, spatial = v.shape[0], tuple(v.shape[1:])
    lead = (t, 1) if side == 1 or aligned else (1, t)
    if form in ("flat", "diagonal"):
        return v.reshape(*lead, *spatial)
    shape = [s for size in spatial for s in ((size, 1) if side == 1 else (1, size))]
    return v.reshape(*lead, *shape)


def diagonal(state: Tensor, spatial_dims: int) -> Tensor:
    """(a, b, S₁, S₁', S₂, S₂') -> (a, b, S₁, S₂): the entries with p = p'."""
    for _ in range(spatial_dims):
        state = state.diagonal(0, 2, 3)  # moves the (s, s) diagonal of the first plane to the end
    return state


def to_form(state: Tensor, form: str, wanted: str, spatial_dims: int) -> Tensor:
    """Convert a pair state to a weaker form (full -> diagonal); equal forms and flat states pass through."""
    if form == wanted or form == "flat":
        return state
    if form == "full" and wanted == "diagonal":
        return diagonal(state, spatial_dims).contiguous()
    raise RuntimeError(f"ntkit planning error: a {form} state cannot serve a layer that needs the {wanted} form")


def _pad_dims(x: Tensor, dims: tuple[int, ...], pad: tuple[int, int]) -> Tensor:
    if pad == (0, 0):
        return x
    widths = [0] * (2 * x.ndim)
    for dim in dims:
        position = 2 * (x.ndim - 1 - dim)  # F.pad lists the last axis first
        widths[position], widths[position + 1] = pad
    return F.pad(x, widths)


def _windows(x: Tensor, dims: tuple[int, ...], size: int, stride: int, pad: tuple[int, int]) -> Tensor:
    """Σ_{d < size} x[..., u·stride + d, ...] taken on every axis in ``dims`` with the same offset d."""
    x = _pad_dims(x, dims, pad)
    n = x.shape[dims[0]]
    outputs = (n - size) // stride + 1
    if outputs < 1:
        raise RuntimeError("ntkit planning error: window larger than the padded input")
    total = None
    for offset in range(size):
        index = [slice(None)] * x.ndim
        for dim in dims:
            index[dim] = slice(offset, offset + stride * (outputs - 1) + 1, stride)
        part = x[tuple(index)]
        total = part.clone() if total is None else total.add_(part)
    return total


def window_sum(x: Tensor, dim: int, size: int, stride: int, pad: tuple[int, int]) -> Tensor:
    """Sum over windows along one axis, zero padding included: out[u] = Σ_{d<size} x_pad[u·stride + d]."""
    return _windows(x, (dim,), size, stride, pad)


def diagonal_window_sum(x: Tensor, dim: int, size: int, stride: int, pad: tuple[int, int]) -> Tensor:
    """The conv rule's box filter along the diagonal of the (dim, dim + 1) plane:
    out[u, u'] = Σ_{d<size} x_pad[u·stride + d, u'·stride + d] (the same tap d on both sides)."""
    return _windows(x, (dim, dim + 1), size, stride, pad)
