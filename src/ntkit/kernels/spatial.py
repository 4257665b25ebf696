r"""The spatial forms of a kernel state and the windowed sums that conv and pooling rules are made of.

A pair of inputs (x, x') of shape (C, S₁[, S₂]) has, after any conv layer, a covariance between every position p
of x and p' of x': K[p, p'] (DESIGN.md, "Spatial kernels"). A tile of t1 × t2 pairs is held in one of three forms:

* ``"flat"``     (t1, t2): no spatial axes (after Flatten, GlobalAvgPool, or for (N, d) inputs);
* ``"diagonal"`` (t1, t2, S₁[, S₂]): only p = p'. Conv and activation rules map the diagonal to the diagonal, and a
  Flatten readout needs nothing else, so a network without pooling costs O(|S|) per pair;
* ``"full"``     (t1, t2, S₁, S₂, S₁', S₂'): every (p, p') in the order of the input Gram x[:, p]·x'[:, p'] (so a
  one-pair tile comes out of the Gram product without a transpose). Pooling (which mixes positions) needs it:
  O(|S|²) per pair.

Per-position variances q(x, p) = K(x, x)[p, p] travel beside the pair state as ``var1`` (t1, 1, ...) and ``var2``
(1, t2, ...), laid out by :func:`variance_layout` so that they broadcast against the pair state: an activation's
dual kernel then applies entrywise, unchanged.
"""

from __future__ import annotations

import math

import torch

from .scratch import empty, out_buffer

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


def input_covariance(x1: Tensor, x2: Tensor, form: str, aligned: bool = False, scratch=None) -> Tensor:
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
        left, right = a.transpose(1, 2).reshape(-1, channels), b.permute(1, 0, 2).reshape(channels, -1)
        cov = torch.mm(left, right, out=out_buffer(scratch, (left.shape[0], right.shape[1]), left, left, right))
        product = cov
        cov = cov.reshape(a.shape[0], a.shape[2], b.shape[0], b.shape[2]).transpose(1, 2)
        if cov.shape[0] > 1 and cov.shape[1] > 1:  # pair axes to the front: a copy, unless one side is one point
            cov = empty(scratch, cov.shape, cov).copy_(cov)
            if scratch is not None:
                scratch.give(product)
    return cov.reshape(*cov.shape[:2], *spatial, *spatial).div_(channels)


def variance_layout(v: Tensor, form: str, side: int, aligned: bool = False) -> Tensor:
    """Per-position variances v (t, *S) laid out to broadcast against a pair state of ``form``.

    side 1 -> (t, 1, ...) varying along p; side 2 -> (1, t, ...) varying along p' ((t, 1, ...) when ``aligned``)."""
    t, spatial = v.shape[0], tuple(v.shape[1:])
    lead = (t, 1) if side == 1 or aligned else (1, t)
    if form in ("flat", "diagonal"):
        return v.reshape(*lead, *spatial)
    ones = (1,) * len(spatial)
    return v.reshape(*lead, *(spatial + ones if side == 1 else ones + spatial))


def diagonal(state: Tensor, spatial_dims: int) -> Tensor:
    """(a, b, S₁, S₂, S₁', S₂') -> (a, b, S₁, S₂): the entries with p = p'."""
    for taken in range(spatial_dims):
        state = state.diagonal(0, 2, 2 + spatial_dims - taken)  # the (s, s') diagonal of the next axis, to the end
    return state


def to_form(state: Tensor, form: str, wanted: str, spatial_dims: int) -> Tensor:
    """Convert a pair state to a weaker form (full -> diagonal); equal forms and flat states pass through."""
    if form == wanted or form == "flat":
        return state
    if form == "full" and wanted == "diagonal":
        return diagonal(state, spatial_dims).contiguous()
    raise RuntimeError(f"ntkit planning error: a {form} state cannot serve a layer that needs the {wanted} form")


def _tap_ranges(n: int, size: int, stride: int, pad: tuple[int, int]):
    """For each tap d: the outputs u0:u1 it reaches and the first input index (u·stride + d − left ∈ [0, n))."""
    outputs = (n + pad[0] + pad[1] - size) // stride + 1
    if outputs < 1:
        raise RuntimeError("ntkit planning error: window larger than the padded input")
    ranges = []
    for d in range(size):
        u0 = max(0, -(-(pad[0] - d) // stride))
        u1 = min(outputs, (n - 1 - d + pad[0]) // stride + 1)
        if u1 > u0:
            ranges.append((u0, u1, u0 * stride + d - pad[0]))
    return outputs, ranges


def _windows(x: Tensor, dims: tuple[int, ...], size: int, stride: int, pad: tuple[int, int],
             scale: float = 1.0, scratch=None) -> Tensor:
    """Σ_{d < size} x_pad[..., u·stride + d, ...] on every axis in ``dims`` with the same tap d, zero padding
    included. Each tap adds a strided slice of x into the part of the output it reaches, so the padded copy is
    never made; taps that reach every output start the sum (no zero fill), and the output buffer comes from
    ``scratch`` when one is lent. The sum is multiplied by ``scale`` on the way."""
    outputs, ranges = _tap_ranges(x.shape[dims[0]], size, stride, pad)
    ranges.sort(key=lambda r: r[1] - r[0], reverse=True)
    parts = []
    for u0, u1, i0 in ranges:
        source = [slice(None)] * x.ndim
        target = [slice(None)] * x.ndim
        for dim in dims:
            source[dim] = slice(i0, i0 + stride * (u1 - u0 - 1) + 1, stride)
            target[dim] = slice(u0, u1)
        parts.append((u1 - u0 == outputs, tuple(source), tuple(target)))
    shape = list(x.shape)
    for dim in dims:
        shape[dim] = outputs
    if len(parts) >= 2 and parts[0][0] and parts[1][0]:  # two full taps start the sum in one pass
        total = torch.add(x[parts[0][1]], x[parts[1][1]], out=out_buffer(scratch, shape, x, x))
        if scale != 1.0:
            total.mul_(scale)
        parts = parts[2:]
    elif parts and parts[0][0]:
        total = torch.mul(x[parts[0][1]], scale, out=out_buffer(scratch, shape, x, x))
        parts = parts[1:]
    else:
        total = empty(scratch, shape, x).zero_()
    for _, source, target in parts:
        total[target].add_(x[source], alpha=scale)
    return total


def window_sum(x: Tensor, dim: int, size: int, stride: int, pad: tuple[int, int], scale: float = 1.0,
               scratch=None) -> Tensor:
    """Sum over windows along one axis, zero padding included: out[u] = scale · Σ_{d<size} x_pad[u·stride + d]."""
    return _windows(x, (dim,), size, stride, pad, scale, scratch)


def diagonal_window_sum(x: Tensor, dims: tuple[int, int], size: int, stride: int, pad: tuple[int, int],
                        scale: float = 1.0, scratch=None) -> Tensor:
    """The conv rule's box filter along the diagonal of the (s, s') plane on axes ``dims``:
    out[u, u'] = scale · Σ_{d<size} x_pad[u·stride + d, u'·stride + d] (the same tap d on both sides)."""
    return _windows(x, dims, size, stride, pad, scale, scratch)
