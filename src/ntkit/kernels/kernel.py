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

    nngp: (t1, t2, *pair) covariance of the current representation between the two tiles' points; ``pair`` is
        empty for the flat form, (S₁, S₂) for the diagonal and (S₁, S₂, S₁', S₂') for the full spatial form
        (:mod:`ntkit.kernels.spatial`)
    ntk:  the NTK so far in the same layout (the float 0.0 before the first weight layer), or None when only
        the NNGP is wanted
    var1: (t1, 1, ...) and var2: (1, t2, ...) the variances E[z(x, p)²] per position, laid out to broadcast
        against ``nngp``; propagated by the cheap 1-D rules for flat inputs, supplied by ``tape`` otherwise
    width: features of the current representation (channels for spatial states): the fan-in of the next layer
        per position/tap
    gaussian: True when the representation is a Dense/Conv output (or a pooling of one), i.e. Gaussian in the
        limit, so that an activation's dual kernel applies to it
    form: "flat", "diagonal" or "full"; spatial: the spatial sizes (empty when flat)
    tape: the spatial engine's source of per-position variances (:mod:`ntkit.kernels.spatial_evaluate`)
    inputs: (x1 tile, x2 tile, aligned) while ``nngp`` is still None: the spatial engine defers the input
        covariance so that a first Conv can compute its output covariance from patches in one product
    self1, self2: the full self-covariances K(x, x)[p, p''] of the tile's rows (t1, 1, S, S) and columns
        (1, t2, S, S), supplied by the tape to layers that need them (self-attention)
    scratch: the spatial engine's buffer pool (:mod:`ntkit.kernels.scratch`); owned: whether the rules may
        overwrite and recycle this state's tensors (False where a composite layer still needs them)
    in_place: the flat engine's eager tiles: rules may overwrite ``nngp``/``ntk`` (nothing else holds them and no
        derivatives are taken) and take buffers from ``scratch``; rules that do must give bitwise the same values
    near_parallel: the flat engine's float32 CPU tiles: a list to which rules whose duals float32 cannot resolve
        near ρ = ±1 append masks of such entries, recomputed in float64 (:mod:`ntkit.kernels.near_parallel`)
    self_pairs: ρ is 1 up to rounding on the diagonal of the state's last two axes viewed as (B, P, P): a pair of
        a position with itself. The flat engine's diagonal tiles of a symmetric kernel (entries (i, i)); the
        convolutional engine's states whose every pair is a point with itself (its self pass, a symmetric kernel's
        (i, i) tiles), at p = p' of the full form
    """

    nngp: Tensor
    ntk: Tensor | None
    var1: Tensor
    var2: Tensor
    width: int
    gaussian: bool
    form: str = "flat"
    spatial: tuple[int, ...] = ()
    tape: object = None
    inputs: tuple | None = None
    scratch: object = None
    owned: bool = True
    in_place: bool = False
    self1: object = None
    self2: object = None
    near_parallel: list | None = None
    self_pairs: bool = False

    def replace(self, **changes) -> "KernelState":
        return replace(self, **changes)
