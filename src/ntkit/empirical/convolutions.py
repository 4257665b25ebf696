r"""Convolutions on the layerwise fast path: their input patches, and two ways to form per-sample weight gradients.

For a convolution z = W ⋆ a (groups G, C_out/G output channels per group, patches p(l) of length
K = (C_in/G)·Πk at the L output positions), the gradient of output f_a with respect to W for one sample is
∂f_a/∂W = Σ_l g_a(l) p(l)ᵀ, g_a = ∂f_a/∂z. ``layerwise.py`` forms it either

* from im2col patches (``conv_patches``), one batched (C, L) x (L, K) product per output, or
* directly (``direct_weight_gradient``), as the weight gradient of one convolution with a group per sample:
  stacking the n samples' channels, (1, n·C_in, *S) ⋆ W' = (1, n·C_out, *S'), with n·G groups, has the n
  per-sample gradients as its weight gradient (n·C_out, C_in/G, *k). oneDNN computes it from the image,
  without the (n, K, L) patch tensor.

``weight_gradient_form`` picks one from the layer's sizes, from timings on this project's CPU (oneDNN, float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["conv_padding", "conv_patches", "direct_weight_gradient", "weight_gradient_form"]


def conv_padding(module) -> tuple[list[int], str]:
    """The F.pad list (last spatial axis first) and mode that reproduce the module's padding."""
    spatial = len(module.kernel_size)
    if isinstance(module.padding, str):
        pairs = []
        for k, d in zip(module.kernel_size, module.dilation):
            total = 0 if module.padding == "valid" else d * (k - 1)
            pairs.append((total // 2, total - total // 2))  # torch's "same": the extra pixel on the right
    else:
        pairs = [(p, p) for p in module.padding]
    pad = [v for pair in reversed(pairs[:spatial]) for v in pair]
    return pad, "constant" if module.padding_mode == "zeros" else module.padding_mode


def conv_patches(module, x: torch.Tensor) -> torch.Tensor:
    """im2col for Conv1d/2d/3d: (n, C_in, *S) -> (n, G, L, (C_in/G)·Πk), patch order (channel, k_1, ..., k_d)."""
    pad, mode = conv_padding(module)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    n, channels = x.shape[:2]
    groups = module.groups
    if len(module.kernel_size) == 2:
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (n, C·k², L)
        return cols.view(n, groups, -1, cols.shape[-1]).transpose(2, 3)
    windows = x
    for axis, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        windows = windows.unfold(2 + axis, d * (k - 1) + 1, s)
        if d > 1:
            windows = windows[..., ::d]
    spatial = len(module.kernel_size)
    # (n, C, *out, *k) -> (n, G, *out, C/G, *k)
    windows = windows.reshape(n, groups, channels // groups, *windows.shape[2:])
    order = [0, 1, *range(3, 3 + spatial), 2, *range(3 + spatial, 3 + 2 * spatial)]
    windows = windows.permute(order)
    positions = math.prod(windows.shape[2:2 + spatial])
    return windows.reshape(n, groups, positions, -1)


def direct_weight_gradient(module, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients (n, O, C_out·(C_in/G)·Πk) of a convolution, from its input x (n, C_in, *S) and
    the output cotangents (n, O, C_out, *S'), through one grouped backward-weight convolution per output a
    (``torch.nn.grad``'s, with n·G groups). Returned output-major, as ``layerwise._weight_gradient`` does."""
    n, outputs = cotangents.shape[:2]
    pad, mode = conv_padding(module)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    spatial = len(module.kernel_size)
    stacked = x.reshape(1, n * x.shape[1], *x.shape[2:])
    weight_size = (n * module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    backward_weight = (torch.nn.grad.conv1d_weight, torch.nn.grad.conv2d_weight,
                       torch.nn.grad.conv3d_weight)[spatial - 1]
    jac = torch.empty(outputs, n, math.prod(weight_size[1:]) * module.out_channels, dtype=x.dtype,
                      device=x.device)
    for a in range(outputs):
        g = cotangents[:, a].reshape(1, n * module.out_channels, *cotangents.shape[3:])
        grad = backward_weight(stacked, weight_size, g, module.stride, 0, module.dilation, n * module.groups)
        jac[a] = grad.view(n, -1)
    return jac.transpose(0, 1)


# Measured on this project's 2-core CPU (oneDNN, float32), chunks of 8-14 samples, 10 outputs, per-output time
# direct / im2col (im2col's unfold included): 0.81 and 0.77 for 32 -> 32 channels at 30x30 and 28x28 outputs
# (0.72 for 64 -> 64 at 56x56, 64 samples); 0.98 for 64 -> 64 at 16x16; 1.3-2.1 for 64-128 channels at 4x4-8x8;
# 1.6 for 3 input channels (a 3x3 or 7x7 stem). Direct wins where each group's channels are many enough and the
# output positions far outnumber the output channels.
_DIRECT_MIN_INPUT_CHANNELS = 16
_DIRECT_MIN_POSITIONS_PER_CHANNEL = 8


def weight_gradient_form(device_kind: str, dtype: torch.dtype, module, positions: int) -> str:
    """"direct" or "im2col" for a convolution with ``positions`` output positions per sample. Direct only where it
    was measured faster: CPUs in float32 (oneDNN; float64 convolutions take a slower path), one group. Elsewhere
    (CUDA is unmeasured here) the batched products of the patches."""
    if device_kind != "cpu" or dtype != torch.float32 or module.groups != 1:
        return "im2col"
    if module.in_channels < _DIRECT_MIN_INPUT_CHANNELS:
        return "im2col"
    return "direct" if positions >= _DIRECT_MIN_POSITIONS_PER_CHANNEL * module.out_channels else "im2col"
