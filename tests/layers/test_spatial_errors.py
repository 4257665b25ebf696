"""Bad spatial architectures and inputs: one test per case, each error naming the argument and the layer's position."""

import pytest
import torch

import ntkit as nk

IMAGES = torch.randn(3, 2, 6, 6)
CONV_NET = nk.Serial(nk.Conv2d(4, 3), nk.ReLU(), nk.Flatten(), nk.Dense(1))


def test_wrong_ndim_for_the_first_layer():
    with pytest.raises(ValueError, match=r"x1 of shape \(3, 2, 6\): layer 0 \(Conv2d\(4, 3.*\)\) expects 2 spatial "
                                         r"axes \(inputs \(N, C, H, W\)\) but receives shape \(2, 6\)"):
        CONV_NET.kernel(torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d.*expects 2 spatial axes.*receives shape \(5,\)"):
        CONV_NET.kernel(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"in_shape=\(5,\): layer 0 \(Conv2d"):
        CONV_NET.build(5)


def test_kernel_larger_than_the_input_with_valid_padding():
    arch = nk.Serial(nk.Conv2d(4, 7, padding="valid"), nk.ReLU(), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d.*\): kernel_size 7 is larger than the input \(6 along "
                                         r"spatial axis 0\) with padding='valid'"):
        arch.kernel(IMAGES)
    pool = nk.Serial(nk.Conv2d(4, 3), nk.AvgPool2d(8), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(AvgPool2d\(8\)\): kernel_size 8 is larger than the input"):
        pool.kernel(IMAGES)


def test_pooling_after_flatten():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.Flatten(), nk.AvgPool2d(2), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(AvgPool2d\(2\)\) needs a spatial input but receives flat shape "
                                         r"\(144,\).*after a Flatten"):
        arch.kernel(IMAGES)
    conv = nk.Serial(nk.Conv2d(4, 3), nk.GlobalAvgPool(), nk.Conv2d(4, 3), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(Conv2d.*expects 2 spatial axes.*after a Flatten or global"):
        conv.kernel(IMAGES)


def test_dense_on_a_spatial_state():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.ReLU(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(1.*\)\) needs a flat input but receives shape "
                                         r"\(4, 6, 6\): put nk.Flatten\(\) or nk.GlobalAvgPool\(\) before it"):
        arch.kernel(IMAGES)


def test_architecture_without_a_readout():
    with pytest.raises(ValueError, match=r"ends with a spatial representation \(4, 6, 6\); end it with a readout"):
        nk.Serial(nk.Conv2d(4, 3), nk.ReLU()).kernel(IMAGES)


def test_activation_after_flatten_or_after_pooling_an_activation():
    after_flatten = nk.Serial(nk.Conv2d(4, 3), nk.Flatten(), nk.ReLU(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(ReLU\(\)\) does not follow a Dense or Conv layer"):
        after_flatten.kernel(IMAGES)
    # The global average of ReLU outputs is not Gaussian, so a second activation has no dual-kernel rule there.
    after_pool = nk.Serial(nk.Conv2d(4, 3), nk.ReLU(), nk.GlobalAvgPool(), nk.Erf(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 3 \(Erf\(\)\) does not follow a Dense or Conv layer"):
        after_pool.kernel(IMAGES)
    after_pool.build((2, 6, 6))  # the finite network is fine; only its kernel is undefined


@pytest.mark.parametrize("make, message", [
    (lambda: nk.Conv2d(0, 3), "Conv2d: out_channels must be a positive integer"),
    (lambda: nk.Conv2d(4, (3, 3, 3)), r"Conv2d: kernel_size must be an int or a tuple of 2 ints"),
    (lambda: nk.Conv1d(4, 0), "Conv1d: kernel_size must be a positive integer"),
    (lambda: nk.Conv2d(4, 3, stride=0), "Conv2d: stride must be a positive integer"),
    (lambda: nk.Conv2d(4, 3, padding="full"), "Conv2d: padding must be 'same', 'valid' or a non-negative int"),
    (lambda: nk.Conv2d(4, 3, padding=-1), "Conv2d: padding must be 'same', 'valid' or a non-negative int"),
    (lambda: nk.Conv2d(4, 3, w_std=-1.0), "Conv2d: w_std must be a finite non-negative number"),
    (lambda: nk.Conv2d(4, 3, parameterization="mup"), "Conv2d: parameterization must be one of"),
    (lambda: nk.AvgPool2d(2, padding=2), r"AvgPool2d: padding \(2, 2\) must be at most half of kernel_size"),
    (lambda: nk.AvgPool1d((2, 2)), r"AvgPool1d: kernel_size must be an int or a tuple of 1 ints"),
])
def test_bad_layer_arguments(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_in_shape_checked_against_the_inputs():
    arch = nk.Serial(*CONV_NET, in_shape=(2, 6, 6))
    with pytest.raises(ValueError, match=r"x1 has shape \(3, 3, 6, 6\) \(per sample \(3, 6, 6\)\) but the "
                                         r"architecture expects in_shape=\(2, 6, 6\)"):
        arch.kernel(torch.randn(3, 3, 6, 6))
    with pytest.raises(ValueError, match=r"in_shape must be \(features,\), \(channels, length\) or"):
        nk.Serial(nk.Dense(1), in_shape=(1, 2, 3, 4))
    assert arch.build(seed=0)(IMAGES).shape == (3, 1)


def test_x1_and_x2_with_different_image_shapes():
    with pytest.raises(ValueError, match="x1 and x2 must have the same feature shape"):
        CONV_NET.kernel(IMAGES, torch.randn(2, 2, 5, 6))


def test_a_request_too_big_for_memory_is_refused_with_an_estimate():
    x = torch.randn(200_000, 1, 4, 4)  # 2 x 160 GB of output on any machine
    with pytest.raises(MemoryError, match=r"the \(200000, 200000\) kernel\(s\).*needs about .* GiB"):
        nk.Serial(nk.Conv2d(2, 3), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1)).kernel(x)


def test_layernorm_on_a_one_channel_state():
    arch = nk.Serial(nk.Conv2d(1, 3), nk.LayerNorm(), nk.ReLU(), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(LayerNorm\(center=False\)\) normalises over channels but its "
                                         r"input has 1 channel \(shape \(1, 6, 6\)\); it needs at least 2"):
        arch.kernel(IMAGES)


def test_centred_layernorm_after_an_activation():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.ReLU(), nk.LayerNorm(center=True), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(LayerNorm\(center=True\)\): center=True is exact only on "
                                         r"zero-mean"):
        arch.kernel(IMAGES)


def test_residual_block_that_does_not_end_with_weights():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.Residual(nk.Conv2d(4, 3), nk.ReLU()), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\(.*\)\): the block must end with a Dense or Conv"):
        arch.kernel(IMAGES)


def test_residual_branches_of_different_shapes():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.Residual(nk.Conv2d(8, 3)), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(Residual.*the block gives shape \(8, 6, 6\) but the shortcut "
                                         r"gives \(4, 6, 6\); pass shortcut="):
        arch.kernel(IMAGES)
    inner = nk.Serial(nk.Conv2d(4, 3), nk.Residual(nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(4, 3)), nk.Flatten(),
                      nk.Dense(1))
    with pytest.raises(ValueError, match=r"the block gives shape \(4, 3, 3\) but the shortcut gives \(4, 6, 6\)"):
        inner.kernel(IMAGES)


def test_errors_inside_a_residual_block_name_the_nested_position():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.Residual(nk.ReLU(), nk.Dense(4)), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\(.*\)\), block, layer 1 \(Dense\(4.*\)\) needs a flat "
                                         r"input"):
        arch.kernel(IMAGES)


def test_self_attention_on_images():
    arch = nk.Serial(nk.Conv2d(4, 3), nk.SelfAttention(4), nk.Flatten(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(SelfAttention\(4.*\)\) attends over the positions of \(N, C, L\) "
                                         r"sequences but receives shape \(4, 6, 6\)"):
        arch.kernel(IMAGES)
    with pytest.raises(ValueError, match="SelfAttention: heads must be a positive integer"):
        nk.SelfAttention(4, heads=0)
