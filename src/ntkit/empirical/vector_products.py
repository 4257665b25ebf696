r"""NTK-vector products: a block of the empirical NTK without storing any Jacobian.

Θ(X1, X2) = J(X1) J(X2)ᵀ, one column at a time: for a unit vector e_(y,b) on the outputs of X2, a vjp gives
J(X2)ᵀ e_(y,b) (one parameter-sized vector), and a jvp of f(X1) along it gives the column Θ(X1, x_y)_{·,b}
(the "NTK-vector products" method of PyTorch's torch.func NTK tutorial, after Novak et al. 2022). Columns are
vmapped in batches of ``basis_batch``, so memory is about basis_batch · (P + the forward of X1) instead of the
tutorial's vmap over every (x1, x2) pair.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import jvp, vjp, vmap

from .jacobian import VMAP_FALLBACK_WARNING
from .model_function import ModelFunction

__all__ = ["vector_product_block"]


def vector_product_block(fn: ModelFunction, x1: torch.Tensor, x2: torch.Tensor, basis_batch: int) -> torch.Tensor:
    """The full block Θ(x1, x2) as (n1, n2, O, O) from n2·O vjp/jvp pairs, ``basis_batch`` at a time."""
    params = fn.params
    with torch.enable_grad():
        f2, vjp_fn = vjp(lambda p: fn(x2, p), params)
        n2, outputs = f2.shape

        def column(unit):
            (cotangent,) = vjp_fn(unit)
            return jvp(lambda p: fn(x1, p), (params,), (cotangent,))[1]

        basis = torch.eye(n2 * outputs, dtype=f2.dtype, device=f2.device).view(n2 * outputs, n2, outputs)
        try:
            columns = vmap(column, chunk_size=basis_batch)(basis)
        except RuntimeError as err:
            # vmap cannot batch every model (data-dependent control flow, in-place writes into new tensors):
            # the same products one column at a time.
            warnings.warn(f"ntkit.empirical_ntk: the model {VMAP_FALLBACK_WARNING} over NTK-vector products "
                          f"({str(err)[:160]}...); computing them one column at a time, which is slow",
                          RuntimeWarning, stacklevel=2)
            columns = torch.stack([column(unit) for unit in basis])
    n1 = x1.shape[0]
    return columns.detach().view(n2, outputs, n1, outputs).permute(2, 0, 3, 1)
