"""Per-sample Jacobians of (some of) a model's parameters: the general path of the empirical NTK.

J(x)_{a,p} = ∂f_a(x)/∂θ_p for each sample x of a chunk, by ``vmap(jacrev(f))`` over the samples (the
construction of PyTorch's torch.func "Neural Tangent Kernels" tutorial). Only the named parameters are
differentiated; the others are constants. One ``GradFeature`` per parameter, so the Jacobian is never
concatenated (which would double its memory). Models that ``vmap`` cannot batch (in-place writes of batched
values into new tensors, data-dependent control flow) get the same Jacobian from one autograd pass per sample
and output, with a warning that this is slow.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import jacrev, vmap

from .features import GradFeature
from .model_function import ModelFunction
from .trees import add_batch_axis, batch_size, take

__all__ = ["jacobian_features", "VMAP_FALLBACK_WARNING"]

VMAP_FALLBACK_WARNING = "cannot be vmapped"


def _jacobian_by_loop(fn: ModelFunction, names: list[str], x) -> dict[str, torch.Tensor]:
    """{name: (n, O, *shape)} from torch.autograd.grad, one sample and one output at a time."""
    leaves = {name: fn.params[name].detach().requires_grad_() for name in names}
    rows = {name: [] for name in names}
    for i in range(batch_size(x)):
        with torch.enable_grad():
            out = fn(take(x, slice(i, i + 1)), leaves)[0]
        per_output = {name: [] for name in names}
        for a in range(out.shape[0]):
            grads = torch.autograd.grad(out[a], list(leaves.values()), retain_graph=a < out.shape[0] - 1,
                                        allow_unused=True)
            for name, grad in zip(names, grads):
                per_output[name].append(torch.zeros_like(leaves[name]) if grad is None else grad)
        for name in names:
            rows[name].append(torch.stack(per_output[name]))
    return {name: torch.stack(rows[name]).detach() for name in names}


def jacobian_features(fn: ModelFunction, names: list[str], x) -> list[GradFeature]:
    """[GradFeature (n, O, numel) for each parameter in ``names``] on the batch ``x`` (a tensor or a pytree of
    tensors sharing the batch axis, all vmapped over it)."""
    if not names:
        return []
    chosen = {name: fn.params[name] for name in names}

    def single(params, sample):
        return fn(add_batch_axis(sample), params)[0]

    try:
        # torch notes ops it batches by a slow fallback ("performance drop"): not the user's concern here.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            jac = vmap(jacrev(single), in_dims=(None, 0))(chosen, x)
    except RuntimeError as err:
        warnings.warn(f"ntkit.empirical_ntk: the model {VMAP_FALLBACK_WARNING} over samples ({str(err)[:160]}...); "
                      f"computing the Jacobian of {len(names)} parameter tensor(s) one sample and one output at a "
                      "time, which is slow", RuntimeWarning, stacklevel=2)
        jac = _jacobian_by_loop(fn, names, x)
    n = batch_size(x)
    return [GradFeature(jac[name].reshape(n, jac[name].shape[1], -1)) for name in names]
