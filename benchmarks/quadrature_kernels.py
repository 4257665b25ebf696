"""Quadrature activations (tanh, sigmoid, softplus) against the closed-form erf, side by side, same process.

Workload (issue 11, point 6): 3-hidden-layer MLP (w_std = 1, b_std = 0.1), d = 64 standard-normal inputs, float32,
NNGP and NTK of N = 2,000 points with themselves, ntkit's defaults. erf has a closed-form dual; tanh, sigmoid and
softplus go through Mehler's series with per-point Gauss–Hermite coefficients (ntkit.kernels.quadrature). Goal:
each within 3x of erf's time. Also the float64 values against those of the previous release's algorithm are
covered by tests/kernels/test_quadrature.py (unchanged to 1e-10).

    .venv/bin/python benchmarks/quadrature_kernels.py [--repeats 5] [--n 2000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json

import torch

import ntkit as nk
from _timing import device_description, median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    x = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0)).to(args.device)
    print(json.dumps(dict(torch=torch.__version__, device=device_description(args.device), n=args.n)))
    times = {}
    for activation in ("erf", "tanh", "sigmoid", "softplus"):
        arch = nk.mlp(3, 512, activation=activation, w_std=1.0, b_std=0.1)
        arch.kernel(x[:64])  # warm-up: Hermite nodes and projections are cached per process
        times[activation], _ = median_time(lambda: arch.kernel(x, fused=False), args.repeats, args.device)
        print(json.dumps(dict(activation=activation, seconds=times[activation],
                              ratio_to_erf=times[activation] / times["erf"])), flush=True)
    print(f"\n| activation | N = {args.n:,} kernel (NNGP + NTK) | time / erf's |\n|---|---|---|")
    for activation, seconds in times.items():
        print(f"| {activation} | {seconds * 1e3:.0f} ms | {seconds / times['erf']:.1f}x |")


if __name__ == "__main__":
    main()
