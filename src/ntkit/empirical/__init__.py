"""Finite-width kernels of any ``torch.nn.Module``: the empirical NTK (layerwise fast path, Jacobian contraction,
NTK-vector products, chunked under a memory budget), the empirical NNGP, and width convergence to the
infinite-width limit of an ntkit architecture."""

from .api import empirical_nngp, empirical_ntk
from .convergence import WidthConvergence, width_convergence

__all__ = ["empirical_ntk", "empirical_nngp", "width_convergence", "WidthConvergence"]
