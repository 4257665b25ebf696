"""The CUDA engines against float64 on the CPU, for a session lent a GPU (benchmarks/device_check.sh).

The CPU suite runs ntkit's Triton kernels (``kernels/triton_flat.py``, ``kernels/triton_series.py``) through
Triton's interpreter and compiles them for sm_90 without a GPU; this runs the compiled kernels themselves, on every
architecture family they cover (NTK and standard parameterisation, ReLU, LeakyReLU, Abs, Identity, erf, the quadrature
activations' series, near-duplicate points, symmetric and not), and reports per case the largest error relative to
the kernel's scale (beside the CPU's eager float32 engine's on the same points, the float32 yardstick), how many
tiles the flat kernel computed, and the first call's seconds.

    python3 benchmarks/gpu_correctness.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import ntkit as nk
from ntkit.kernels import triton_flat, triton_support
from _timing import device_description

ARCHS = {
    "relu": nk.mlp(3, 1, activation="relu", b_std=0.1),
    "relu-standard": nk.mlp(2, 64, activation="relu", b_std=0.1, parameterization="standard"),
    "leaky": nk.mlp(2, 1, activation="leaky_relu", w_std=1.3, b_std=0.05),
    "abs-no-bias": nk.mlp(2, 1, activation="abs", b_std=0.0),
    "identity": nk.mlp(2, 1, activation="identity", b_std=0.2),
    "mixed": nk.Serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(8, w_std=1.2), nk.Abs(), nk.Dense(8),
                       nk.Identity(), nk.Dense(1, b_std=0.3)),
    "erf": nk.mlp(2, 1, activation="erf", b_std=0.1),
    "erf-standard-wide": nk.mlp(3, 64, activation="erf", w_std=2.5, b_std=0.0, parameterization="standard"),
    "erf-relu": nk.Serial(nk.Dense(8, b_std=0.1), nk.Erf(), nk.Dense(8), nk.ReLU(), nk.Dense(1)),
    "gelu (torch engines)": nk.mlp(2, 1, activation="gelu", b_std=0.1),
    "tanh (Triton series)": nk.mlp(3, 1, activation="tanh", b_std=0.1),
    "softplus (Triton series)": nk.mlp(2, 1, activation="softplus", b_std=0.1),
}


def points(seed: int) -> torch.Tensor:
    """Random points, some nudged copies (1 − ρ ~ 1e-6: refined in float64) and negations, float64."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(900, 32, generator=g, dtype=torch.float64)
    nudged = base[:50] * (1 + 1e-3 * torch.randn(50, 32, generator=g, dtype=torch.float64))
    return torch.cat([base, nudged, -base[50:60]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args().device)
    print(json.dumps(dict(device=device_description(device), torch=torch.__version__)))
    x1, x2 = points(0), points(1)[:700]
    calls = []
    original = triton_flat.TritonSteps.__call__
    triton_flat.TritonSteps.__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    worst = 0.0
    for name, arch in ARCHS.items():
        for second in (x2, None):
            calls.clear()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            got = arch.kernel(x1.float().to(device), None if second is None else second.float().to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            want = arch.kernel(x1, second)
            # float32 itself limits the accuracy (near-duplicate points in the chaotic regime, w_std = 2.5: ~1e-5):
            # the CPU's eager float32 engine on the same points is the yardstick
            cpu32 = arch.kernel(x1.float(), None if second is None else second.float())

            def error(k, value):
                return float((value.cpu().double() - getattr(want, k)).abs().max() / getattr(want, k).abs().max())

            errors = {k: error(k, getattr(got, k)) for k in ("nngp", "ntk")}
            worst = max(worst, *errors.values())
            print(json.dumps(dict(arch=name, symmetric=second is None, triton_tiles=len(calls), seconds=seconds,
                                  **{f"{k}_rel_error": v for k, v in errors.items()},
                                  **{f"cpu_float32_{k}_rel_error": error(k, getattr(cpu32, k))
                                     for k in ("nngp", "ntk")})), flush=True)
    print(json.dumps(dict(worst_rel_error=worst, triton_disabled=triton_support.disabled())))


if __name__ == "__main__":
    main()
