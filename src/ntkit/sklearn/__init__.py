"""scikit-learn integration: the infinite-width NTK/NNGP as GP kernels, and kernel machines built on them.

    from ntkit.sklearn import NTK, NNGP, NTKRegressor, NTKClassifier

* ``NTK``, ``NNGP``: ``sklearn.gaussian_process.kernels.Kernel`` subclasses with hyperparameters w_std, b_std.
* ``NTKRegressor``: the infinite-width network trained by gradient flow on the MSE for time t (t = ∞: kernel
  ridge regression), multi-output.
* ``NTKClassifier``: one-hot regression on the NTK/NNGP, or an SVM on the precomputed kernel.
"""

from .kernels import NNGP, NTK

__all__ = ["NTK", "NNGP", "NTKRegressor", "NTKClassifier"]


def __getattr__(name):
    # The estimators import more of scikit-learn; load them on first use.
    if name in ("NTKRegressor", "NTKClassifier"):
        from . import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'ntkit.sklearn' has no attribute {name!r}")


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
