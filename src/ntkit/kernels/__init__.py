"""Kernel containers and activation dual kernels (closed forms and Gauss–Hermite quadrature)."""

from . import dual, quadrature
from .kernel import Kernel, KernelState

__all__ = ["Kernel", "KernelState", "dual", "quadrature"]


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
