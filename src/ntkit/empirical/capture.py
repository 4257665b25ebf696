"""One batched pass that records, for every fast-path module, its inputs and the output cotangents ∂f_a/∂z.

Each fast module's output z is replaced by z + δ with δ a zero leaf tensor; then ∂f_a/∂δ = ∂f_a/∂z for every
sample at once (samples are independent, which ``probe.py`` checked), one backward pass per output a. Taking
gradients with respect to δ rather than z keeps them right when the model later modifies z in place
(``ReLU(inplace=True)``). No parameter gradient is formed: the parameters are detached constants here. Where the
output is reached through a linear read-out tail (``tail.py``), the tail's cotangents come from one sample and the
batched pass starts at the tail's input.
"""

from __future__ import annotations

import time
import warnings
import weakref
from dataclasses import dataclass, field

import torch

from .model_function import ModelFunction
from .probe import FastLayer
from .tail import MIN_SAVED_FLOPS, Call, batched_backward_flops, find_tail, tail_cotangents
from .trees import batch_size

__all__ = ["capture_layers", "capture_chunk", "EngineChooser", "chooser_for", "preferred_engine", "ENGINES"]

# "autograd": torch.autograd.grad with is_grads_batched (a backward formula without a batching rule, such as a
# convolution's, runs once per output and the results are stacked); "functorch": torch.func.vjp, vmapped over the
# outputs, whose batching rules run a convolution's backward once on the O·n batch.
ENGINES = ("autograd", "functorch")


def _record(layers: list[FastLayer], clone_inputs: bool):
    """A forward hook that shifts every fast layer's output by a zero leaf δ, and the calls it records (in order)."""
    layer_of = {id(layer.module): layer for layer in layers}
    calls: list[Call] = []

    def hook(module, args, output):
        a = args[0]
        delta = torch.zeros_like(output, requires_grad=True)
        shifted = output + delta
        tensors = {name: getattr(module, name) for name in (*module._parameters, *module._buffers)
                   if getattr(module, name) is not None}
        saved = a.detach().clone() if clone_inputs else a.detach()
        calls.append(Call(layer_of[id(module)], a, saved, shifted, delta, a._version, shifted._version, tensors))
        return shifted

    return calls, hook


