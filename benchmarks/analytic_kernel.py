"""Infinite-width kernel speed: ``arch.kernel`` against a plain eager-torch recursion, side by side.

Workload (issue 2): 3-hidden-layer ReLU MLP (w_std = 1, b_std = 0.1), d = 64, float32, CPU, N = 1,000 and 4,000,
NNGP and NTK of x with itself. The competitor is the same recursion written as one would in eager torch: one Gram
product, then full-grid elementwise operations per layer. Also: peak memory of N = 20,000 with tiling, measured in
a fresh subprocess (peak RSS above the process baseline).

    .venv/bin/python benchmarks/analytic_kernel.py [--repeats 5] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch

import ntkit as nk
from _timing import median_time


def eager_reference(x: torch.Tensor, hidden_layers: int = 3, w_std: float = 1.0, b_std: float = 0.1):
    """The recursion in plain eager torch on the full N×N grid (what a user would write first)."""
    n0 = x.shape[1]
    gram = x @ x.T / n0
    q = (x * x).sum(1) / n0
    w2, b2 = w_std ** 2, b_std ** 2
    nngp, q = w2 * gram + b2, w2 * q + b2
    ntk = nngp
    for _ in range(hidden_layers):
        norm = torch.sqrt(q[:, None] * q[None, :])
        rho = (nngp / norm).clamp(-1, 1)
        theta = torch.arccos(rho)
        k = norm * (torch.sqrt(1 - rho ** 2) + (math.pi - theta) * rho) / (2 * math.pi)
        kdot = (math.pi - theta) / (2 * math.pi)
        q = q / 2
        nngp, q = w2 * k + b2, w2 * q + b2
        ntk = nngp + w2 * ntk * kdot
    return nngp, ntk


def large_memory_probe(n: int) -> dict:
    """Run in a subprocess: peak RSS of arch.kernel on N = n points (tiling + symmetry)."""
    code = f"""
import json, resource, time, torch, ntkit as nk
x = torch.randn({n}, 64, generator=torch.Generator().manual_seed(0))
arch = nk.mlp(3, 512, activation="relu", w_std=1.0, b_std=0.1)
arch.kernel(x[:2048])  # compile outside the measurement (first-call cost is reported separately)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); k = arch.kernel(x); elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = 2 * k.ntk.numel() * k.ntk.element_size()
print(json.dumps(dict(seconds=elapsed, peak_above_baseline_gib=(peak - base) / 2**20, outputs_gib=out / 2**30,
                      finite=bool(torch.isfinite(k.ntk).all()))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-large", action="store_true", help="skip the N = 20,000 memory probe")
    args = parser.parse_args()
    torch.manual_seed(0)
    arch = nk.mlp(3, 512, activation="relu", w_std=1.0, b_std=0.1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")

    # First call of the fused pass includes torch.compile (a warm on-disk cache makes later processes faster).
    start = time.perf_counter()
    arch.kernel(torch.randn(2048, 64))
    first_call = time.perf_counter() - start

    rows = []
    for n in (1000, 4000):
        x = torch.randn(n, 64)
        ref_nngp, ref_ntk = eager_reference(x)
        k = arch.kernel(x)
        off = ~torch.eye(n, dtype=torch.bool)
        rel = ((k.ntk - ref_ntk)[off].abs().max() / ref_ntk.abs().max()).item()
        eager_t, _ = median_time(lambda: eager_reference(x), args.repeats)
        default_t, _ = median_time(lambda: arch.kernel(x), args.repeats)
        tiled_t, _ = median_time(lambda: arch.kernel(x, fused=False), args.repeats)
        fused_t, _ = median_time(lambda: arch.kernel(x, fused=True), args.repeats)
        rows.append((n, eager_t, default_t, tiled_t, fused_t, rel))

    print("\n| N | eager torch (full grid) | ntkit default | ntkit tiled eager | ntkit fused | speed-up (default) "
          "| speed-up (fused) | max off-diag rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n, eager_t, default_t, tiled_t, fused_t, rel in rows:
        print(f"| {n:,} | {eager_t * 1e3:.0f} ms | {default_t * 1e3:.0f} ms | {tiled_t * 1e3:.0f} ms | "
              f"{fused_t * 1e3:.0f} ms | {eager_t / default_t:.1f}x | {eager_t / fused_t:.1f}x | {rel:.1e} |")
    print(f"\nFirst call of the fused pass in this process (includes torch.compile): {first_call:.1f} s")

    if not args.skip_large:
        probe = large_memory_probe(20000)
        print(f"N = 20,000 (tiled, symmetric): {probe['seconds']:.1f} s, peak RSS above baseline "
              f"{probe['peak_above_baseline_gib']:.2f} GiB for {probe['outputs_gib']:.2f} GiB of outputs "
              f"(NNGP + NTK); all finite: {probe['finite']}. The full-grid eager version would hold ~10 "
              f"N×N temporaries (~{10 * 20000**2 * 4 / 2**30:.0f} GiB).")


if __name__ == "__main__":
    main()
