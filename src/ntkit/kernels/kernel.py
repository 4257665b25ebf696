"""The two kernel containers: ``Kernel`` (what users get) and ``KernelState`` (what layer rules pass along)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of an architecture for one output.

    ``nngp`` is Σ(x, x') = lim E[f(x) f(x')] at initialisation (Jacot et al. 2018, Prop. 1; Lee et al. 2018) and
    ``ntk`` is Θ(x, x') = lim Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_p (Jacot et al. 2018, Thm. 1), each of shape (N1, N2). For a
    network with n_L outputs the limits are Σ ⊗ Id and Θ ⊗ Id. A kernel that was not requested (``get=``) is None.
    """

    nngp: Tensor | None
    ntk: Tensor | None

    def __getitem__(self, name: str) -> Tensor:
        if name not in ("nngp", "ntk"):
            raise KeyError(f"Kernel has 'nngp' and 'ntk'; got {name!r}")
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"{name!r} was not computed; pass get=({name!r}, ...) to arch.kernel")
        return value


@dataclass(frozen=True)
class KernelState:
    """The recursion's state on one tile of the N1×N2 grid, passed from layer rule to layer rule.

    nngp: (t1, t2) covariance of the current representation between the two tiles' points
    ntk:  (t1, t2) NTK so far, or None when only the NNGP is wanted
    var1: (t1, 1) and var2: (1, t2) the diagonal variances E[z(x)²], propagated by the cheap 1-D rules
    width: the number of features of the current representation (the fan-in of the next Dense layer)
    gaussian: True when the representation is a Dense output, i.e. Gaussian in the limit, so that an
        activation's dual kernel applies to it
    """

    nngp: Tensor
    ntk: Tensor | None
    var1: Tensor
    var2: Tensor
    width: int
    gaussian: bool

    def replace(self, **changes) -> "KernelState":
        return replace(self, **changes)
