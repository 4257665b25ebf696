"""Kernel machines past the dense kernel: conjugate gradients and Falkon against dense Cholesky, time and memory.

X
NTKRegressor / NTKClassifier with diag_reg = 1e-3 (ReLU NTK, 3 hidden layers, b_std = 0.1):

1. N = 20,000 synthetic regression (d = 20 standard-normal inputs, y = sin(x₀) + x₁x₂ + 0.1·noise), 2,000 test
   points: solver="cholesky" (the dense N×N kernel), "cg" (Nyström-preconditioned CG on nk.KernelOperator) and
   "nystrom" (Falkon, 10·√N centres): seconds, peak memory, test error, and the largest difference of the
   predictions from the dense solution.
2. N = 100,000 of the same (Falkon): seconds and peak memory (goals: <= 15 min, <= 4 GiB on 2 cores).
3. Augmented MNIST (``--mnist``): the 4,000 training digits of ``nk.data.mnist5k_split``, each shifted by
   (dx, dy) in {-2..2}² (25 copies, zero fill: 100,000 images), Falkon with ``--mnist-centres`` centres, against
   the exact 4,000-digit solution; accuracy on the same 1,000 held-out digits (Adlam et al. 2023 report that
   augmentation helps neural kernels).

    .venv/bin/python benchmarks/large_scale.py [--skip-20k] [--skip-100k] [--mnist] [--mnist-centres 6000]
                                                [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, numpy as np, torch, ntkit as nk
from ntkit.sklearn import NTKClassifier, NTKRegressor
spec = json.loads(sys.argv[1])
device = spec["device"]

def synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    return x.numpy().astype(np.float64), y.numpy().astype(np.float64)

def shifted(images, dx, dy):
    out = np.zeros_like(images)
    h, w = images.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out

start = time.perf_counter()
if spec["task"] == "regression":
    x, y = synthetic(spec["n"], 0)
    x_test, y_test = synthetic(2000, 1)
    model = NTKRegressor(hidden_layers=3, diag_reg=1e-3, solver=spec["solver"], device=device).fit(x, y)
    predicted = model.predict(x_test)
    result = dict(test_nmse=float(np.mean((predicted - y_test) ** 2) / np.var(y_test)))
    if spec.get("save"):
        np.save(spec["save"], predicted)
else:
    x_train, y_train, x_test, y_test = (t.numpy() for t in nk.data.mnist5k_split())
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    if spec["augment"]:
        images = x_train.reshape(-1, 28, 28)
        x_train = np.concatenate([shifted(images, dx, dy).reshape(len(images), -1)
                                  for dx in range(-2, 3) for dy in range(-2, 3)])
        y_train = np.tile(y_train, 25)
    model = NTKClassifier(hidden_layers=3, diag_reg=1e-3, solver=spec["solver"], centres=spec.get("centres"),
                          device=device).fit(x_train, y_train)
    result = dict(accuracy=float(np.mean(model.predict(x_test) == y_test)), n_train=len(x_train))
seconds = time.perf_counter() - start
report = getattr(model, "solve_report_", None)
result.update(seconds=seconds, peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              solver=model.solver_, iterations=None if report is None else report.iterations,
              converged=None if report is None else report.converged)
print(json.dumps(result))
"""


def run(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-20k", action="store_true")
    parser.add_argument("--skip-100k", action="store_true")
    parser.add_argument("--mnist", action="store_true", help="also the augmented-MNIST comparison")
    parser.add_argument("--mnist-centres", type=int, default=6000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(dict(device=args.device)))
    rows = []
    if not args.skip_20k:
        import numpy as np
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp())
        for solver in ("cholesky", "cg", "nystrom"):
            save = str(folder / f"{solver}.npy")
            result = run(dict(task="regression", n=20_000, solver=solver, device=args.device, save=save))
            if "error" not in result and solver != "cholesky" and (folder / "cholesky.npy").exists():
                dense, ours = np.load(folder / "cholesky.npy"), np.load(save)
                result["max_rel_diff_from_dense"] = float(np.abs(ours - dense).max() / np.abs(dense).max())
            rows.append(dict(workload="synthetic N=20,000", **result))
            print(json.dumps(rows[-1]), flush=True)
    if not args.skip_100k:
        rows.append(dict(workload="synthetic N=100,000",
                         **run(dict(task="regression", n=100_000, solver="nystrom", device=args.device))))
        print(json.dumps(rows[-1]), flush=True)
    if args.mnist:
        for augment, solver in ((False, "cholesky"), (True, "nystrom")):
            result = run(dict(task="mnist", augment=augment, solver=solver, centres=args.mnist_centres,
                              device=args.device))
            rows.append(dict(workload=f"MNIST {'augmented x25' if augment else '4,000 digits'}", **result))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| workload | solver | seconds | peak memory | test metric | iterations | vs dense |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | failed: {r['error']} |")
            continue
        metric = f"accuracy {100 * r['accuracy']:.2f}%" if "accuracy" in r else f"NMSE {r['test_nmse']:.4f}"
        diff = f"{r['max_rel_diff_from_dense']:.1e}" if "max_rel_diff_from_dense" in r else "-"
        print(f"| {r['workload']} | {r['solver']} | {r['seconds']:.1f} | {r['peak_gib']:.2f} GiB | {metric} | "
              f"{r['iterations'] or '-'} | {diff} |")


if __name__ == "__main__":
    main()
