"""Data sets for the experiments: synthetic inputs and real data shipped inside installed packages."""

from .real import SKLEARN_DATASETS, digits, mnist5k, sklearn_dataset
from .synthetic import circle

__all__ = ["circle", "mnist5k", "digits", "sklearn_dataset", "SKLEARN_DATASETS"]
