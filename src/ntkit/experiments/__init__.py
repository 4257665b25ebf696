"""The papers' experiments, one module each, run by ``ntkit reproduce <name>``.

    jacot-fig1         Jacot et al. 2018 Fig. 1: empirical NTKs around the infinite-width limit, before/after training
    jacot-fig2         Jacot et al. 2018 Fig. 2: learned functions against the t → ∞ limiting Gaussian
    jacot-fig3         Jacot et al. 2018 Fig. 3: MNIST kernel principal components and convergence along them
    lee-linearization  Lee et al. 2019: a wide network and its linearisation trained side by side

Each module has ``NAME``, ``TITLE``, ``Config``, ``CONFIGS`` ("full" = the paper, "quick", "tiny") and
``run(out, *, size, config, seed, device, progress) -> ExperimentResult``, writing ``<out>/<NAME>/``.
"""

from __future__ import annotations

from importlib import import_module

from .common import ExperimentResult

__all__ = ["EXPERIMENTS", "experiment", "ExperimentResult"]

# command-line name -> module (imported on first use)
EXPERIMENTS = {
    "jacot-fig1": "ntkit.experiments.jacot_fig1",
    "jacot-fig2": "ntkit.experiments.jacot_fig2",
    "jacot-fig3": "ntkit.experiments.jacot_fig3",
    "lee-linearization": "ntkit.experiments.lee_linearization",
}


def experiment(name: str):
    """The module of experiment ``name`` (one of ``EXPERIMENTS``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}; got {name!r}")
    return import_module(EXPERIMENTS[name])


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
