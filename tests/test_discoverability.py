"""What a new user finds: lazily imported names in dir(nk), clear errors for common argument slips."""

import numpy as np
import pytest
import torch

import ntkit as nk


def test_dir_lists_the_lazily_imported_names():
    names = dir(nk)
    for name in ("empirical_ntk", "train", "GradientFlow", "KernelOperator", "conjugate_gradient", "mlp", "Serial"):
        assert name in names, name


def test_get_none_and_numpy_batch_sizes():
    arch = nk.mlp(1, 8)
    x = torch.randn(9, 3)
    with pytest.raises(ValueError, match="get must be 'nngp', 'ntk' or a sequence of them"):
        arch.kernel(x, get=None)
    torch.testing.assert_close(arch.kernel(x, batch_size=np.int64(4)).ntk, arch.kernel(x, batch_size=4).ntk)
    images = torch.randn(3, 1, 6, 6)
    cnn = nk.cnn(1, readout="gap")
    torch.testing.assert_close(cnn.kernel(images, batch_size=np.int32(2)).ntk, cnn.kernel(images, batch_size=2).ntk)


@pytest.mark.parametrize("factory", [nk.mlp, nk.cnn, nk.myrtle], ids=lambda f: f.__name__)
def test_presets_document_every_argument(factory):
    import inspect

    doc = factory.__doc__
    for name in inspect.signature(factory).parameters:
        assert f"{name}:" in doc or f"{name}," in doc or f"``{name}``" in doc, name


def test_spectrum_namespace_lists_its_public_names_only():
    names = dir(nk.spectrum)
    assert "math" not in names and "torch" not in names
    assert set(nk.spectrum.__all__) <= set(names)
