"""Kernel containers and activation dual kernels (closed forms and Gauss–Hermite quadrature)."""

from . import dual, quadrature
from .kernel import Kernel, KernelState

__all__ = ["Kernel", "KernelState", "dual", "quadrature"]
