"""Kernel matrices too large to hold: lazy operators, low-rank preconditioners and iterative solvers."""

from .kernel_operator import KernelOperator
from .preconditioners import LowRankPreconditioner, nystrom, pivoted_cholesky
from .solvers import SolveReport, conjugate_gradient

__all__ = ["KernelOperator", "SolveReport", "conjugate_gradient", "LowRankPreconditioner", "nystrom",
           "pivoted_cholesky"]
