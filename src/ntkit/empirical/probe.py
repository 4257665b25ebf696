"""Discover, on one or two samples, how a model uses its parameters: the plan of the layerwise fast path.

The probe runs the model on a batch of 1 and a batch of 2 and records, for every module the layerwise path knows
(``layerwise.find_rule``), each call's input and output shapes. A module's parameters go to the fast path only if

* its class's own ``forward`` runs (no override) and it has no hooks of its own;
* the model calls it (a module left out of the forward, such as an unused head, has nothing to capture);
* each call sees the batch on axis 0 (shapes (1, ...) then (2, ...), same trailing shape), so that per-sample
  inputs and cotangents can be read off a batched pass;
* its trainable parameters are used by its own forward and nowhere else: a ``TorchFunctionMode`` watches every
  torch call and flags a parameter that appears while another module is running (tied weights, a layer's weight
  read by its parent). Those parameters go to the Jacobian path, so the result stays exact.

The probe also measures the bytes of the tensors one sample's forward creates (for memory planning) and checks
that the model treats samples independently: f(batch)[i] must equal f(sample i), compared in full precision
(TF32 off) to a tolerance set by the output dtype. Inputs and outputs may be pytrees (``trees.py``): the samples
are taken from every input tensor alike. Being the model's first run, it restates torch's errors about inputs the
model does not accept in terms of what the user passed (``diagnose.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .diagnose import explain
from .layerwise import LayerRule, find_rule
from .model_function import ModelFunction
from .trees import batch_size, take

__all__ = ["FastLayer", "ModelStructure", "probe_model"]


@dataclass
class FastLayer:
    """A module on the fast path: its rule, {role: parameter name}, and per-call per-sample shapes."""

    name: str
    module: nn.Module
    rule: LayerRule
    roles: dict[str, str]
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class ModelStructure:
    outputs: int  # O, the flattened output size
    fast_layers: list[FastLayer]
    rest_names: list[str]  # trainable parameters for the Jacobian path
    activation_bytes: int  # bytes of tensors created by one sample's forward (an upper bound on saved activations)
    fallbacks: dict[str, str]  # module name -> why the fast path does not take it


def _tensors(tree):
    """The tensors in nested tuples, lists and dicts (torch calls' arguments and results)."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _has_own_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


class _UsageWatcher(TorchFunctionMode):
    """Records torch calls made while the model runs: which fast-path parameters appear outside their owner,
    and how many bytes of tensors the calls return."""

    def __init__(self, owner_of: dict[int, nn.Module], stack: list[nn.Module]):
        super().__init__()
        self.owner_of, self.stack = owner_of, stack
        self.foreign: set[int] = set()
        self.created_bytes = 0
        self._largest = 0.0  # the largest finite |value| of any floating tensor the model computes (on CPUs)
        self._device_largest: dict = {}  # per other device, the same as a 0-dim tensor: read once, at the end

    @property
    def largest(self) -> float:
        """The largest finite |value| of any floating tensor the model computed (rounding's scale). On GPUs each
        op's maximum stays on the device until this is read, so the probe does not wait for the device per op."""
        return max([self._largest, *(float(t) for t in self._device_largest.values())])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stack:
            for leaf in _tensors((args, kwargs)):
                owner = self.owner_of.get(id(leaf))
                if owner is not None and owner is not self.stack[-1]:
                    self.foreign.add(id(leaf))
        result = func(*args, **kwargs)
        if self.stack:
            for leaf in _tensors(result):
                self.created_bytes += leaf.numel() * leaf.element_size()
                if leaf.is_floating_point() and leaf.numel():
                    self._note_largest(leaf.detach().abs().amax())
        return result

    def _note_largest(self, value: torch.Tensor, on_host: bool | None = None) -> None:
        """Keep the largest finite ``value`` (a 0-dim |max|): as a float on the CPU, on its device elsewhere."""
        if value.device.type == "cpu" if on_host is None else on_host:
            largest = float(value)
            if largest > self._largest and largest != float("inf"):
                self._largest = largest
            return
        value = torch.where(torch.isinf(value), 0.0, value.double())
        known = self._device_largest.get(value.device)  # fmax ignores NaN, as the float comparison does
        self._device_largest[value.device] = value if known is None else torch.fmax(known, value)


def _candidates(fn: ModelFunction) -> tuple[list[FastLayer], dict[str, str]]:
    layers, fallbacks = [], {}
    for name, module in fn.model.named_modules():
        rule = find_rule(module)
        if rule is None:
            continue
        prefix = f"{name}." if name else ""
        roles = {role: prefix + role for role in rule.roles
                 if isinstance(module._parameters.get(role), nn.Parameter) and prefix + role in fn.params}
        if not roles:
            continue
        if _has_own_hooks(module):
            fallbacks[name] = "the module has hooks of its own"
            continue
        layers.append(FastLayer(name, module, rule, roles))
    return layers, fallbacks


def _run_watched(fn: ModelFunction, x, layers: list[FastLayer], owner_of, user_x, arg: str):
    """One forward under the watcher; returns (output, {layer index: [(in_shape, out_shape), ...]}, watcher).

    An error of the model is restated in terms of ``user_x``, the ``arg`` the user passed (``diagnose.py``)."""
    stack: list[nn.Module] = []
    running: list[tuple] = []  # (module, its positional arguments), parallel to ``stack``, for error messages
    calls: dict[int, list] = {i: [] for i in range(len(layers))}
    index_of = {id(layer.module): i for i, layer in enumerate(layers)}

    def push(module, args):
        stack.append(module)
        running.append((module, args))

    def pop(module, args, output):
        stack.pop()
        running.pop()
        i = index_of.get(id(module))
        if i is not None:
            first = args[0] if args else None
            shapes = (tuple(first.shape) if isinstance(first, torch.Tensor) else None,
                      tuple(output.shape) if isinstance(output, torch.Tensor) else None)
            calls[i].append(shapes)

    handles = []
    try:
        for module in fn.model.modules():
            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop))
        watcher = _UsageWatcher(owner_of, stack)
        with watcher:
            out = fn(x)
    except (RuntimeError, IndexError, AssertionError) as err:
        module, args = running[-1] if running else (None, ())
        names = {id(m): name for name, m in fn.model.named_modules()}
        restated = explain(err, user_x, arg, names.get(id(module), ""), module, args)
        if restated is None:
            raise
        raise restated from err
    finally:
        for handle in handles:
            handle.remove()
    return out, calls, watcher


