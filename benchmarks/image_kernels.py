"""Kernel machines on images: a convolutional NTK against the fully-connected NTK and RBF-SVCs, same splits.

1. MNIST (``nk.data.mnist5k_split``: 4,000 training and 1,000 held-out digits, stratified, fixed), pixels in
   [0, 1], no augmentation, settings fixed before the run (no tuning on the test digits):
     * conv NTK: ``NTKClassifier(architecture=CONV, input_shape=(1, 28, 28), diag_reg=1e-3)`` with
       CONV = ``nk.cnn(depth=4, kernel_size=5, readout="flatten", w_std=√2, b_std=0.1)`` (the CNN-GP/CNTK-Vec
       family: a Flatten readout, so each pair's state is its 28×28 diagonal, O(|S|) per pair);
     * fully-connected NTK: ``NTKClassifier(hidden_layers=3, diag_reg=1e-3)`` (ntkit.sklearn's default MLP);
     * RBF-SVC: ``SVC()`` (C = 1, gamma = "scale") and ``SVC(C=10)``, the usual strong setting on MNIST.
2. scikit-learn's 8×8 digits, 5-fold stratified CV (shuffled, seed 0): a pooled CNTK (two 3×3 convs + ReLU,
   global average pooling: the full covariance of positions) against the same fully-connected NTK and RBF-SVCs.
   The CNTK's N×N kernel is computed once and the folds slice it (``SVC``/kernel regression on a precomputed
   kernel are what ``NTKClassifier`` fits; see ``ntkit.sklearn.estimators``).
Accuracy and wall-clock time (kernel + fit + predict) per model.

    .venv/bin/python benchmarks/image_kernels.py [--skip-mnist] [--skip-digits] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

import ntkit as nk
from ntkit.sklearn import NTKClassifier
from _timing import device_description

CONV = nk.cnn(depth=4, kernel_size=5, readout="flatten", w_std=math.sqrt(2.0), b_std=0.1)
CNTK_GAP = nk.Serial(nk.Conv2d(1, 3, w_std=math.sqrt(2.0), b_std=0.1), nk.ReLU(),
                     nk.Conv2d(1, 3, w_std=math.sqrt(2.0), b_std=0.1), nk.ReLU(), nk.GlobalAvgPool(),
                     nk.Dense(1, w_std=math.sqrt(2.0), b_std=0.1))


def timed(fit_predict):
    start = time.perf_counter()
    predicted = fit_predict()
    return predicted, time.perf_counter() - start


def mnist(device: str) -> list[dict]:
    x_train, y_train, x_test, y_test = (t.double().numpy() if t.is_floating_point() else t.numpy()
                                        for t in nk.data.mnist5k_split())
    models = {
        "conv NTK (CNN depth 4, 5x5, Flatten)": NTKClassifier(architecture=CONV, input_shape=(1, 28, 28),
                                                              diag_reg=1e-3, device=device),
        "fully-connected NTK (3 hidden)": NTKClassifier(hidden_layers=3, diag_reg=1e-3, device=device),
        "RBF-SVC (C=1)": SVC(),
        "RBF-SVC (C=10)": SVC(C=10.0),
    }
    rows = []
    for name, model in models.items():
        predicted, seconds = timed(lambda: model.fit(x_train, y_train).predict(x_test))
        rows.append(dict(data="mnist5k 4000/1000", model=name, accuracy=float(np.mean(predicted == y_test)),
                         seconds=seconds))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _kernel_ridge_accuracy(k_train, k_test, y_train, y_test, diag_reg=1e-3):
    targets = np.eye(10)[y_train] - 0.1
    reg = diag_reg * np.mean(np.diag(k_train))
    alpha = np.linalg.solve(k_train + reg * np.eye(len(k_train)), targets)
    return float(np.mean(np.argmax(k_test @ alpha, 1) == y_test))


def digits(device: str) -> list[dict]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
    start = time.perf_counter()
    gram = CNTK_GAP.kernel(images.to(device), get="ntk").ntk.cpu().numpy()
    kernel_seconds = time.perf_counter() - start
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    results: dict[str, list[float]] = {}
    seconds: dict[str, float] = {"CNTK-GAP (precomputed)": kernel_seconds}
    for train, test in folds.split(x, y):
        start = time.perf_counter()
        results.setdefault("CNTK-GAP (precomputed)", []).append(
            _kernel_ridge_accuracy(gram[np.ix_(train, train)], gram[np.ix_(test, train)], y[train], y[test]))
        seconds["CNTK-GAP (precomputed)"] += time.perf_counter() - start
        for name, model in (("fully-connected NTK (3 hidden)", NTKClassifier(hidden_layers=3, diag_reg=1e-3,
                                                                                          device=device)),
                            ("RBF-SVC (C=1)", SVC()), ("RBF-SVC (C=10)", SVC(C=10.0))):
            predicted, sec = timed(lambda: model.fit(x[train], y[train]).predict(x[test]))
            results.setdefault(name, []).append(float(np.mean(predicted == y[test])))
            seconds[name] = seconds.get(name, 0.0) + sec
    rows = []
    for name, accuracies in results.items():
        rows.append(dict(data="digits 8x8, 5-fold", model=name, accuracy=float(np.mean(accuracies)),
                         accuracy_std=float(np.std(accuracies)), seconds=seconds[name]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="where the ntkit kernels run (SVCs run on the CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(dict(torch=torch.__version__, device=device_description(args.device))))
    rows = ([] if args.skip_digits else digits(args.device)) + ([] if args.skip_mnist else mnist(args.device))
    print("\n| data | model | accuracy | time |\n|---|---|---|---|")
    for row in rows:
        spread = f" ± {100 * row['accuracy_std']:.2f}" if "accuracy_std" in row else ""
        print(f"| {row['data']} | {row['model']} | {100 * row['accuracy']:.2f}{spread} | {row['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
