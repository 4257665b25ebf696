"""The architecture description: a ``Layer`` carries its finite module and its infinite-width kernel rule.

One description, two meanings (the idea of neural-tangents' ``stax``, in small classes): ``arch.build`` gives a
real ``torch.nn.Module`` and ``arch.kernel`` gives the exact infinite-width NNGP and NTK of that same module.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .._validation import as_input_tensor, check_pair, check_positive_int
from ..kernels.kernel import Kernel, KernelState

__all__ = ["Layer", "Serial", "parse_get"]


class Layer:
    """Base class of every architecture element.

    A subclass implements
      * ``build_module(in_features, generator, dtype, device) -> (module, out_features)``: the finite layer;
      * ``kernel_rule(state, need_ntk) -> state``: the layer's step of the NNGP/NTK recursion on one tile;
      * ``check_order(width, gaussian, position) -> (width, gaussian)``: whether the kernel rule can follow
        the layers before it (raises ValueError with the position otherwise).
    ``fusable`` says the rule is plain elementwise torch, so ``torch.compile`` may fuse it with its neighbours;
    ``tile_cost`` is the number of (t1, t2)-sized temporaries the rule holds at once (for tile planning).
    """

    fusable: bool = True
    tile_cost: int = 8

    def build_module(self, in_features: int, generator: torch.Generator | None, dtype: torch.dtype,
                     device: torch.device) -> tuple[nn.Module, int]:
        raise NotImplementedError

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        raise NotImplementedError

    def check_order(self, width: int, gaussian: bool, position: int) -> tuple[int, bool]:
        return width, gaussian

    def flatten(self) -> list["Layer"]:
        return [self]

    # A single layer is also an architecture: Dense(1).kernel(x) is the linear model's kernel.
    def build(self, in_features: int, *, seed: int | None = None, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> nn.Module:
        return Serial(self).build(in_features, seed=seed, dtype=dtype, device=device)

    def kernel(self, x1, x2=None, **options) -> Kernel:
        return Serial(self).kernel(x1, x2, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def parse_get(get: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise ``get`` to a tuple drawn from ("nngp", "ntk")."""
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in ("nngp", "ntk")]
    if unknown or not names:
        raise ValueError(f"get must name 'nngp' and/or 'ntk'; got {get!r}")
    return names


class Serial(Layer):
    """Layers applied one after the other; nested ``Serial``s are flattened.

    ``Serial(Dense(512), ReLU(), Dense(1))`` describes z1 = Dense(x), a1 = ReLU(z1), f = Dense(a1). Its
    ``kernel`` runs each layer's rule in order, starting from the input kernel Σ⁽⁰⁾(x, x') = x·x'/n0.

    Args:
        *layers: the layers, in order.
        in_features: optional input dimension; when given, ``build`` uses it by default and ``kernel`` checks
            the inputs against it.
    """

    def __init__(self, *layers: Layer, in_features: int | None = None):
        if not layers:
            raise ValueError("Serial needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Serial: layer {i} must be an ntkit layer (nk.Dense, nk.ReLU, ...); "
                                f"got {type(layer).__name__}")
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.in_features = None if in_features is None else check_positive_int(in_features, "in_features")
        self._fused_steps: dict = {}

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return all(layer.fusable for layer in self.flatten())

    def flatten(self) -> list[Layer]:
        return [leaf for layer in self.layers for leaf in layer.flatten()]

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Serial({inner})"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    # ----- the finite network -------------------------------------------------------------------------------
    def build(self, in_features: int | None = None, *, seed: int | None = None, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> nn.Sequential:
        """Instantiate the finite network as an ``nn.Sequential``.

        Args:
            in_features: input dimension n0 (defaults to the description's ``in_features``).
            seed: seeds a private ``torch.Generator`` so that the same seed gives the same weights on every
                device and dtype; None draws from torch's global generator, like ``nn.Linear``.
            dtype: parameter dtype (default: ``torch.get_default_dtype()``, float32 unless changed).
            device: parameter device (default: CPU). Weights are drawn on the CPU, then moved.
        """
        if in_features is None:
            in_features = self.in_features
        if in_features is None:
            raise ValueError("build needs in_features (the input dimension n0)")
        width = check_positive_int(in_features, "in_features")
        if self.in_features is not None and width != self.in_features:
            raise ValueError(f"in_features={width} contradicts the description's in_features={self.in_features}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype; got {dtype}")
        device = torch.device("cpu") if device is None else torch.device(device)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        modules = []
        for layer in self.flatten():
            module, width = layer.build_module(width, generator, dtype, device)
            modules.append(module)
        return nn.Sequential(*modules)

    # ----- the infinite-width kernels -----------------------------------------------------------------------
    def check_order(self, width: int, gaussian: bool, position: int = 0) -> tuple[int, bool]:
        for i, layer in enumerate(self.flatten()):
            width, gaussian = layer.check_order(width, gaussian, position + i)
        return width, gaussian

    def kernel(self, x1, x2=None, *, get: str | Sequence[str] = ("nngp", "ntk"), batch_size: int | None = None,
               fused: bool | None = None, progress: bool | None = None) -> Kernel:
        r"""Exact infinite-width NNGP and NTK of this architecture, for one output.

        Recursion (Jacot et al. 2018, Prop. 1 and Thm. 1), from Σ⁽⁰⁾ = x·x'/n0 and Θ = 0:
          Dense (NTK param.):  Σ ← w_std² K + b_std²,   Θ ← Σ + w_std² Θ
          Dense (standard):    Σ ← w_std² K + b_std²,   Θ ← n_in K + 1 + w_std² Θ
          activation σ:        K ← E[σ(u)σ(v)],  Θ ← Θ · E[σ'(u)σ'(v)],  (u, v) ~ N(0, Σ on {x, x'})
        The limit for n_L outputs is Σ ⊗ Id and Θ ⊗ Id; this returns the (N1, N2) factor.

        Args:
            x1: (N1, d) inputs; x2: (N2, d) inputs, or None for x2 = x1 (each symmetric tile is computed once).
            get: "nngp", "ntk" or both; the NNGP-only recursion skips the derivative kernels.
            batch_size: tile edge for the N1×N2 grid; memory is the outputs plus a few tiles
                (default: chosen from the layers' working sets).
            fused: run each tile's whole recursion as one ``torch.compile``-d elementwise pass. None (default)
                fuses large grids (N1·N2 >= 2²²) of closed-form layers, falling back to eager torch if
                compilation is unavailable; False never compiles.
            progress: show a tqdm bar over tiles (None: only for long runs on a terminal).

        Returns:
            ``nk.Kernel`` with ``.nngp`` and ``.ntk`` of shape (N1, N2), dtype and device of the inputs.
        """
        from ..kernels.evaluate import evaluate_kernel

        names = parse_get(get)
        x1 = as_input_tensor(x1, "x1", ndim=2)
        if x2 is not None:
            x2 = as_input_tensor(x2, "x2", ndim=2)
            x1, x2 = check_pair(x1, x2)
        if self.in_features is not None and x1.shape[1] != self.in_features:
            raise ValueError(f"x1 has {x1.shape[1]} features but the architecture expects "
                             f"in_features={self.in_features}")
        self.check_order(x1.shape[1], False)
        return evaluate_kernel(self, x1, x2, get=names, batch_size=batch_size, fused=fused, progress=progress)