def _batch_first(one: list, two: list) -> bool:
    """Each call saw the batch on axis 0: (1, ...) on one sample, (2, ...) on two, the same calls both times."""
    if len(one) != len(two):
        return False
    for (in1, out1), (in2, out2) in zip(one, two):
        for s1, s2 in ((in1, in2), (out1, out2)):
            if s1 is None or s2 is None or len(s1) == 0 or s1[0] != 1 or s2[0] != 2 or s1[1:] != s2[1:]:
                return False
    return True


# Batched and unbatched kernels may sum in different orders: outputs may differ by this many units of rounding of
# the output scale (float32/float64); half-precision models round every layer's output, so fewer of their larger ulps.
_ULPS = {torch.float16: 16, torch.bfloat16: 16}
_DEFAULT_ULPS = 1000


@contextmanager
def _full_precision():
    """float32 matmuls and convolutions in full precision for the block, the previous settings restored after.

    TF32 (CUDA's default for cuDNN convolutions) and reduced-precision reductions round at ~1e-3, differently for
    different batch sizes, so an eval-mode model would look batch-coupled to the probe (measured: ResNet-18 on an
    H200, 3.2e-4). The probe compares outputs in full precision instead; the kernels themselves run under the
    user's settings."""
    cuda_matmul = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(), cuda_matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             cuda_matmul.allow_fp16_reduced_precision_reduction, cuda_matmul.allow_bf16_reduced_precision_reduction)
    try:
        torch.set_float32_matmul_precision("highest")
        cuda_matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        cuda_matmul.allow_fp16_reduced_precision_reduction = False
        cuda_matmul.allow_bf16_reduced_precision_reduction = False
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cuda_matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]
        cuda_matmul.allow_fp16_reduced_precision_reduction = saved[3]
        cuda_matmul.allow_bf16_reduced_precision_reduction = saved[4]


