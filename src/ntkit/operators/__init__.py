"""Kernel matrices too large to hold: lazy operators, low-rank preconditioners and iterative solvers."""

from .falkon import FalkonModel, falkon
from .kernel_operator import KernelOperator
from .preconditioners import LowRankPreconditioner, nystrom, pivoted_cholesky
from .solvers import SolveReport, conjugate_gradient

__all__ = ["KernelOperator", "SolveReport", "conjugate_gradient", "falkon", "FalkonModel", "LowRankPreconditioner", "nystrom",
           "pivoted_cholesky"]


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
