"""Convolutions on the layerwise fast path (``ntkit.empirical.convolutions``): im2col patches, the direct
per-sample weight gradient, and the choice between them."""

import pytest
import torch
from torch import nn

from empirical_models import brute_force_ntk, zoo_case
from ntkit import empirical_ntk
from ntkit.empirical import layerwise
from ntkit.empirical.convolutions import conv_patches, direct_weight_gradient, weight_gradient_form
from ntkit.empirical.layerwise import _weight_gradient

CONVS = [
    nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
    nn.Conv1d(2, 2, 4, padding="same", padding_mode="replicate"),
    nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    nn.Conv2d(3, 4, 3, padding="same", dilation=2, padding_mode="reflect"),
    nn.Conv2d(3, 3, 2, padding="valid", groups=3),
    nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0), groups=2),
    nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("conv", CONVS)
def test_patches_reproduce_the_convolution(conv):
    """Σ_k W_g[c, k] p_g(l)[k] + b = conv(x)[c, l] for every group, channel and position."""
    conv = conv.double()
    spatial = len(conv.kernel_size)
    x = torch.randn(2, conv.in_channels, *([7] * spatial), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    patches = conv_patches(conv, x)  # (n, G, L, K)
    groups = conv.groups
    weight = conv.weight.reshape(groups, conv.out_channels // groups, -1)  # (G, C, K)
    out = torch.einsum("nglk,gck->ngcl", patches, weight).reshape(2, conv.out_channels, -1)
    if conv.bias is not None:
        out = out + conv.bias[None, :, None]
    torch.testing.assert_close(out, conv(x).reshape(2, conv.out_channels, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", CONVS)
def test_direct_weight_gradient_equals_the_patch_products(conv):
    """The grouped backward-weight convolution gives Σ_l g_a(l) p(l)ᵀ per sample and output, in the same order
    (output channel, then patch), for every stride, padding mode, dilation, group count and dimension."""
    conv = conv.double()
    spatial = len(conv.kernel_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, conv.in_channels, *([7] * spatial), generator=g, dtype=torch.float64)
    out_shape = conv(x).shape
    cotangents = torch.randn(4, 3, *out_shape[1:], generator=g, dtype=torch.float64).transpose(0, 1)  # (n, O, ...)
    groups = conv.groups
    grouped = cotangents.reshape(3, 4, groups, conv.out_channels // groups, -1)
    expected = _weight_gradient(grouped, conv_patches(conv, x))
    torch.testing.assert_close(direct_weight_gradient(conv, x, cotangents), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device, dtype, conv, positions, expected", [
    ("cpu", torch.float32, nn.Conv2d(32, 32, 3), 28 * 28, "direct"),  # the torch.func tutorial CNN's conv2/conv3
    ("cpu", torch.float32, nn.Conv2d(64, 64, 3), 56 * 56, "direct"),  # a ResNet's first stage at 224 x 224
    ("cpu", torch.float32, nn.Conv2d(64, 64, 3), 8 * 8, "im2col"),  # few positions per channel
    ("cpu", torch.float32, nn.Conv2d(3, 32, 3), 30 * 30, "im2col"),  # an RGB stem: few input channels
    ("cpu", torch.float32, nn.Conv2d(32, 32, 3, groups=2), 28 * 28, "im2col"),
    ("cpu", torch.float64, nn.Conv2d(32, 32, 3), 28 * 28, "im2col"),  # oneDNN has no float64 convolutions
    ("cuda", torch.float32, nn.Conv2d(32, 32, 3), 28 * 28, "im2col"),  # unmeasured: the patch products
])
def test_weight_gradient_form(device, dtype, conv, positions, expected):
    assert weight_gradient_form(device, dtype, conv, positions) == expected


@pytest.mark.parametrize("name", ["strided_cnn", "grouped_cnn", "batchnorm_eval", "shared_layers", "linear_tail"])
def test_kernels_with_direct_weight_gradients_match_brute_force(name, monkeypatch):
    """Every convolution of the zoo's convolutional models through the direct form (float64, where the default
    would take the patches): the NTK equals brute-force Jacobians."""
    monkeypatch.setattr(layerwise, "weight_gradient_form", lambda *args: "direct")
    model, x1, x2 = zoo_case(name)
    torch.testing.assert_close(empirical_ntk(model, x1, x2, method="layerwise"), brute_force_ntk(model, x1, x2),
                               rtol=1e-10, atol=1e-10)
