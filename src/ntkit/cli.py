"""The ``ntkit`` command."""

from __future__ import annotations

import argparse
import math
import sys

import torch

from .data import circle  # noqa: E402  (light: no optional dependency)
from .layers import mlp


def _demo(args: argparse.Namespace) -> int:
    """Print the limiting NTK of Jacot et al.'s Fig. 1 network on points of the unit circle."""
    arch = mlp(hidden_layers=3, width=500, activation="relu", w_std=1.0, b_std=0.1)
    x = circle(args.points, dtype=torch.float64)
    k = arch.kernel(x)
    gammas = torch.linspace(0, 2 * math.pi, args.points + 1, dtype=torch.float64)[:-1]
    torch.set_printoptions(precision=4, linewidth=160)
    print(f"Architecture: {arch}")
    print("Limiting NTK Θ(x_i, x_j), x_i = (cos γ_i, sin γ_i), γ_i = " +
          ", ".join(f"{g:.3f}" for g in gammas.tolist()))
    print(k.ntk)
    print("Limiting NNGP Σ(x_i, x_j):")
    print(k.nngp)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntkit", description="The Neural Tangent Kernel toolkit for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print the limiting NTK of Jacot et al. 2018 Fig. 1's network")
    demo.add_argument("--points", type=int, default=8, help="number of points on the unit circle (default 8)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
