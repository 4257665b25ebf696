"""What ntkit's hand-written Triton kernels share: the optional import, where they run, and a process-wide off
switch once one fails.

Triton ships with CUDA builds of torch; the CPU build and other platforms need not have it, and every kernel has a
torch twin that runs instead. The kernels use only Triton's core language, so the CPU test suite runs their source
through Triton's interpreter (``INTERPRET``; Triton must then have been imported with TRITON_INTERPRET=1, which
``tests/conftest.py`` sets, for its own library functions to be interpretable too)."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = tl = None

__all__ = ["triton", "tl", "INTERPRET", "usable", "disable", "disabled", "build", "wide_offsets"]

# Run the kernels in Triton's CPU interpreter, on tensors of any device (the tests).
INTERPRET = False
# Why a kernel failed in this process (none is tried again), or None.
_disabled: str | None = None
_BUILT: dict = {}


def usable(device: torch.device) -> bool:
    """Whether Triton kernels run on ``device``: Triton importable, a CUDA device (any device with ``INTERPRET``),
    and no kernel failed earlier in this process."""
    return triton is not None and _disabled is None and (INTERPRET or torch.device(device).type == "cuda")


def disable(error: BaseException) -> None:
    """Stop using the Triton kernels in this process (one failed to compile or run here)."""
    global _disabled
    _disabled = f"{type(error).__name__}: {error}"


def disabled() -> str | None:
    """Why the kernels were turned off in this process, or None."""
    return _disabled


def build(fn):
    """``fn`` jitted (compiled for the GPU on its first launch) or, with ``INTERPRET``, its interpreted twin; built
    once each."""
    if triton is None:
        raise RuntimeError("ntkit's Triton kernels need the triton package (shipped with CUDA builds of torch)")
    key = (fn, INTERPRET)
    if key not in _BUILT:
        if INTERPRET:
            from triton.runtime.interpreter import InterpretedFunction
            _BUILT[key] = InterpretedFunction(fn)
        else:
            _BUILT[key] = triton.jit(fn)
    return _BUILT[key]


def wide_offsets(t1: int, t2: int, *row_strides: int) -> bool:
    """Whether a (t1, t2) tile's element offsets from its base can pass 2³¹ − 1, so a kernel must index in int64 (a
    user's ``batch_size`` of 50,000 writes into a 50,000-wide output: offsets up to 2.5·10⁹)."""
    return max((t1 - 1) * stride + t2 for stride in row_strides) >= 2 ** 31