def recorded_forward(fn: ModelFunction, layers: list[FastLayer], x, clone_inputs: bool = False):
    """(the fast layers' calls, f): one forward pass of ``fn`` on ``x`` with every fast layer's output shifted
    by its δ (``_record``)."""
    calls, hook = _record(layers, clone_inputs)
    handles = [layer.module.register_forward_hook(hook) for layer in layers]
    try:
        with torch.enable_grad():
            f = fn(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, f


def _cotangents(root: torch.Tensor, seeds: torch.Tensor, deltas: list[torch.Tensor]) -> list[torch.Tensor]:
    """∂f_a/∂δ for every δ and output a, each as an (n, O, *δ.shape[1:]) view, by the backward pass from ``root``
    (f, or the input of the linear tail) with the (O, *root.shape) cotangents ``seeds``.

    One backward pass vmapped over the O cotangents (``is_grads_batched``), which on CPU is 1.5-2x faster than O
    separate passes; if a backward formula cannot be batched, the O passes one by one.
    """
    outputs = seeds.shape[0]
    if not deltas:
        return []
    n = deltas[0].shape[0]
    if not root.requires_grad:  # no fast layer before ``root`` influences the output
        return [d.new_zeros(n, outputs, *d.shape[1:]) for d in deltas]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            grads = torch.autograd.grad(root, deltas, seeds, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
        return [torch.zeros(n, outputs, *d.shape[1:], dtype=d.dtype, device=d.device) if g is None
                else g.transpose(0, 1) for g, d in zip(grads, deltas)]
    except RuntimeError:
        pass
    per_output = []
    for a in range(outputs):
        grads = torch.autograd.grad(root, deltas, seeds[a], retain_graph=a < outputs - 1, allow_unused=True)
        per_output.append([torch.zeros_like(d) if g is None else g for g, d in zip(grads, deltas)])
    return [torch.stack([row[k] for row in per_output], 1) for k in range(len(deltas))]


def _all_cotangents(calls: list[Call], f: torch.Tensor) -> list[torch.Tensor]:
    """The cotangents at every call's δ (``_cotangents``), the linear tail's from one sample (``tail.py``)."""
    n, outputs = f.shape
    tail = find_tail(calls, f, n)
    if tail is not None and batched_backward_flops(tail[0], outputs) < MIN_SAVED_FLOPS:
        tail = None
    shared = None if tail is None else tail_cotangents(*tail, f)
    if shared is None:
        seeds = torch.eye(outputs, dtype=f.dtype, device=f.device)[:, None, :].expand(outputs, n, outputs)
        return _cotangents(f, seeds, [call.delta for call in calls])
    (chain, u), (u_cotangents, chain_cotangents) = tail, shared
    in_chain = {id(call): g.transpose(0, 1) for call, g in zip(chain, chain_cotangents)}
    rest = [call for call in calls if id(call) not in in_chain]
    found = dict(zip(map(id, rest), _cotangents(u, u_cotangents, [call.delta for call in rest])))
    return [in_chain[id(call)] if id(call) in in_chain else found[id(call)] for call in calls]


def _capture_by_functorch(fn: ModelFunction, layers: list[FastLayer], x):
    """``capture_layers`` through torch.func: f(δ) = the model with every fast layer's output shifted by δ, its
    vjp vmapped over the O unit cotangents. The same values as the autograd engine (tested on the test zoo);
    raises where torch.func cannot run the model, and the caller falls back to the autograd engine, which also
    diagnoses layers called a different number of times than when probed and inputs modified in place."""
    from torch.func import vjp, vmap

    n = batch_size(x)
    first, count = {}, 0  # module -> (index of its first call's δ, calls when probed)
    for layer in layers:
        first[id(layer.module)] = (count, len(layer.out_shapes))
        count += len(layer.out_shapes)
    deltas = [torch.zeros((n, *shape), dtype=fn.dtype, device=fn.device)
              for layer in layers for shape in layer.out_shapes]

    def shifted(*shifts):
        calls, inputs = {}, [None] * len(shifts)

        def hook(module, args, output):
            call = calls.get(id(module), 0)
            calls[id(module)] = call + 1
            start, probed = first[id(module)]
            if call >= probed:
                raise RuntimeError(f"a fast layer ran more than the {probed} time(s) it ran when probed")
            inputs[start + call] = (args[0], args[0]._version)
            return output + shifts[start + call]

        handles = [layer.module.register_forward_hook(hook) for layer in layers]
        try:
            f = fn(x)
        finally:
            for handle in handles:
                handle.remove()
        if any(entry is None or entry[0]._version != entry[1] for entry in inputs):
            raise RuntimeError("a fast layer ran fewer times than when probed, or its input was modified in place")
        return f, [a for a, _ in inputs]

    with torch.enable_grad():
        f, pullback, inputs = vjp(shifted, *deltas, has_aux=True)
        outputs = f.shape[1]
        seeds = torch.eye(outputs, dtype=f.dtype, device=f.device)[:, None, :].expand(outputs, n, outputs)
        cotangents = vmap(pullback)(seeds)  # per δ: (O, n, ...)
    out, k = [], 0
    for layer in layers:
        calls = len(layer.out_shapes)
        out.append(([a.detach() for a in inputs[k:k + calls]], [c.transpose(0, 1) for c in cotangents[k:k + calls]]))
        k += calls
    return out


def capture_layers(fn: ModelFunction, layers: list[FastLayer], x, engine: str = "autograd"):
    """Run ``fn`` on the batch ``x``; return [(inputs, cotangents) per layer], each a list per call. ``engine``:
    one of ``ENGINES`` (the functorch engine raises where torch.func cannot run the model)."""
    if engine == "functorch" and layers:
        return _capture_by_functorch(fn, layers, x)
    for clone_inputs in (False, True):
        calls, f = recorded_forward(fn, layers, x, clone_inputs)
        # A captured input modified in place later in the forward (x += ...) no longer holds what the layer saw:
        # capture again, copying inputs.
        if clone_inputs or all(call.input._version == call.input_version for call in calls):
            break
    for layer in layers:
        count = sum(call.layer is layer for call in calls)
        if count != len(layer.out_shapes):
            raise RuntimeError(f"module {layer.name!r} ran {count} time(s) on this batch but {len(layer.out_shapes)} "
                               "time(s) when probed: its use depends on the data. Use method='jacobian'.")
    with torch.enable_grad():
        cotangents = dict(zip(map(id, calls), _all_cotangents(calls, f)))
    return [([call.saved_input for call in calls if call.layer is layer],
             [cotangents[id(call)] for call in calls if call.layer is layer]) for layer in layers]


def preferred_engine(device_kind: str) -> str:
    """The engine tried first: functorch on GPUs, where the autograd engine's per-output loop of small convolution
    backwards is O times the kernel launches; autograd on CPUs, where it was the faster on the torch.func
    tutorial's CNN (50 against 58 ms a chunk) and the slower on ResNet-18 (111 against 60 ms): ``EngineChooser``
    times both there."""
    return "functorch" if device_kind == "cuda" else "autograd"


@dataclass
class EngineTimings:
    """What the chunks measured: per engine the best seconds per sample and how many chunks it ran; engines that
    raised."""

    seconds: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


class EngineChooser:
    """Which capture engine runs each chunk of ``empirical_ntk`` calls.

    On a CPU each engine is timed per sample on two chunks (the first run of an engine includes one-time costs:
    oneDNN's and vmap's set-up), alternating from the preferred one; after that every chunk runs the faster. The
    timings live as long as the model (``chooser_for``), so only the first call or two on a model spend chunks on
    the slower engine. On other devices the preferred engine runs throughout (timing there would make the host wait
    for the device). An engine that raised is not used again."""

    TRIALS = 2

    def __init__(self, device_kind: str, timings: EngineTimings | None = None):
        self.preferred = preferred_engine(device_kind)
        self.explore = device_kind == "cpu"
        self.timings = timings if timings is not None else EngineTimings()

    @property
    def failed(self) -> set[str]:
        return self.timings.failed

    def next(self) -> str:
        usable = [engine for engine in dict.fromkeys((self.preferred, *ENGINES)) if engine not in self.failed]
        if not usable:
            return "autograd"
        if not self.explore:
            return usable[0]
        runs = self.timings.runs
        fewest = min(usable, key=lambda engine: runs.get(engine, 0))  # ties: the preferred engine first
        if runs.get(fewest, 0) < self.TRIALS:
            return fewest
        return min(usable, key=lambda engine: self.timings.seconds[engine])

    def record(self, engine: str, seconds_per_sample: float) -> None:
        seconds, runs = self.timings.seconds, self.timings.runs
        seconds[engine] = min(seconds.get(engine, float("inf")), seconds_per_sample)
        runs[engine] = runs.get(engine, 0) + 1

    def fail(self, engine: str) -> None:
        self.failed.add(engine)


_MEASURED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def chooser_for(model: torch.nn.Module, key: tuple, device_kind: str) -> EngineChooser:
    """An ``EngineChooser`` that shares its timings with every call on ``model`` with the same ``key`` (device,
    dtype, the fast layers' shapes), so repeated calls (the NTK tracked along training, benchmarks) stop trying
    the slower engine once each has been timed twice. Held while the model lives, not longer."""
    return EngineChooser(device_kind, _MEASURED.setdefault(model, {}).setdefault(key, EngineTimings()))


def capture_chunk(chooser: EngineChooser, fn: ModelFunction, layers: list[FastLayer], x):
    """``capture_layers`` with the engine ``chooser`` picks, timed for it; the autograd engine if another raises."""
    engine = chooser.next()
    start = time.perf_counter()
    try:
        captured = capture_layers(fn, layers, x, engine)
    except Exception:
        if engine == "autograd":
            raise
        chooser.fail(engine)
        return capture_chunk(chooser, fn, layers, x)
    chooser.record(engine, (time.perf_counter() - start) / max(batch_size(x), 1))
    return captured