def _check_independent(fn: ModelFunction, x_pair, f_pair: torch.Tensor, f_first: torch.Tensor, largest: float):
    """f(batch of two)[i] must equal f(sample i), up to rounding of a differently batched computation.

    Rounding happens at the scale of every intermediate, not only of the outputs: a sin network on inputs of size
    1e4 rounds its pre-activations at ~1e4·ε, and sin passes that absolute error on to outputs of size 1 (such
    a float64 model was refused at 1000 ulps of its outputs). The scale is therefore the largest |value| of the
    outputs and of the intermediates the model computed (``largest``)."""
    f_second = fn(take(x_pair, slice(1, 2)))
    single = torch.cat([f_first, f_second])
    scale = max(float(single.abs().max()), float(f_pair.abs().max()), largest, 1e-30)
    dtype = f_pair.dtype
    ulps = _ULPS.get(dtype, _DEFAULT_ULPS)
    tol = ulps * torch.finfo(dtype).eps * scale
    gap = float((f_pair - single).abs().max())
    if not gap <= tol:
        raise ValueError(
            "the model's output for a sample depends on the other samples in the batch (or on chance): f(x[:2]) "
            f"differs from [f(x[0]), f(x[1])] by {gap:.3g}, {gap / scale:.2g} of the scale {scale:.3g} of its "
            "outputs and intermediates "
            f"(compared in {str(dtype).replace('torch.', '')} with TF32 and reduced-precision reductions off; "
            f"tolerance {ulps} ulps = {tol / scale:.2g} relative). The empirical kernels need a deterministic "
            "per-sample model: call model.eval() and remove batch-coupled layers.")


def probe_model(fn: ModelFunction, x, *, fast: bool = True, arg: str = "x1") -> ModelStructure:
    """Probe ``fn`` on the first sample(s) of ``x`` (the argument ``arg``: one tensor or a pytree of them);
    ``fast=False`` sends every parameter to the Jacobian path."""
    layers, fallbacks = _candidates(fn) if fast else ([], {})
    owner_of = {id(fn.params[pname]): layer.module for layer in layers for pname in layer.roles.values()}
    n = batch_size(x)
    x_pair = take(x, [0, 1] if n > 1 else [0, 0])
    with torch.no_grad(), _full_precision():
        f_one, calls_one, watcher_one = _run_watched(fn, take(x, slice(0, 1)), layers, owner_of, x, arg)
        f_two, calls_two, watcher_two = _run_watched(fn, x_pair, layers, owner_of, x, arg)
        for f, which in ((f_one, "sample 0"), (f_two, "samples 0 and 1")):
            if not bool(torch.isfinite(f).all()):
                raise FloatingPointError(f"the model's output for {arg}'s {which} contains NaN or inf")
        if n > 1:
            _check_independent(fn, x_pair, f_two, f_one, max(watcher_one.largest, watcher_two.largest))
    foreign = watcher_one.foreign | watcher_two.foreign
    kept = []
    for i, layer in enumerate(layers):
        if any(id(fn.params[p]) in foreign for p in layer.roles.values()):
            fallbacks[layer.name] = "its parameters are also used outside its own forward"
        elif not calls_one[i]:  # a share of zero on these samples, but its use may depend on the data
            fallbacks[layer.name] = "the model's forward did not call it"
        elif not _batch_first(calls_one[i], calls_two[i]):
            fallbacks[layer.name] = "its inputs or outputs do not have the batch on axis 0"
        else:
            layer.in_shapes = [shapes[0][1:] for shapes in calls_one[i]]
            layer.out_shapes = [shapes[1][1:] for shapes in calls_one[i]]
            kept.append(layer)
    covered = {p for layer in kept for p in layer.roles.values()}
    rest = [name for name in fn.params if name not in covered]
    activation = max(watcher_two.created_bytes - watcher_one.created_bytes, 0)
    outputs = f_one.shape[1]
    return ModelStructure(outputs=outputs, fast_layers=kept, rest_names=rest, activation_bytes=activation,
                          fallbacks=fallbacks)

