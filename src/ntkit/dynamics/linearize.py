r"""The linearised network f_lin(x; θ) = f(x; θ_0) + J(x)(θ − θ_0), as a trainable ``nn.Module``.

Lee et al. 2019 (arXiv 1902.06720), eq. (5): wide networks trained by gradient descent stay close to their
first-order Taylor expansion around the initial parameters θ_0. The linearised model's NTK is the empirical NTK at
θ_0 at all times, so under gradient descent on C = ½ E_{p_in}‖f − y‖² over N training points with learning rate η
its outputs follow exactly ∂_t f(x) = −(η/N) Σ_j Θ_0(x, x_j)(f(x_j) − y_j), i.e. ``GradientFlow`` with Θ_0.

The Jacobian-vector product J(x)(θ − θ_0) is computed by ``torch.func.jvp`` (forward mode, one pass): the Jacobian
is never formed, and gradients with respect to θ flow through the tangent, so any torch optimiser trains it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

from ._checks import check_module

__all__ = ["linearize", "LinearizedModel"]


class LinearizedModel(nn.Module):
    """f_lin(x; θ) = f(x; θ_0) + J(x)(θ − θ_0), with trainable θ starting at θ_0.

    ``parameters()`` yields θ (one tensor per parameter of the wrapped model, named as in the wrapped model with
    '.' replaced by '__', with the same requires_grad); θ_0 is kept as buffers of a private copy of the model
    (moved by ``.to()``, saved in ``state_dict``), so training the original model afterwards changes nothing here.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        base = copy.deepcopy(model)
        names = [name for name, _ in base.named_parameters()]
        if not names:
            raise ValueError("model has no parameters to linearise around")
        # Turn the copy's parameters into buffers: they are θ_0, fixed, and must not reach an optimiser. θ keeps
        # each parameter's requires_grad, so what the user froze stays frozen (and out of the NTK) here too.
        trainable = {}
        for name in names:
            owner_name, _, leaf = name.rpartition(".")
            owner = base.get_submodule(owner_name) if owner_name else base
            parameter = owner._parameters.pop(leaf)
            trainable[name] = parameter.requires_grad
            owner.register_buffer(leaf, parameter.detach().clone())
        self.base = base
        self._names = names
        self.params = nn.ParameterDict({name.replace(".", "__"): nn.Parameter(base.get_buffer(name).clone(),
                                                                           requires_grad=trainable[name])
                                        for name in names})

    @property
    def theta0(self) -> dict[str, torch.Tensor]:
        """The linearisation point θ_0, by the wrapped model's parameter names."""
        return {name: self.base.get_buffer(name) for name in self._names}

    @property
    def theta(self) -> dict[str, torch.Tensor]:
        """The current parameters θ, by the wrapped model's parameter names."""
        return {name: self.params[name.replace(".", "__")] for name in self._names}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        theta0 = self.theta0
        theta = self.theta
        tangent = {name: theta[name] - theta0[name] for name in self._names}

        def at(params):
            return functional_call(self.base, params, inputs)

        output, directional = jvp(at, (theta0,), (tangent,))
        return output + directional

    def extra_repr(self) -> str:
        count = sum(p.numel() for p in self.params.values())
        return f"linearised around θ_0 ({count} parameters)"


def linearize(model: nn.Module) -> LinearizedModel:
    r"""Return the linearisation of ``model`` around its current parameters θ_0.

    f_lin(x; θ) = f(x; θ_0) + J(x)(θ − θ_0) (Lee et al. 2019, eq. (5)), computed with ``torch.func.jvp``. Its
    parameters start at θ_0 (so initially f_lin = f) and are trained by any torch optimiser; full-batch gradient
    descent on C = ½ E_{p_in}‖f − y‖² over N points with learning rate η moves its outputs along
    ∂_t f(x) = −(η/N) Σ_j Θ_0(x, x_j)(f(x_j) − y_j) with Θ_0 the model's empirical NTK at θ_0, exactly.
    Put the model in the mode (train/eval) you want linearised first: dropout or batch statistics are part of f.
    """
    return LinearizedModel(check_module(model))
