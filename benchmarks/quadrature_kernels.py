"""Quadrature activations (tanh, sigmoid, softplus) against the closed-form erf, side by side, same process.

Workload (issue 11, point 6): 3-hidden-layer MLP (w_std = 1, b_std = 0.1), d = 64 standard-normal inputs, float32,
NNGP and NTK of N = 2,000 points with themselves, ntkit's defaults. erf has a closed-form dual; tanh, sigmoid and
softplus go through Mehler's series with per-point Gauss–Hermite coefficients (ntkit.kernels.quadrature). Goal:
each within 3x of erf's time. erf's closed form became slower when issue 13 made it stable at large variances
((b − |c|)(b + |c|) and atan2 instead of arcsin), so the ratio is also given against the textbook closed form
(Williams 1997, ``textbook_erf`` below: the form ntkit used before), run in the same process. Also the float64 values against those of the previous release's algorithm are
covered by tests/kernels/test_quadrature.py (unchanged to 1e-10).

    .venv/bin/python benchmarks/quadrature_kernels.py [--repeats 5] [--n 2000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import ntkit as nk
from _timing import device_description, median_time


class TextbookErf(nk.Erf):
    """Williams 1997's erf dual as written (arcsin of 2c/√P): fast, but it loses accuracy at large variances."""

    def dual(self, c, q1, q2, derivative=True):
        p = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)
        k = (2.0 / math.pi) * torch.arcsin((2.0 * c / torch.sqrt(p)).clamp(-1.0, 1.0))
        if not derivative:
            return k, None
        gap = torch.clamp(q1 * q2 - c * c, min=0.0)
        return k, (4.0 / math.pi) / torch.sqrt(1.0 + 2.0 * (q1 + q2) + 4.0 * gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    x = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0)).to(args.device)
    print(json.dumps(dict(torch=torch.__version__, device=device_description(args.device), n=args.n)))
    times = {}
    activations = {"erf": "erf", "erf (textbook form)": TextbookErf(), "tanh": "tanh", "sigmoid": "sigmoid",
                   "softplus": "softplus"}
    for activation, layer in activations.items():
        arch = nk.mlp(3, 512, activation=layer, w_std=1.0, b_std=0.1)
        arch.kernel(x[:64])  # warm-up: Hermite nodes and projections are cached per process
        times[activation], _ = median_time(lambda: arch.kernel(x, fused=False), args.repeats, args.device)
        print(json.dumps(dict(activation=activation, seconds=times[activation],
                              ratio_to_erf=times[activation] / times["erf"])), flush=True)
    textbook = times["erf (textbook form)"]
    print(f"\n| activation | N = {args.n:,} kernel (NNGP + NTK) | time / erf's | time / textbook erf's |\n"
          "|---|---|---|---|")
    for activation, seconds in times.items():
        print(f"| {activation} | {seconds * 1e3:.0f} ms | {seconds / times['erf']:.1f}x | {seconds / textbook:.1f}x |")


if __name__ == "__main__":
    main()
