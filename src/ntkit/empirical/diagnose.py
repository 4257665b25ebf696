"""Errors of a user's model on the probe's first forward, restated in terms of what the user passed.

The probe (``probe.py``) is the first place ntkit runs the model, on the first sample(s) of x1. A model that does
not accept x1 fails there with torch's own words about ntkit's internal batch: "mat1 and mat2 shapes cannot be
multiplied (1x4 and 3x8)" for a (5, 4) x1, "mat1 and mat2 must have the same dtype" for integer inputs, a bare
``AssertionError`` for a CUDA tensor on a CPU-only build of torch. ``explain`` turns such an error into one that
names the argument, the shape and dtype passed, the module that failed (the innermost one running, from the
probe's module hooks) and, for the layers whose expectations can be read off (``nn.Linear``'s in_features,
``nn.Conv*``'s in_channels, ``nn.Embedding``'s num_embeddings and integer ids), what it expects. The original
error is chained (``raise ... from err``). Errors the model raises on purpose (ValueError, TypeError, ...) are its
own words and pass unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .trees import describe, named_leaves

__all__ = ["explain"]

# torch's words for an operation given tensors of mismatched dtypes (Linear, Conv, norms, batch_norm ...).
_DTYPE_MISMATCH = re.compile(r"dtype|datatype|scalar type|type \(.*\) should be the same|not implemented for '")
# Error types that are torch's own reports of a failed operation, restated here; others pass unchanged.
_RESTATED = (RuntimeError, NotImplementedError, IndexError)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _first_tensor(args) -> torch.Tensor | None:
    return args[0] if args and isinstance(args[0], torch.Tensor) else None


def _expectation(module: nn.Module, args) -> str | None:
    """What a known layer expects that its input lacks: "expects ... but receives ..." (None if nothing is
    known to be wrong)."""
    a = _first_tensor(args)
    if a is None:
        return None
    if isinstance(module, nn.Linear) and a.ndim >= 1 and a.shape[-1] != module.in_features:
        return (f"expects {module.in_features} input features on the last axis (in_features={module.in_features}) "
                f"but receives {a.shape[-1]}")
    if isinstance(module, _CONVS):
        spatial = len(module.kernel_size)
        if a.ndim not in (spatial + 1, spatial + 2):
            layout = "(N, C" + ", L" * (spatial == 1) + ", H, W" * (spatial == 2) + ", D, H, W" * (spatial == 3) + ")"
            return (f"expects inputs laid out as {layout} but receives a {a.ndim}-D tensor per batch "
                    f"(per-sample shape {tuple(a.shape[1:])})")
        channels = a.shape[-spatial - 1]
        if channels != module.in_channels:
            return (f"expects {module.in_channels} input channels on axis 1 (in_channels={module.in_channels}) but "
                    f"receives {channels}")
    if isinstance(module, nn.Embedding):
        if a.is_floating_point():
            return f"takes integer ids in [0, {module.num_embeddings}) but receives {a.dtype} values"
        low, high = int(a.min()), int(a.max())
        if low < 0 or high >= module.num_embeddings:
            return (f"takes ids in [0, {module.num_embeddings}) (num_embeddings={module.num_embeddings}) but "
                    f"receives ids from {low} to {high}")
    return None


def _subject(name: str, module: nn.Module) -> str:
    """"module 'fc' (Linear(in_features=3, ...))", or "the model (Linear(...))" for the model itself."""
    text = repr(module) if len(repr(module)) <= 120 else type(module).__name__
    return f"module {name!r} ({text})" if name else f"the model ({text})"


def _where(name: str, module: nn.Module | None) -> str:
    if module is None:
        return "outside its modules"
    return f"in {_subject(name, module)}" if name else f"in the model's own forward ({type(module).__name__})"


def explain(err: BaseException, x, arg: str, name: str, module: nn.Module | None, args) -> BaseException | None:
    """The error to raise instead of ``err`` (chained to it), or None to let ``err`` pass unchanged.

    ``x`` is what the user passed as ``arg`` ("x1"); ``name``, ``module``, ``args``: the innermost module running
    when ``err`` was raised and its positional arguments (``module`` None when no module was running)."""
    text = str(err)
    where = _where(name, module)
    passed = describe(x, arg)
    if isinstance(err, AssertionError) and "not compiled with CUDA" in text:
        return RuntimeError(
            f"this build of torch ({torch.__version__}) has no CUDA support, but the model asked for a CUDA tensor "
            f"{where} while running on {passed} (torch: {text!r}). Keep the model and {arg} on the CPU (remove "
            ".cuda() / device='cuda' from the model's forward), or install a CUDA build of torch.")
    if type(err) not in _RESTATED:  # the model's own errors, and subclasses such as torch.OutOfMemoryError
        return None
    note = (f"ntkit first runs the model on the first sample(s) of {arg}, so the batch size in torch's message is "
            "1 or 2")
    integers = [(leaf_name, leaf) for leaf_name, leaf in named_leaves(x, arg) if not leaf.is_floating_point()]
    expectation = None if module is None else _expectation(module, args)
    if integers and _DTYPE_MISMATCH.search(text) and not isinstance(module, nn.Embedding):
        leaf_name, leaf = integers[0]
        return TypeError(
            f"{leaf_name} has integer dtype {leaf.dtype} (shape {tuple(leaf.shape)}), but the model computes with "
            f"floats {where} (torch: {text}). Pass floating inputs, e.g. {leaf_name}.float(); integer inputs are "
            "for models that take ids, such as nn.Embedding.")
    if expectation is not None:
        error = TypeError if "integer ids" in expectation else ValueError
        return error(f"{passed} does not fit the model: {_subject(name, module)} {expectation} (torch: {text}; "
                     f"{note}).")
    return type(err)(f"the model failed on {passed}, {where}: {text} ({note})")
