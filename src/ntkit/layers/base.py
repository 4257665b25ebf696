"""The architecture description: a ``Layer`` carries its finite module and its infinite-width kernel rule.

One description, two meanings (the idea of neural-tangents' ``stax``, in small classes): ``arch.build`` gives a
real ``torch.nn.Module`` and ``arch.kernel`` gives the exact infinite-width NNGP and NTK of that same module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch
from torch import nn

from .._threads import intra_op_threads, kernel_work
from .._validation import as_input_tensor, check_pair, check_positive_int, refuse_half_precision
from ..kernels.kernel import Kernel, KernelState
from ..kernels.spatial import input_covariance, to_form

__all__ = ["Layer", "Serial", "Signature", "parse_get", "apply_layer", "as_shape", "output_forms", "convert_form",
           "build_sequence", "output_signatures"]


@dataclass(frozen=True)
class Signature:
    """What a layer receives: ``channels`` features (per position), the ``spatial`` sizes (empty when flat), and
    whether it is ``gaussian`` in the limit (a Dense/Conv output or a pooling of one), which activations need."""

    channels: int
    spatial: tuple[int, ...] = ()
    gaussian: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *self.spatial)

    def replace(self, **changes) -> "Signature":
        return replace(self, **changes)


def as_shape(value, name: str) -> tuple[int, ...]:
    """An input shape from an int (features) or a tuple such as (3, 32, 32) (channels first, PyTorch layout)."""
    if isinstance(value, (tuple, list, torch.Size)):
        shape = tuple(check_positive_int(v, name) for v in value)
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"{name} must be (features,), (channels, length) or (channels, height, width); "
                             f"got {tuple(value)}")
        return shape
    return (check_positive_int(value, name),)


class Layer:
    """Base class of every architecture element.

    A subclass implements
      * ``build_module(in_shape, generator, dtype, device) -> (module, out_shape)``: the finite layer, for inputs
        of shape (features,) or (channels, *spatial) per sample;
      * ``kernel_rule(state, need_ntk) -> state``: the layer's step of the NNGP/NTK recursion on one tile;
        ``spatial_rule(state, need_ntk, out_form)`` is the same step when the output must be in ``out_form``
        (only layers that change the form — pooling, Flatten — need to override it);
      * ``infer(signature, where) -> signature``: the output signature, or a ValueError naming ``where`` (the
        layer's position) when the rule cannot follow the layers before it;
      * ``input_form(out_form)``: the state form this layer needs from its input to give ``out_form``
        (:mod:`ntkit.kernels.spatial`); the engine walks the layers backwards with it, so each state is kept
        only as full as the layers after it need.
    ``fusable`` says the rule is plain elementwise torch, so ``torch.compile`` may fuse it with its neighbours;
    ``tile_cost`` is the number of (t1, t2)-sized temporaries the rule holds at once (for tile planning), and
    ``in_place_tile_cost`` the number when it runs in place (``KernelState.in_place``; None: never in place).
    """

    fusable: bool = True
    tile_cost: int = 8
    in_place_tile_cost: int | None = None
    needs_variances: bool = False  # whether the rule reads var1/var2 (the spatial engine's tape supplies them)
    needs_self_covariance: bool = False  # whether it reads self1/self2, each point's full K(x, x) (attention)
    reads_inputs: bool = False  # whether input_rule can start from the raw inputs (see apply_layer)
    mutates_input: bool = False  # whether the rule overwrites its input state's tensors

    def build_module(self, in_shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
                     device: torch.device) -> tuple[nn.Module, tuple[int, ...]]:
        raise NotImplementedError

    def kernel_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        raise NotImplementedError

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        return self.kernel_rule(state, need_ntk)

    def input_rule(self, state: KernelState, need_ntk: bool) -> KernelState:
        """The rule applied to the network's inputs (``state.inputs``) when ``reads_inputs``; see ``nk.Conv2d``."""
        raise NotImplementedError

    def infer(self, signature: Signature, where: str) -> Signature:
        return signature

    def input_form(self, out_form: str) -> str:
        return out_form

    def flatten(self) -> list["Layer"]:
        return [self]

    # A single layer is also an architecture: Dense(1).kernel(x) is the linear model's kernel.
    def build(self, in_shape=None, *, in_features=None, seed: int | None = None, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> nn.Module:
        return Serial(self).build(in_shape, in_features=in_features, seed=seed, dtype=dtype, device=device)

    def kernel(self, x1, x2=None, **options) -> Kernel:
        return Serial(self).kernel(x1, x2, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def describe(position: int, layer: Layer, prefix: str = "") -> str:
    return f"{prefix}layer {position} ({layer!r})"


def _storage(t) -> int | None:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None


def convert_form(state: KernelState, wanted: str) -> KernelState:
    """The state in a weaker ``wanted`` form (full -> diagonal); flat states and equal forms are returned as is."""
    if state.form == wanted or state.form == "flat":
        return state
    dims = len(state.spatial)
    ntk = state.ntk if not isinstance(state.ntk, torch.Tensor) else to_form(state.ntk, state.form, wanted, dims)
    return state.replace(nngp=to_form(state.nngp, state.form, wanted, dims), ntk=ntk, form=wanted, owned=True)


def build_sequence(layers: Sequence[Layer], shape: tuple[int, ...], generator, dtype, device):
    """(nn.Sequential of the layers' finite modules, the output shape), each layer fed the previous one's shape."""
    modules = []
    for layer in layers:
        module, shape = layer.build_module(shape, generator, dtype, device)
        modules.append(module)
    return nn.Sequential(*modules), shape


def apply_layer(layer: Layer, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
    """Run one layer's rule in the spatial engine: bring the state to the form the layer needs, let the tape supply
    the per-position variances of its input, apply the rule, and give the input's buffers back to the engine's
    pool. A first layer that ``reads_inputs`` gets the raw inputs; any other first layer gets their covariance."""
    wanted = layer.input_form(out_form)
    consumed = []
    if state.nngp is None:
        if layer.reads_inputs:
            return layer.input_rule(state.replace(form=wanted), need_ntk).replace(owned=True)
        x1, x2, aligned = state.inputs
        cov = input_covariance(x1, x2, wanted, aligned, scratch=state.scratch)
        state = state.replace(nngp=cov, form=wanted, inputs=None, owned=True)
    converted = convert_form(state, wanted)
    if converted is not state:
        if state.owned:  # a borrowed state (a residual's input) is still read by the other branch
            consumed += [state.nngp, state.ntk]
        state = converted
    if (layer.needs_variances or layer.needs_self_covariance) and state.tape is not None:
        state = state.tape.supply(state, layer.needs_self_covariance)
    if not state.owned and layer.mutates_input:
        state = state.replace(nngp=state.nngp.clone(),
                              ntk=state.ntk.clone() if isinstance(state.ntk, torch.Tensor) else state.ntk, owned=True)
    result = layer.spatial_rule(state, need_ntk, out_form)
    if state.scratch is not None:
        if state.owned:
            consumed += [state.nngp, state.ntk]
        keep = {_storage(result.nngp), _storage(result.ntk)}
        state.scratch.give(*(t for t in consumed if _storage(t) not in keep))
    return result.replace(owned=True)


def parse_get(get: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise ``get`` to a tuple drawn from ("nngp", "ntk")."""
    if not isinstance(get, str) and not isinstance(get, Iterable):
        raise ValueError(f"get must be 'nngp', 'ntk' or a sequence of them, e.g. ('nngp', 'ntk'); got {get!r}")
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in ("nngp", "ntk")]
    if unknown or not names:
        raise ValueError(f"get must name 'nngp' and/or 'ntk'; got {get!r}")
    return names


def output_signatures(layers: Sequence[Layer], signature: Signature, prefix: str = "") -> list[Signature]:
    """Each layer's output signature, in order (a ValueError naming the layer where one cannot follow)."""
    out = []
    for i, layer in enumerate(layers):
        signature = layer.infer(signature, describe(i, layer, prefix))
        out.append(signature)
    return out


def output_forms(layers: Sequence[Layer], out_form: str) -> list[str]:
    """The output form each layer must give so that the last one gives ``out_form`` (a backward walk)."""
    forms = [out_form] * len(layers)
    for i in range(len(layers) - 1, 0, -1):
        forms[i - 1] = layers[i].input_form(forms[i])
    return forms


class Serial(Layer):
    """Layers applied one after the other; nested ``Serial``s are flattened.

    ``Serial(Dense(512), ReLU(), Dense(1))`` describes z1 = Dense(x), a1 = ReLU(z1), f = Dense(a1). Its
    ``kernel`` runs each layer's rule in order, starting from the input kernel Σ⁽⁰⁾(x, x') = x·x'/n0 (for images,
    Σ⁽⁰⁾(x, x')[p, p'] = Σ_c x[c, p] x'[c, p'] / C at every pair of positions).

    Args:
        *layers: the layers, in order.
        in_shape: optional input shape per sample, an int (features) or a tuple such as (3, 32, 32); when given,
            ``build`` uses it by default and ``kernel`` checks the inputs against it. ``in_features=`` is the same
            for flat inputs.
    """

    def __init__(self, *layers: Layer, in_shape=None, in_features: int | None = None):
        if not layers:
            raise ValueError("Serial needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Serial: layer {i} must be an ntkit layer (nk.Dense, nk.ReLU, nk.Conv2d, ...); "
                                f"got {type(layer).__name__}")
        if in_shape is not None and in_features is not None:
            raise ValueError("pass in_shape or in_features, not both")
        self.layers: tuple[Layer, ...] = tuple(layers)
        given = in_shape if in_shape is not None else in_features
        self.in_shape = None if given is None else as_shape(given, "in_shape" if in_shape is not None
                                                             else "in_features")
        self._fused_steps: dict = {}     # compiled tile steps (kernels/evaluate.py), False where compiling failed
        self._eager_seconds: dict = {}   # eager seconds spent on large grids, per step (kernels/flat_plan.py)

    def __getstate__(self):  # compiled steps and timings are per-process: not pickled, not deep-copied
        state = dict(self.__dict__)
        state["_fused_steps"], state["_eager_seconds"] = {}, {}
        return state

    @property
    def in_features(self) -> int | None:
        """The input dimension for flat inputs (None for image inputs or when not given)."""
        return self.in_shape[0] if self.in_shape is not None and len(self.in_shape) == 1 else None

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

    # ----- shapes and forms ---------------------------------------------------------------------------------
    def infer(self, signature: Signature, where: str = "") -> Signature:
        prefix = f"{where}, " if where else ""
        return output_signatures(self.flatten(), signature, prefix)[-1]

    def input_form(self, out_form: str) -> str:
        layers = self.flatten()
        return layers[0].input_form(output_forms(layers, out_form)[0])

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        layers = self.flatten()
        for layer, form in zip(layers, output_forms(layers, out_form)):
            state = apply_layer(layer, state, need_ntk, form)
        return state

    def _resolve_shape(self, in_shape, in_features) -> tuple[int, ...]:
        if in_shape is not None and in_features is not None:
            raise ValueError("pass in_shape or in_features, not both")
        given = in_shape if in_shape is not None else in_features
        if given is None:
            if self.in_shape is None:
                raise ValueError("build needs in_shape: the input shape per sample, e.g. 8 or (3, 32, 32)")
            return self.in_shape
        shape = as_shape(given, "in_shape" if in_shape is not None else "in_features")
        if self.in_shape is not None and shape != self.in_shape:
            name = "in_features" if len(shape) == len(self.in_shape) == 1 else "in_shape"
            described = self.in_shape[0] if name == "in_features" else self.in_shape
            raise ValueError(f"{name}={given} contradicts the description's {name}={described}")
        return shape

    # ----- the finite network -------------------------------------------------------------------------------
    def build(self, in_shape=None, *, in_features: int | None = None, seed: int | None = None,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> nn.Sequential:
        """Instantiate the finite network as an ``nn.Sequential``.

        Args:
            in_shape: the input shape per sample: an int (features, for (N, d) inputs) or a tuple, (C, L) for
                sequences and (C, H, W) for images (defaults to the description's ``in_shape``).
            in_features: the same as an int ``in_shape`` (kept for flat inputs).
            seed: seeds a private ``torch.Generator`` so that the same seed gives the same weights on every
                device and dtype; None draws from torch's global generator, like ``nn.Linear``.
            dtype: parameter dtype (default: ``torch.get_default_dtype()``, float32 unless changed).
            device: parameter device (default: CPU). Weights are drawn on the CPU, then moved.
        """
        shape = self._resolve_shape(in_shape, in_features)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype; got {dtype}")
        device = torch.device("cpu") if device is None else torch.device(device)
        signature = Signature(shape[0], shape[1:])
        for i, layer in enumerate(self.flatten()):
            # Shapes only: a finite network may put an activation anywhere; only its kernel needs Gaussian inputs.
            try:
                signature = layer.infer(signature.replace(gaussian=True), describe(i, layer))
            except ValueError as err:
                raise ValueError(f"in_shape={shape}: {err}") from None
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return build_sequence(self.flatten(), shape, generator, dtype, device)[0]

    # ----- the infinite-width kernels -----------------------------------------------------------------------
    def kernel(self, x1, x2=None, *, get: str | Sequence[str] = ("nngp", "ntk"), batch_size: int | None = None,
               fused: bool | None = None, progress: bool | None = None) -> Kernel:
        r"""Exact infinite-width NNGP and NTK of this architecture, for one output.

        Recursion (Jacot et al. 2018, Prop. 1 and Thm. 1), from Σ⁽⁰⁾ = x·x'/n0 and Θ = 0:
          Dense (NTK param.):  Σ ← w_std² K + b_std²,   Θ ← Σ + w_std² Θ
          Dense (standard):    Σ ← w_std² K + b_std²,   Θ ← n_in K + 1 + w_std² Θ
          activation σ:        K ← E[σ(u)σ(v)],  Θ ← Θ · E[σ'(u)σ'(v)],  (u, v) ~ N(0, Σ on {x, x'})
        Spatial layers (Conv, pooling, Flatten, ...) give their rules in their docstrings; for image inputs the
        state between layers holds the covariance of every pair of positions, or only its diagonal where every
        later layer needs only that (chosen automatically: :mod:`ntkit.kernels.spatial`).
        The limit for n_L outputs is Σ ⊗ Id and Θ ⊗ Id; this returns the (N1, N2) factor.

        Args:
            x1: (N1, d), (N1, C, L) or (N1, C, H, W) inputs; x2: the same for N2 points, or None for x2 = x1
                (each symmetric tile is computed once).
            get: "nngp", "ntk" or both; the NNGP-only recursion skips the derivative kernels.
            batch_size: tile edge for the N1×N2 grid; memory is the outputs plus a few tiles
                (default: chosen from the layers' working sets).
            fused: (flat inputs) run each tile's whole recursion as one fused elementwise pass. On CUDA, float32
                Dense/ReLU-family architectures use a hand-written Triton kernel (compiled in about a second,
                ``kernels/triton_flat.py``) unless False; otherwise ``torch.compile``: None (default) compiles
                once the eager seconds spent on large grids (N1·N2 >= 2²²) of closed-form layers reach the
                device's compile cost, falling back to eager torch if compilation is unavailable; True compiles at
                once; False never compiles.
            progress: show a tqdm bar over tiles (None: only for long runs on a terminal).

        Returns:
            ``nk.Kernel`` with ``.nngp`` and ``.ntk`` of shape (N1, N2), dtype and device of the inputs.
        """
        from ..kernels.evaluate import evaluate_kernel
        from ..kernels.spatial_evaluate import evaluate_spatial

        names = parse_get(get)
        x1 = refuse_half_precision(as_input_tensor(x1, "x1", ndim=(2, 3, 4)), "x1")
        if x2 is not None:
            x2 = refuse_half_precision(as_input_tensor(x2, "x2", ndim=(2, 3, 4)), "x2")
            x1, x2 = check_pair(x1, x2)
        self._check_kernel_input(x1, "x1")
        with intra_op_threads(kernel_work(x1, len(x1) if x2 is None else len(x2), len(self.flatten())), x1.device):
            if x1.ndim == 2:
                return evaluate_kernel(self, x1, x2, get=names, batch_size=batch_size, fused=fused,
                                       progress=progress)
            return evaluate_spatial(self, x1, x2, get=names, batch_size=batch_size, progress=progress)

    def kernel_diagonal(self, x, *, get: str | Sequence[str] = ("nngp", "ntk"), progress: bool | None = None) -> Kernel:
        """k(x_i, x_i) for every point: the diagonal of ``self.kernel(x)`` in O(N) work and memory instead of N².

        What a GP's predictive variance, a kernel operator's preconditioner or a trace needs. The values are
        those of the kernel's diagonal up to rounding (the same rules on the N self-pairs; float64 agrees to
        1e-12). Args as :meth:`kernel`; returns ``nk.Kernel`` whose ``.nngp`` and ``.ntk`` have shape (N,).
        """
        from ..kernels.evaluate import evaluate_diagonal
        from ..kernels.spatial_evaluate import evaluate_spatial_diagonal

        names = parse_get(get)
        x = refuse_half_precision(as_input_tensor(x, "x", ndim=(2, 3, 4)), "x")
        self._check_kernel_input(x, "x")
        with intra_op_threads(kernel_work(x, 1, len(self.flatten())), x.device):
            if x.ndim == 2:
                return evaluate_diagonal(self, x, get=names)
            return evaluate_spatial_diagonal(self, x, get=names, progress=progress)

    def _check_kernel_input(self, x1: torch.Tensor, name: str) -> None:
        """Raise if ``x1``'s per-sample shape does not fit this architecture (``name`` is the argument's name)."""
        shape = tuple(x1.shape[1:])
        if self.in_shape is not None and shape != self.in_shape:
            if len(shape) == len(self.in_shape) == 1:
                raise ValueError(f"{name} has {shape[0]} features but the architecture expects "
                                 f"in_features={self.in_shape[0]}")
            raise ValueError(f"{name} has shape {tuple(x1.shape)} (per sample {shape}) but the architecture expects "
                             f"in_shape={self.in_shape}")
        try:
            out = self.infer(Signature(shape[0], shape[1:]))
        except ValueError as err:
            raise ValueError(f"{name} of shape {tuple(x1.shape)}: {err}") from None
        if out.spatial:
            raise ValueError(f"{self!r} ends with a spatial representation {out.shape}; end it with a readout, "
                             "e.g. nk.Flatten() or nk.GlobalAvgPool() followed by nk.Dense(out_features)")
