"""An independent, slow reference for spatial kernels: one pair at a time, as plain matrix algebra.

For a pair (x, x') it keeps the joint covariance J of all positions of both inputs, a (2|S|, 2|S|) matrix with
blocks [[K(x,x), K(x,x')], [K(x',x), K(x',x')]], and applies each layer as written in the papers:
a conv is Σ_d E_d J E_dᵀ with E_d the matrix that picks input position p·s + d (zero where padded), a pooling is
P J Pᵀ with P the averaging matrix, an activation is its dual kernel entrywise with variances diag(J), Flatten and
GlobalAvgPool average each block's diagonal or all of it, a residual adds its branches, LayerNorm divides by
√(diag(J) diag(J)ᵀ), self-attention multiplies by softmax(qk·K(x, x)) on each side. No forms, tiles, tapes or window sums: nothing it shares
with ntkit's engine but the layers' hyper-parameters and their activations' dual functions.
"""

from __future__ import annotations

import math

import torch

import ntkit as nk
from ntkit.layers.conv import _Conv
from ntkit.layers.pooling import _AvgPool


def _taps(n: int, out: int, k: int, s: int, left: int) -> list[torch.Tensor]:
    mats = []
    for d in range(k):
        e = torch.zeros(out, n, dtype=torch.float64)
        for u in range(out):
            i = u * s + d - left
            if 0 <= i < n:
                e[u, i] = 1.0
        mats.append(e)
    return mats


def _kron_all(mats):
    result = mats[0]
    for m in mats[1:]:
        result = torch.kron(result, m)
    return result


def _both(m):
    return torch.block_diag(m, m)


def _pair(arch, x, y):
    shape = tuple(x.shape[1:])
    channels = x.shape[0]
    pos = math.prod(shape)
    z = torch.cat([x.reshape(channels, pos), y.reshape(channels, pos)], 1)
    joint = z.T @ z / channels
    joint, theta, _, _ = _run(arch.flatten(), joint, torch.zeros_like(joint), channels, shape)
    return joint[0, 1], theta[0, 1]


def _run(layers, joint, theta, width, shape):
    for layer in layers:
        if isinstance(layer, nk.Residual):
            a = _run(layer.block.flatten(), joint, theta, width, shape)
            b = (joint, theta, width, shape) if layer.shortcut is None else \
                _run(layer.shortcut.flatten(), joint, theta, width, shape)
            joint, theta, width, shape = a[0] + b[0], a[1] + b[1], a[2], a[3]
        elif isinstance(layer, nk.SelfAttention):
            pos = math.prod(shape)
            own = [joint[:pos, :pos], joint[pos:, pos:]]
            mix = torch.block_diag(*(torch.softmax(layer.qk_std * k, -1) for k in own))
            mixed_k, mixed_t = mix @ joint @ mix.T, mix @ theta @ mix.T
            ov2, b2 = layer.ov_std ** 2, layer.b_std ** 2
            joint, theta = ov2 * mixed_k + b2, ov2 * mixed_t + b2 + 2 * ov2 * mixed_k
            width = layer.out_channels
        elif isinstance(layer, nk.LayerNorm):
            root = joint.diagonal().sqrt()
            joint, theta = joint / torch.outer(root, root), theta / torch.outer(root, root)
        elif isinstance(layer, _Conv):
            pads = layer._pads(shape)
            axes = [_taps(n, (n + l + r - k) // s + 1, k, s, l)
                    for n, k, s, (l, r) in zip(shape, layer.kernel_size, layer.stride, pads)]
            taps = math.prod(layer.kernel_size)
            box_k = sum(_both(_kron_all(e)) @ joint @ _both(_kron_all(e)).T for e in _product(axes)) / taps
            box_t = sum(_both(_kron_all(e)) @ theta @ _both(_kron_all(e)).T for e in _product(axes)) / taps
            new = layer.w_std ** 2 * box_k + layer.b_std ** 2
            if layer.parameterization == "ntk":
                theta = new + layer.w_std ** 2 * box_t
            else:
                theta = width * taps * box_k + 1.0 + layer.w_std ** 2 * box_t
            joint, width = new, layer.out_channels
            shape = tuple(axis[0].shape[0] for axis in axes)
        elif isinstance(layer, _AvgPool):
            mats = []
            for n, k, s, p in zip(shape, layer.kernel_size, layer.stride, layer.padding):
                out = (n + 2 * p - k) // s + 1
                mats.append(sum(_taps(n, out, k, s, p)) / k)
            m = _both(_kron_all(mats))
            joint, theta = m @ joint @ m.T, m @ theta @ m.T
            shape = tuple(m_.shape[0] for m_ in mats)
        elif isinstance(layer, (nk.Flatten, nk.GlobalAvgPool)):
            pos = math.prod(shape)
            blocks = lambda t: t.reshape(2, pos, 2, pos).permute(0, 2, 1, 3)  # noqa: E731
            if isinstance(layer, nk.Flatten):
                joint, theta = (blocks(t).diagonal(0, 2, 3).mean(-1) for t in (joint, theta))
                width = width * pos
            else:
                joint, theta = (blocks(t).mean((2, 3)) for t in (joint, theta))
            shape = ()
        elif isinstance(layer, nk.Dense):
            new = layer.w_std ** 2 * joint + layer.b_std ** 2
            theta = new + layer.w_std ** 2 * theta if layer.parameterization == "ntk" else \
                width * joint + 1.0 + layer.w_std ** 2 * theta
            joint, width = new, layer.out_features
        elif isinstance(layer, nk.Activation):
            var = joint.diagonal()
            k, kdot = layer.dual(joint, var[:, None], var[None, :])
            joint, theta = k, theta * kdot
        else:
            raise NotImplementedError(repr(layer))
    return joint, theta, width, shape


def _product(axes):
    if len(axes) == 1:
        return [[e] for e in axes[0]]
    return [[e, *rest] for e in axes[0] for rest in _product(axes[1:])]


def reference_kernel(arch, x1: torch.Tensor, x2: torch.Tensor | None = None):
    """(nngp, ntk), each (N1, N2), float64, one pair at a time."""
    x1 = x1.double()
    x2 = x1 if x2 is None else x2.double()
    nngp = torch.empty(len(x1), len(x2), dtype=torch.float64)
    ntk = torch.empty_like(nngp)
    for i in range(len(x1)):
        for j in range(len(x2)):
            nngp[i, j], ntk[i, j] = _pair(arch, x1[i], x2[j])
    return nngp, ntk
