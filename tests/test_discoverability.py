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


def test_one_b_std_default_for_mlp_and_sklearn():
    """Issue 13: nk.mlp defaulted to b_std = 0 while ntkit.sklearn (and every README example) used 0.1. One default,
    0.1 (Jacot et al.'s β), documented in nk.mlp, the sklearn docstrings and the README's Conventions."""
    import inspect

    from ntkit.sklearn import NNGP, NTK, NTKClassifier, NTKRegressor

    defaults = inspect.signature(nk.mlp).parameters
    assert defaults["b_std"].default == 0.1 and defaults["w_std"].default == 1.0
    for estimator in (NTK(), NNGP(), NTKRegressor(), NTKClassifier()):
        assert (estimator.b_std, estimator.w_std) == (0.1, 1.0), type(estimator).__name__
    # the same kernel, not only the same number: sklearn's default NTK is nk.mlp(3, ...)'s default NTK
    x = np.random.default_rng(0).standard_normal((5, 3))
    expected = nk.mlp(3, 8).kernel(torch.from_numpy(x)).ntk.numpy()
    np.testing.assert_allclose(NTK()(x), expected, rtol=1e-12)
    for text in (nk.mlp.__doc__, NTK.__doc__, NTKRegressor.__doc__):
        assert "0.1" in text and "Jacot" in text
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    conventions = readme[readme.index("## Conventions"):]
    assert "**b_std = 0.1**" in conventions


def test_trace_is_documented_as_a_sum_for_the_ntk_and_a_mean_for_the_nngp():
    """Issue 13: "trace" sums over outputs in empirical_ntk and averages in empirical_nngp. The names stay (API);
    both docstrings and the README's Conventions give the formulas and point at the other, and the values are
    what they say."""
    import pathlib

    assert "SUM" in nk.empirical_ntk.__doc__ and "MEAN" in nk.empirical_ntk.__doc__
    assert "MEAN" in nk.empirical_nngp.__doc__ and "SUMS" in nk.empirical_nngp.__doc__
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    conventions = readme[readme.index("## Conventions"):]
    assert "Σ_a Θ_aa(x, x')" in conventions and "(1/O) Σ_a f_a(x) f_a(x')" in conventions
    net = nk.mlp(1, 16, out_features=3).build(4, seed=0, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = nk.empirical_ntk(net, x)
    torch.testing.assert_close(nk.empirical_ntk(net, x, output="trace"), full.diagonal(dim1=2, dim2=3).sum(-1))
    outputs = net(x)
    torch.testing.assert_close(nk.empirical_nngp(net, x, output="trace"), outputs @ outputs.T / 3)
