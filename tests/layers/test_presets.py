"""nk.myrtle and nk.cnn: the architectures the papers describe, and their argument checks."""

import math

import pytest
import torch

import ntkit as nk


@pytest.mark.parametrize("depth, repeats", [(5, (2, 1, 1)), (7, (2, 2, 2)), (10, (3, 3, 3))])
def test_myrtle_follows_shankar_et_al(depth, repeats):
    layers = nk.myrtle(depth).flatten()
    convs = [layer for layer in layers if isinstance(layer, nk.Conv2d)]
    assert len(convs) == sum(repeats) and all(c.kernel_size == (3, 3) and c.padding == ("same", "same")
                                              for c in convs)
    assert all(c.w_std == pytest.approx(math.sqrt(2)) and c.b_std == 0 for c in convs)
    kinds = "".join("c" if isinstance(l, nk.Conv2d) else "p" if isinstance(l, nk.AvgPool2d) else
                    "r" if isinstance(l, nk.ReLU) else "f" if isinstance(l, nk.Flatten) else "d" for l in layers)
    a, b, c = repeats
    assert kinds == "cr" * a + "p" + "cr" * b + "p" + "cr" * c + "ppp" + "fd"
    net = nk.myrtle(depth, width=4).build((3, 32, 32), seed=0)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn_readouts_and_dims():
    gap, flat = nk.cnn(3, readout="gap"), nk.cnn(3, readout="flatten")
    assert isinstance(gap.flatten()[-2], nk.GlobalAvgPool) and isinstance(flat.flatten()[-2], nk.Flatten)
    assert gap.input_form("flat") == "full" and flat.input_form("flat") == "diagonal"
    sequences = torch.randn(3, 2, 10)
    assert nk.cnn(2, dims=1, kernel_size=5).kernel(sequences).ntk.shape == (3, 3)


@pytest.mark.parametrize("make, message", [
    (lambda: nk.myrtle(6), r"depth must be one of \[5, 7, 10\]"),
    (lambda: nk.myrtle(5, width=0), "width must be a positive integer"),
    (lambda: nk.cnn(0), "depth must be a positive integer"),
    (lambda: nk.cnn(2, readout="max"), "readout must be 'flatten' or 'gap'"),
    (lambda: nk.cnn(2, dims=3), "dims must be 1 or 2"),
])
def test_preset_arguments(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_myrtle_on_images_too_small_for_six_poolings():
    """28 -> 14 -> 7 -> 3 -> 1: the fifth pooling (layer 12) has nothing left to pool."""
    with pytest.raises(ValueError, match=r"layer 12 \(AvgPool2d\(2\)\): kernel_size 2 is larger than the input"):
        nk.myrtle(5).kernel(torch.randn(2, 3, 28, 28))
