"""Infinite-width kernel speed: ``arch.kernel`` against a plain eager-torch recursion, side by side, on any device.

Workload (issues 2 and 11): 3-hidden-layer ReLU MLP (``--activation erf`` / ``gelu`` / ``sin`` / ``cos``)
(w_std = 1, b_std = 0.1), d = 64,
float32, NNGP and NTK of x with itself, N = 1,000 and 4,000 (and 20,000 with ``--sizes``). The competitor is the
same recursion written as one
would in eager torch: one Gram product, then full-grid elementwise operations per layer. Per N: the eager
competitor, ntkit's default (what a user gets: on a CUDA device the hand-written Triton pass of
``kernels/triton_flat.py``, elsewhere eager tiles planned for the device until compiling pays), its tiled eager
pass, and the compiled pass (``fused=True``) once warm, each checked against the competitor. Separately:

* the first call of the default at N = 4,000 in a fresh process with an empty Triton cache (issue 11's goal:
  <= 2 s), and the first call of
  ``fused=True`` there (torch.compile's cost: the break-even ``ntkit.kernels.flat_plan.COMPILE_SECONDS`` uses);
* peak memory of N = 20,000 with tiling (CPU), measured in a fresh subprocess (peak RSS above the baseline).

    .venv/bin/python benchmarks/analytic_kernel.py [--repeats 5] [--device cpu|cuda] [--sizes 1000 4000]
                                                   [--activation relu|erf|gelu|sin|cos] [--skip-large]
                                                   [--skip-first-call]
                                                   [--skip-fused]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

import ntkit as nk
from ntkit.kernels import triton_flat
from _timing import device_description, median_time


def eager_reference(x: torch.Tensor, hidden_layers: int = 3, w_std: float = 1.0, b_std: float = 0.1,
                    activation: str = "relu"):
    """The recursion in plain eager torch on the full N×N grid (what a user would write first)."""
    n0 = x.shape[1]
    gram = x @ x.T / n0
    q = (x * x).sum(1) / n0
    w2, b2 = w_std ** 2, b_std ** 2
    nngp, q = w2 * gram + b2, w2 * q + b2
    ntk = nngp
    if activation == "erf":  # Williams 1997
        for _ in range(hidden_layers):
            grow = 1 + 2 * q
            root = torch.sqrt(grow[:, None] * grow[None, :] - 4 * nngp ** 2)
            k = (2 / math.pi) * torch.atan2(2 * nngp, root)
            kdot = (4 / math.pi) / root
            q = (2 / math.pi) * torch.atan2(2 * q, torch.sqrt(1 + 4 * q))
            nngp, q = w2 * k + b2, w2 * q + b2
            ntk = nngp + w2 * ntk * kdot
        return nngp, ntk
    if activation in ("sin", "cos"):  # K = e^{-(q1+q2)/2} sinh c (sin) or cosh c (cos), K̇ the other one
        for _ in range(hidden_layers):
            decay = torch.exp(-(q[:, None] + q[None, :]) / 2)
            sinh, cosh = decay * torch.sinh(nngp), decay * torch.cosh(nngp)
            k, kdot = (sinh, cosh) if activation == "sin" else (cosh, sinh)
            q = torch.exp(-q) * (torch.sinh(q) if activation == "sin" else torch.cosh(q))
            nngp, q = w2 * k + b2, w2 * q + b2
            ntk = nngp + w2 * ntk * kdot
        return nngp, ntk
    if activation == "gelu":  # the closed form as written in ntkit.kernels.dual.gelu's docstring, S = P − c²
        def gelu(c, q1, q2):
            p = (1 + q1) * (1 + q2)
            s = p - c ** 2
            root = torch.sqrt(s)
            atan = torch.atan(c / root)
            k = c / 4 + ((q1 * q2 * s + c ** 2) / (p * root) + c * atan) / (2 * math.pi)
            kdot = 0.25 + (atan + c / root + c * (2 * s - q1 * q2 * s + c ** 2) / (p * s * root)) / (2 * math.pi)
            return k, kdot
        for _ in range(hidden_layers):
            k, kdot = gelu(nngp, q[:, None], q[None, :])
            q = gelu(q, q, q)[0]
            nngp, q = w2 * k + b2, w2 * q + b2
            ntk = nngp + w2 * ntk * kdot
        return nngp, ntk
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


def first_calls(n: int, device: str, fused: bool = True, activation: str = "relu") -> dict:
    """In fresh processes: seconds of the first default call at N = n, and of the first fused (compiled) call."""
    out = {}
    for name, option in (("default", "None"), ("fused", "True"))[:2 if fused else 1]:
        code = f"""
import json, time, torch, ntkit as nk
x = torch.randn({n}, 64, generator=torch.Generator().manual_seed(0)).to("{device}")
arch = nk.mlp(3, 512, activation="{activation}", w_std=1.0, b_std=0.1)
if "{device}" == "cuda":
    torch.cuda.synchronize()
t = time.perf_counter(); arch.kernel(x, fused={option})
if "{device}" == "cuda":
    torch.cuda.synchronize()
print(json.dumps(time.perf_counter() - t))
"""
        with tempfile.TemporaryDirectory() as cache:  # an empty Triton cache: its kernel compiles, as on a new machine
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env={**os.environ, "TRITON_CACHE_DIR": cache})
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def large_memory_probe(n: int) -> dict:
    """Run in a subprocess: peak RSS of arch.kernel on N = n points (tiling + symmetry)."""
    code = f"""
