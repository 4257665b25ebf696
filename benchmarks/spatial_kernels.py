"""Convolutional kernels: ntkit against plain eager torch and neural-tangents, side by side.

Workloads (issue 10), float32, 32×32×3 inputs (standard normal pixels, seed 0):
  * Myrtle-5 NTK (Shankar et al. 2020; ``nk.myrtle(5)``): seconds per kernel entry for one pair (warm and the
    first call of the process) and per entry of a symmetric N×N kernel;
  * CNTK-GAP: ``nk.cnn(depth, readout="gap")`` (3×3 "same" convs + ReLU, global average pooling; Arora et al.
    2019), the same figures;
  * optionally (``--full-n 1000``) the whole Myrtle-5 N×N kernel, with its time (``--full-rows R``: R rows of it,
    and the whole kernel's time extrapolated from them).
Every float32 result is compared with ntkit's float64 kernel (which agrees with neural-tangents' float64 to
1e-14). Competitors: (a) the same recursion written in plain eager torch as a user would (full covariance per pair, the
conv as a sum of nine shifted copies of the zero-padded covariance, the ReLU formula on whole tensors), in this
process; (b) neural-tangents 0.6.5 (JAX, jit-compiled) in a subprocess of its own venv when ``.venv-nt`` exists
(``python3 -m venv .venv-nt && .venv-nt/bin/pip install neural-tangents jax==0.4.23 jaxlib==0.4.23 "numpy<2"
tf2jax==0.3.5``).

    .venv/bin/python benchmarks/spatial_kernels.py [--repeats 3] [--n 8] [--depth 5] [--full-n 0 [--full-rows 0]]
                                                   [--skip-grid] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import ntkit as nk
from _timing import median_time

NT_PYTHON = os.path.join(os.path.dirname(__file__), "..", ".venv-nt", "bin", "python")

# ----- (a) the recursion in plain eager torch ---------------------------------------------------------------------


def _eager_conv(k, w2):
    """(B, H, W, H, W) -> w2 · (1/9) Σ_{dh, dw} K_pad[p + d, p' + d] (3×3 "same")."""
    _, h, w = k.shape[:3]
    pad = F.pad(k, (1, 1, 1, 1, 1, 1, 1, 1))
    total = sum(pad[:, a:a + h, b:b + w, a:a + h, b:b + w] for a in range(3) for b in range(3))
    return total * (w2 / 9)


def _eager_relu(k, q1, q2):
    norm = torch.sqrt(q1 * q2)
    rho = (k / norm).clamp(-1, 1)
    theta = torch.arccos(rho)
    value = norm * (torch.sqrt(1 - rho ** 2) + (math.pi - theta) * rho) / (2 * math.pi)
    return value, (math.pi - theta) / (2 * math.pi)


def _eager_pool(k):
    b, h, w = k.shape[:3]
    return k.reshape(b, h // 2, 2, w // 2, 2, h // 2, 2, w // 2, 2).mean((2, 4, 6, 8))


def _diag(k):
    return k.diagonal(0, 1, 3).diagonal(0, 1, 2)  # (B, H, W)


def eager_kernel(stages, readout, x1, x2, w2=2.0):
    """NTK of ``stages`` (a list of "conv"/"pool") + readout ("flatten" or "gap") + Dense, all pairs at once."""
    def run(cov, self1, self2):
        ntk = None
        var_index = 0
        for op in stages:
            if op == "conv":
                cov = _eager_conv(cov, w2)
                ntk = cov if ntk is None else cov + _eager_conv(ntk, w2)
                q1, q2 = self1[var_index], self2[var_index]
                h, w = cov.shape[1:3]
                cov, kdot = _eager_relu(cov, q1.reshape(-1, h, w, 1, 1), q2.reshape(-1, 1, 1, h, w))
                ntk = ntk * kdot
                var_index += 1
            else:
                cov, ntk = _eager_pool(cov), _eager_pool(ntk)
        if readout == "flatten":
            cov, ntk = _diag(cov).mean((1, 2)), _diag(ntk).mean((1, 2))
        else:
            cov, ntk = cov.mean((1, 2, 3, 4)), ntk.mean((1, 2, 3, 4))
        return w2 * cov, w2 * cov + w2 * ntk

    def covariance(a, b):
        c, h, w = a.shape[1:]
        return torch.einsum("achw,acij->ahwij", a, b) / c

    def self_variances(x):
        """Per image, the pre-activation variances at each ReLU: the recursion on (x, x)."""
        cov = covariance(x, x)
        out = []
        for op in stages:
            if op == "conv":
                cov = _eager_conv(cov, w2)
                q = _diag(cov)
                out.append(q)
                h, w = q.shape[1:]
                cov, _ = _eager_relu(cov, q.reshape(-1, h, w, 1, 1), q.reshape(-1, 1, 1, h, w))
            else:
                cov = _eager_pool(cov)
        return out

    v1, v2 = self_variances(x1), self_variances(x2)
    ntk = torch.empty(len(x1), len(x2), dtype=x1.dtype)
    for i in range(len(x1)):
        for j in range(len(x2)):
            cov = covariance(x1[i:i + 1], x2[j:j + 1])
            ntk[i, j] = run(cov, [v[i:i + 1] for v in v1], [v[j:j + 1] for v in v2])[1][0]
    return ntk


MYRTLE5 = ["conv", "conv", "pool", "conv", "pool", "conv", "pool", "pool", "pool"]

# ----- (b) neural-tangents in its own venv ------------------------------------------------------------------------

NT_CHILD = r"""
import json, sys, time, numpy as np, jax
from neural_tangents import stax
spec = json.loads(sys.argv[2])
conv = lambda: stax.Conv(1, (3, 3), W_std=np.sqrt(2.0), b_std=0.0, padding="SAME")
if spec["arch"] == "myrtle5":
    layers = [conv(), stax.Relu()] * 2 + [stax.AvgPool((2, 2), strides=(2, 2))]
    layers += [conv(), stax.Relu()] + [stax.AvgPool((2, 2), strides=(2, 2))]
    layers += [conv(), stax.Relu()] + [stax.AvgPool((2, 2), strides=(2, 2))] * 3
    layers += [stax.Flatten(), stax.Dense(1, np.sqrt(2.0), 0.0)]
else:
    layers = [conv(), stax.Relu()] * spec["depth"] + [stax.GlobalAvgPool(), stax.Dense(1, np.sqrt(2.0), 0.0)]
kernel_fn = jax.jit(stax.serial(*layers)[2], static_argnames="get")
x = np.load(sys.argv[1]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
def run(a, b):
    return np.asarray(kernel_fn(a, b, get="ntk").block_until_ready())
start = time.perf_counter(); run(x[:1], x[1:2]); first = time.perf_counter() - start
pair = []
for _ in range(spec["repeats"]):
    start = time.perf_counter(); run(x[:1], x[1:2]); pair.append(time.perf_counter() - start)
n = spec["n"]
run(x[:n], None)  # compile the N×N shape outside the measurement
start = time.perf_counter(); grid = run(x[:n], None); grid_seconds = time.perf_counter() - start
print(json.dumps(dict(first=first, pair=sorted(pair)[len(pair) // 2], grid=grid_seconds, ntk=grid.tolist(),
                      device=str(jax.devices()[0]))))
"""


def neural_tangents(x: torch.Tensor, arch: str, depth: int, n: int, repeats: int) -> dict | None:
    if not os.path.exists(NT_PYTHON):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, x.numpy())
        spec = json.dumps(dict(arch=arch, depth=depth, n=n, repeats=repeats))
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([NT_PYTHON, "-c", NT_CHILD, path, spec], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"neural-tangents failed: {done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- the workloads ----------------------------------------------------------------------------------------------


def _relative(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def measure(name, arch, stages, readout, x, args, nt_arch):
    pair1, pair2 = x[:1], x[1:2]
    start = time.perf_counter()
    arch.kernel(pair1, pair2, get="ntk")
    first = time.perf_counter() - start
    pair, _ = median_time(lambda: arch.kernel(pair1, pair2, get="ntk"), args.repeats)
    grid, k = median_time(lambda: arch.kernel(x[:args.n], get="ntk"), args.repeats)
    unique = args.n * (args.n + 1) // 2
    exact = arch.kernel(x[:args.n].double(), get="ntk").ntk  # float64: the reference for every float32 result
    row = dict(workload=name, ntkit_first_s=first, ntkit_pair_s=pair, ntkit_grid_s=grid,
               ntkit_per_entry_s=grid / args.n ** 2, ntkit_per_unique_pair_s=grid / unique,
               ntkit_error_vs_float64=_relative(k.ntk, exact))
    eager_n = min(args.n, 4)
    eager, eager_k = median_time(lambda: eager_kernel(stages, readout, x[:eager_n], x[:eager_n]), 1)
    row.update(eager_per_entry_s=eager / eager_n ** 2, eager_error_vs_float64=_relative(eager_k,
                                                                                        exact[:eager_n, :eager_n]))
    nt = neural_tangents(x, nt_arch, args.depth, args.n, args.repeats)
    if nt is not None:
        row.update(nt_first_s=nt["first"], nt_pair_s=nt["pair"], nt_per_entry_s=nt["grid"] / args.n ** 2,
                   nt_error_vs_float64=_relative(np.asarray(nt["ntk"], dtype=np.float64), exact))
    return row


def full_kernel(n: int, device: str, rows: int = 0) -> dict:
    """The whole Myrtle-5 N×N NTK, or (``rows`` > 0) the first ``rows`` rows of it, from which the whole kernel's
    time is extrapolated: N(N+1)/2 + N pair evaluations (the upper triangle and the self pass) at the block's
    measured seconds per pair (the block has no symmetry to exploit: rows·N pairs + rows + N self pairs)."""
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    start = time.perf_counter()
    if rows:
        k = nk.myrtle(5).kernel(x[:rows], x, get="ntk", progress=True)
        seconds = time.perf_counter() - start
        per_pair = seconds / (rows * n + rows + n)
        return dict(n=n, rows=rows, block_seconds=seconds, per_pair_s=per_pair,
                    extrapolated_whole_kernel_s=per_pair * (n * (n + 1) / 2 + n),
                    finite=bool(torch.isfinite(k.ntk).all()))
    k = nk.myrtle(5).kernel(x, get="ntk", progress=True)
    seconds = time.perf_counter() - start
    # Spot check: a few entries of the big (tiled, mirrored) kernel against the same pairs computed alone.
    picks = torch.randint(0, n, (2, 6), generator=torch.Generator().manual_seed(2))
    alone = torch.stack([nk.myrtle(5).kernel(x[i:i + 1], x[j:j + 1], get="ntk").ntk[0, 0] for i, j in picks.T])
    spot = float(((k.ntk[picks[0], picks[1]] - alone).abs() / alone.abs()).max())
    return dict(n=n, seconds=seconds, per_entry_s=seconds / n ** 2, finite=bool(torch.isfinite(k.ntk).all()),
                min_eigenvalue=float(torch.linalg.eigvalsh(k.ntk.double()).min()),
                symmetric=bool(torch.equal(k.ntk, k.ntk.T)), spot_check_max_relative_difference=spot)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=8, help="points of the symmetric N×N kernel timed per entry")
    parser.add_argument("--depth", type=int, default=5, help="conv layers of the CNTK-GAP")
    parser.add_argument("--full-n", type=int, default=0, help="also time the whole Myrtle-5 kernel of this many")
    parser.add_argument("--full-rows", type=int, default=0,
                        help="with --full-n: time only this many rows of it and extrapolate the whole kernel")
    parser.add_argument("--skip-grid", action="store_true", help="only the --full-n measurement")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    x = torch.randn(max(args.n, 2), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print(json.dumps(dict(device=args.device, torch=torch.__version__, threads=torch.get_num_threads())))
    if args.full_n:
        print(json.dumps(dict(full_kernel=full_kernel(args.full_n, args.device, args.full_rows))), flush=True)
    if args.skip_grid:
        return
    rows = [measure("Myrtle-5 NTK, 32x32x3", nk.myrtle(5), MYRTLE5, "flatten", x.to(args.device), args, "myrtle5"),
            measure(f"CNTK-GAP depth {args.depth}, 32x32x3", nk.cnn(args.depth, readout="gap"),
                    ["conv"] * args.depth, "gap", x.to(args.device), args, "cntk")]
    for row in rows:
        print(json.dumps(row))
        summary = (f"{row['workload']}: ntkit {row['ntkit_pair_s'] * 1e3:.1f} ms per pair warm "
                   f"(first call {row['ntkit_first_s'] * 1e3:.0f} ms), {row['ntkit_per_entry_s'] * 1e3:.2f} ms per "
                   f"entry of the {args.n}x{args.n} kernel; eager torch {row['eager_per_entry_s'] * 1e3:.1f} ms per "
                   f"entry ({row['eager_per_entry_s'] / row['ntkit_per_entry_s']:.1f}x)")
        if "nt_pair_s" in row:
            summary += (f"; neural-tangents {row['nt_pair_s'] * 1e3:.0f} ms per pair "
                        f"({row['nt_pair_s'] / row['ntkit_pair_s']:.0f}x), {row['nt_per_entry_s'] * 1e3:.0f} ms per "
                        f"entry ({row['nt_per_entry_s'] / row['ntkit_per_entry_s']:.0f}x), first call "
                        f"{row['nt_first_s']:.1f} s; max error vs float64: ntkit {row['ntkit_error_vs_float64']:.1e}, "
                        f"neural-tangents {row['nt_error_vs_float64']:.1e}")
        print(summary)


if __name__ == "__main__":
    main()
