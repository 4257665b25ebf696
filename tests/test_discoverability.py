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


PUBLIC_MODULES = ["ntkit", "ntkit.layers", "ntkit.kernels", "ntkit.dynamics", "ntkit.empirical", "ntkit.sklearn",
                  "ntkit.operators", "ntkit.data", "ntkit.experiments", "ntkit.spectrum"]
HELPERS = {"math", "numbers", "torch", "np", "numpy", "nn", "F", "annotations", "import_module", "partial",
           "dataclass", "warnings", "Path"}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_namespaces_list_their_public_names_only(name):
    """Issue 13: dir() of a public module lists what it offers (its __all__, and a package's subpackages), not
    the modules and helpers it imports (math, torch, import_module, from __future__'s annotations)."""
    import importlib
    import types

    module = importlib.import_module(name)
    names = [n for n in dir(module) if not n.startswith("_")]
    public = set(module.__all__)
    assert public <= set(names), public - set(names)
    assert not HELPERS & set(names), HELPERS & set(names)
    for n in names:
        value = getattr(module, n)  # every listed name resolves, the lazily imported ones included
        is_submodule = isinstance(value, types.ModuleType) and value.__name__.startswith(name + ".")
        assert n in public or is_submodule, f"{name}.{n} is listed by dir() but is not public"