import json, resource, time, torch, ntkit as nk
def high_water_kib():  # this process's own peak RSS (Linux's ru_maxrss keeps the parent's peak across fork+exec)
    try:
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    except (OSError, IndexError):  # no /proc: ru_maxrss (kilobytes on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.randn({n}, 64, generator=torch.Generator().manual_seed(0))
arch = nk.mlp(3, 512, activation="relu", w_std=1.0, b_std=0.1)
arch.kernel(x[:2048])  # warm-up outside the measurement (first calls are reported separately)
base = high_water_kib()
t = time.perf_counter(); k = arch.kernel(x); elapsed = time.perf_counter() - t
peak = high_water_kib()
out = 2 * k.ntk.numel() * k.ntk.element_size()
print(json.dumps(dict(seconds=elapsed, peak_above_baseline_gib=(peak - base) / 2**20, outputs_gib=out / 2**30,
                      finite=bool(torch.isfinite(k.ntk).all()))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--activation", choices=["relu", "erf", "gelu", "sin", "cos"], default="relu")
    parser.add_argument("--skip-large", action="store_true", help="skip the N = 20,000 memory probe (CPU)")
    parser.add_argument("--skip-first-call", action="store_true", help="skip the fresh-process first calls")
    parser.add_argument("--skip-fused", action="store_true",
                        help="skip fused=True (torch.compile: tens of seconds per size on a GPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    arch = nk.mlp(3, 512, activation=args.activation, w_std=1.0, b_std=0.1)
    print(json.dumps(dict(torch=torch.__version__, device=device_description(device), dtype="float32",
                          activation=args.activation)))

    rows = []
    for n in args.sizes:
        x = torch.randn(n, 64).to(device)
        try:  # the full-grid competitor holds ~10 N×N temporaries: past the device's memory at large N
            ref_ntk = eager_reference(x, activation=args.activation)[1]
        except torch.OutOfMemoryError:
            ref_ntk = None
        rel = default_rel = eager_t = fused_t = math.nan
        fresh = nk.mlp(3, 512, activation=args.activation, w_std=1.0, b_std=0.1)  # no eager seconds spent yet
        if ref_ntk is not None:
            off = ~torch.eye(n, dtype=torch.bool, device=device)
            for option, name in ((False, "tiled"), (None, "default")):  # the default: the Triton pass on CUDA
                k = (arch if option is False else fresh).kernel(x, fused=option)
                diff = ((k.ntk - ref_ntk)[off].abs().max() / ref_ntk.abs().max()).item()
                rel, default_rel = (diff, default_rel) if name == "tiled" else (rel, diff)
            del ref_ntk, k, off
            eager_t, _ = median_time(lambda: eager_reference(x, activation=args.activation), args.repeats, device)
        else:
            print(json.dumps(dict(n=n, eager="out of device memory")), flush=True)
        default_t, _ = median_time(lambda: fresh.kernel(x), args.repeats, device)
        tiled_t, _ = median_time(lambda: arch.kernel(x, fused=False), args.repeats, device)
        if not args.skip_fused:
            arch.kernel(x, fused=True)  # compile outside the measurement
            fused_t, _ = median_time(lambda: arch.kernel(x, fused=True), args.repeats, device)
        rows.append(dict(n=n, eager_s=eager_t, default_s=default_t, tiled_s=tiled_t, fused_s=fused_t,
                         max_offdiag_rel_diff=rel, default_max_offdiag_rel_diff=default_rel,
                         triton=triton_flat.usable(device, x.dtype) and triton_flat.program(arch.flatten(), 64)
                         is not None))
        print(json.dumps(rows[-1]), flush=True)

    print("\n| N | eager torch (full grid) | ntkit default | ntkit tiled eager | ntkit fused (warm) | speed-up "
          "(default) | speed-up (fused) | max off-diag rel. diff (tiled / default) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['eager_s'] * 1e3:.1f} ms | {r['default_s'] * 1e3:.1f} ms | {r['tiled_s'] * 1e3:.1f} ms "
              f"| {r['fused_s'] * 1e3:.1f} ms | {r['eager_s'] / r['default_s']:.1f}x | "
              f"{r['eager_s'] / r['fused_s']:.1f}x | {r['max_offdiag_rel_diff']:.1e} / "
              f"{r['default_max_offdiag_rel_diff']:.1e} |")

    if not args.skip_first_call:
        first = first_calls(4000, args.device, fused=not args.skip_fused, activation=args.activation)
        print(json.dumps(dict(first_call_n4000=first)))
        print(f"\nFirst call at N = 4,000 in a fresh process: default {first['default']:.2f} s" +
              (f", fused=True {first['fused']:.1f} s (torch.compile's cost on this device)" if "fused" in first
               else ""))

    if not args.skip_large and device.type == "cpu":
        probe = large_memory_probe(20000)
        print(f"N = 20,000 (tiled, symmetric): {probe['seconds']:.1f} s, peak RSS above baseline "
              f"{probe['peak_above_baseline_gib']:.2f} GiB for {probe['outputs_gib']:.2f} GiB of outputs "
              f"(NNGP + NTK); all finite: {probe['finite']}. The full-grid eager version would hold ~10 "
              f"N×N temporaries (~{10 * 20000**2 * 4 / 2**30:.0f} GiB).")


if __name__ == "__main__":
    main()
