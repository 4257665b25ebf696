r"""NTK-vector products: a block of the empirical NTK without storing any Jacobian.

Θ(X1, X2) = J(X1) J(X2)ᵀ, one column at a time: for a unit vector e_(y,b) on the outputs of X2, a vjp gives
J(X2)ᵀ e_(y,b) (one parameter-sized vector), and a jvp of f(X1) along it gives the column Θ(X1, x_y)_{·,b}
(the "NTK-vector products" method of PyTorch's torch.func NTK tutorial, after Novak et al. 2022). Columns are
vmapped in batches of ``basis_batch``, so memory is about basis_batch · (P + the forward of X1) instead of the
tutorial's vmap over every (x1, x2) pair.

Fallback, with a warning: models whose ops have no forward-mode derivative (fused attention kernels, some custom
ops) get the block from reverse mode alone, Θ_(x,a),(y,b) = (J(X1)ᵀ e_(x,a)) · (J(X2)ᵀ e_(y,b)), ``basis_batch``
vjps of each side at a time (memory 2 · basis_batch · P); when ``vmap`` cannot batch the model, one at a time.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import jvp, vjp, vmap

from .jacobian import VMAP_FALLBACK_WARNING
from .model_function import ModelFunction
from .trees import batch_size

__all__ = ["vector_product_block"]


def _rows(vjp_fn, units: torch.Tensor, batched: bool) -> torch.Tensor:
    """(len(units), P): J(X)ᵀ u for each unit cotangent u, flattened over all parameters."""
    def flat(unit):
        return torch.cat([g.reshape(-1) for g in vjp_fn(unit)[0].values()])

    return vmap(flat)(units) if batched else torch.stack([flat(unit) for unit in units])


def _reverse_mode_block(vjp_1, vjp_2, basis_1, basis_2, basis_batch: int) -> torch.Tensor:
    """(Θ as (n1·O, n2·O), whether vmap batched the rows) from parameter-space rows J(X)ᵀ e of both sides,
    ``basis_batch`` rows of each at a time; one row is tried batched first, and on failure all go one by one."""
    try:
        _rows(vjp_1, basis_1[:1], True)
        batched = True
    except RuntimeError:
        batched = False
    out = basis_1.new_empty(basis_1.shape[0], basis_2.shape[0])
    for i in range(0, basis_1.shape[0], basis_batch):
        rows = _rows(vjp_1, basis_1[i:i + basis_batch], batched)
        for j in range(0, basis_2.shape[0], basis_batch):
            out[i:i + basis_batch, j:j + basis_batch] = rows @ _rows(vjp_2, basis_2[j:j + basis_batch], batched).T
    return out, batched


def _unit_basis(f: torch.Tensor) -> torch.Tensor:
    n, outputs = f.shape
    return torch.eye(n * outputs, dtype=f.dtype, device=f.device).view(n * outputs, n, outputs)


def vector_product_block(fn: ModelFunction, x1, x2, basis_batch: int) -> torch.Tensor:
    """The full block Θ(x1, x2) as (n1, n2, O, O) from n2·O vjp/jvp pairs, ``basis_batch`` at a time (x1, x2: one
    tensor or a pytree of tensors each)."""
    params = fn.params
    n1 = batch_size(x1)
    with torch.enable_grad(), warnings.catch_warnings():
        # torch notes ops it batches by a slow fallback ("performance drop"): not the user's concern here.
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        f2, vjp_2 = vjp(lambda p: fn(x2, p), params)
        n2, outputs = f2.shape
        basis_2 = _unit_basis(f2)

        def column(unit):
            (cotangent,) = vjp_2(unit)
            return jvp(lambda p: fn(x1, p), (params,), (cotangent,))[1]

        try:
            columns = vmap(column, chunk_size=basis_batch)(basis_2)
        except RuntimeError as err:  # includes NotImplementedError (no forward-mode formula)
            f1, vjp_1 = vjp(lambda p: fn(x1, p), params)
            block, batched = _reverse_mode_block(vjp_1, vjp_2, _unit_basis(f1), basis_2, basis_batch)
            how = "" if batched else (f"; the model also {VMAP_FALLBACK_WARNING}, so one product at a time, "
                                      "which is slow")
            warnings.warn(f"ntkit.empirical_ntk: forward-mode products failed ({str(err)[:160]}...); the block "
                          f"comes from reverse-mode products of both sides{how}", RuntimeWarning, stacklevel=2)
            return block.detach().view(n1, outputs, n2, outputs).permute(0, 2, 1, 3)
    return columns.detach().view(n2, outputs, n1, outputs).permute(2, 0, 3, 1)
