"""A model as a function of its trainable parameters and a batch: f(θ, x) of shape (N, O).

Parameters with ``requires_grad=False`` and buffers are held fixed. Floating parameters and buffers are cast to
the compute dtype (the inputs' dtype), so a float32 model gives a float64 kernel for float64 inputs, computed
from the same weights. The batch is one tensor or a tuple/list/dict of tensors (``model(x)``, ``model(*x)``,
``model(**x)``); the output, after ``output_fn``, is one tensor (N, ...) or a pytree of them, flattened to (N, O)
in the order ``trees.py`` documents.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .trees import batch_size, call_arguments, flatten_outputs

__all__ = ["ModelFunction"]


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    # A model created under torch.inference_mode() holds inference tensors, which autograd may not save: copy them
    # (the caller has left inference mode, so the copy is a normal tensor).
    return tensor.clone() if tensor.is_inference() else tensor


class ModelFunction:
    """``model`` evaluated through ``torch.func.functional_call`` with detached, dtype-cast tensors.

    Attributes:
        params: trainable parameters {name: tensor} (tied parameters appear once, under their first name).
        fixed: frozen parameters and buffers, held constant.
        dtype, device: compute dtype and device (the inputs').
        output_fn: None, or a callable applied to the model's output before it is flattened.

    Build it outside inference mode (``torch.inference_mode(False)``): tensors cast inside inference mode are
    inference tensors, which autograd refuses to save.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, output_fn=None):
        self.model, self.dtype, self.device, self.output_fn = model, dtype, device, output_fn
        self.params: dict[str, torch.Tensor] = {}
        self.fixed: dict[str, torch.Tensor] = {}
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.device != device:
                raise ValueError(f"the model's tensor {name!r} is on {tensor.device} but the inputs are on {device}; "
                                 f"move the model (model.to({str(device)!r})) or the inputs")
            trainable = isinstance(tensor, nn.Parameter) and tensor.requires_grad
            (self.params if trainable else self.fixed)[name] = _cast(tensor, dtype)
        self.num_params = sum(p.numel() for p in self.params.values())

    def __call__(self, x, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """f(θ, x) as (N, O); ``params`` replaces some or all of the trainable parameters."""
        tensors = {**self.fixed, **self.params, **(params or {})}
        args, kwargs = call_arguments(x)
        out = functional_call(self.model, tensors, args, kwargs)
        if self.output_fn is not None:
            out = self.output_fn(out)
        return flatten_outputs(out, batch_size(x))

    def parameter_bytes(self) -> int:
        return self.num_params * self.dtype.itemsize
