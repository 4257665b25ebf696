"""ntkit — the Neural Tangent Kernel toolkit for PyTorch.

    import ntkit as nk
    arch = nk.mlp(hidden_layers=3, width=512, activation="relu", w_std=1.0, b_std=0.1)
    k = arch.kernel(x1, x2)                   # exact infinite-width NNGP and NTK, each (N1, N2)
    net = arch.build(in_features=d, seed=0)   # the finite network, NTK parameterisation
    K = nk.empirical_ntk(net, x1, x2)         # its finite-width NTK
    nk.myrtle(5).kernel(images)               # convolutional kernels of (N, C, H, W) images (also nk.cnn, nk.Conv2d,
                                              # nk.AvgPool2d, nk.Residual, nk.LayerNorm, nk.SelfAttention, ...)

Conventions (Jacot, Gabriel & Hongler 2018): z = (w_std/√n) W a + b_std b with W, b ~ N(0, 1); Σ⁽⁰⁾ = x·x'/n0;
``hidden_layers`` counts activations (Jacot's L = hidden_layers + 1); kernels are for one output (Θ ⊗ Id).
"""

from importlib import import_module

from .kernels import Kernel
from .layers import (Abs, Activation, AvgPool1d, AvgPool2d, Conv1d, Conv2d, Cos, Dense, Erf, Flatten, GELU,
                     GlobalAvgPool, Identity, Layer, LayerNorm, LeakyReLU, ReLU, Residual, SelfAttention, Serial, Sigmoid,
                     Sin, Softplus, Tanh, cnn, mlp, myrtle)

__version__ = "0.1.0"

# Heavier subsystems load on first use, so `import ntkit` stays fast.
_LAZY = {
    "empirical_ntk": "ntkit.empirical",
    "empirical_nngp": "ntkit.empirical",
    "width_convergence": "ntkit.empirical",
    "WidthConvergence": "ntkit.empirical",
    "GradientFlow": "ntkit.dynamics",
    "kernel_gradient_descent": "ntkit.dynamics",
    "ensemble_prediction": "ntkit.dynamics",
    "linearize": "ntkit.dynamics",
    "train": "ntkit.dynamics",
    "nngp_features": "ntkit.dynamics",
    "ntk_features": "ntkit.dynamics",
    "random_features_kernel": "ntkit.dynamics",
    "RandomFeatureModel": "ntkit.dynamics",
    "KernelOperator": "ntkit.operators",
    "conjugate_gradient": "ntkit.operators",
    "falkon": "ntkit.operators",
    "spectrum": "ntkit.spectrum",
    "data": "ntkit.data",
    "sklearn": "ntkit.sklearn",
}


# Subpackages reachable as attributes (nk.layers.ACTIVATION_NAMES, nk.dynamics.GradientFlow), loaded on first use;
# listed by dir(nk) but not in __all__, so `from ntkit import *` stays light.
_SUBPACKAGES = ("layers", "kernels", "dynamics", "empirical", "operators", "experiments")


def __dir__():
    """The public names, eagerly or lazily imported (``dir(nk)`` lists ``empirical_ntk``, ``train``, ...), and the
    subpackages; not the helpers this module imports (``import_module``)."""
    return sorted({*__all__, *_SUBPACKAGES})


def __getattr__(name):
    if name in _LAZY or name in _SUBPACKAGES:
        module = import_module(_LAZY.get(name, f"ntkit.{name}"))
        value = module if module.__name__ == f"ntkit.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ntkit' has no attribute {name!r}")


__all__ = ["Kernel", "Layer", "Serial", "Dense", "mlp", "Conv1d", "Conv2d", "AvgPool1d", "AvgPool2d", "GlobalAvgPool",
           "Flatten", "myrtle", "cnn", "Residual", "LayerNorm", "SelfAttention", "Activation", "ReLU", "LeakyReLU", "Abs", "Erf", "GELU", "Sin",
           "Cos", "Identity", "Tanh", "Sigmoid", "Softplus", *_LAZY]
