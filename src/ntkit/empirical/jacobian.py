"""Per-sample Jacobians of (some of) a model's parameters: the general path of the empirical NTK.

J(x)_{a,p} = ∂f_a(x)/∂θ_p for each sample x of a chunk, by ``vmap(jacrev(f))`` over the samples (the
construction of PyTorch's torch.func "Neural Tangent Kernels" tutorial). Only the named parameters are
differentiated; the others are constants. One ``GradFeature`` per parameter, so the Jacobian is never
concatenated (which would double its memory).
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from .features import GradFeature
from .model_function import ModelFunction

__all__ = ["jacobian_features"]


def jacobian_features(fn: ModelFunction, names: list[str], x: torch.Tensor) -> list[GradFeature]:
    """[GradFeature (n, O, numel) for each parameter in ``names``] on the batch ``x``."""
    if not names:
        return []
    chosen = {name: fn.params[name] for name in names}

    def single(params, sample):
        return fn(sample[None], params)[0]

    try:
        with torch.enable_grad():
            jac = vmap(jacrev(single), in_dims=(None, 0))(chosen, x)
    except RuntimeError as err:
        raise RuntimeError(f"the Jacobian path could not vmap the model over samples ({err}). Models with "
                           "data-dependent Python control flow or in-place writes into new tensors cannot be "
                           "batched by torch.func.vmap; use method='vector_products' or rewrite the forward.") from err
    n = x.shape[0]
    return [GradFeature(jac[name].reshape(n, jac[name].shape[1], -1)) for name in names]
