"""A model as a function of its trainable parameters and a batch: f(θ, x) of shape (N, O).

Parameters with ``requires_grad=False`` and buffers are held fixed. Floating parameters and buffers are cast to
the compute dtype (the inputs' dtype), so a float32 model gives a float64 kernel for float64 inputs, computed
from the same weights. Outputs of any shape (N, ...) are flattened to (N, O).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["ModelFunction"]


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


class ModelFunction:
    """``model`` evaluated through ``torch.func.functional_call`` with detached, dtype-cast tensors.

    Attributes:
        params: trainable parameters {name: tensor} (tied parameters appear once, under their first name).
        fixed: frozen parameters and buffers, held constant.
        dtype, device: compute dtype and device (the inputs').
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device):
        self.model, self.dtype, self.device = model, dtype, device
        self.params: dict[str, torch.Tensor] = {}
        self.fixed: dict[str, torch.Tensor] = {}
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.device != device:
                raise ValueError(f"the model's tensor {name!r} is on {tensor.device} but the inputs are on {device}; "
                                 f"move the model (model.to({str(device)!r})) or the inputs")
            trainable = isinstance(tensor, nn.Parameter) and tensor.requires_grad
            (self.params if trainable else self.fixed)[name] = _cast(tensor, dtype)
        self.num_params = sum(p.numel() for p in self.params.values())

    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """f(θ, x) as (N, O); ``params`` replaces some or all of the trainable parameters."""
        tensors = {**self.fixed, **self.params, **(params or {})}
        out = functional_call(self.model, tensors, (x,))
        return self.flatten_output(out, x.shape[0])

    @staticmethod
    def flatten_output(out, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return one tensor of shape (N, ...); it returned {type(out).__name__}")
        if out.ndim == 0 or out.shape[0] != n:
            raise ValueError(f"the model's output must have the batch axis first: for {n} input(s) it returned "
                             f"shape {tuple(out.shape)}")
        if not out.is_floating_point():
            raise TypeError(f"the model's output must be floating point; got {out.dtype}")
        return out.reshape(n, math.prod(out.shape[1:]))

    def parameter_bytes(self) -> int:
        return self.num_params * self.dtype.itemsize
