"""``nk.mlp``: the fully-connected network of Jacot et al. 2018 in one call."""

from __future__ import annotations

from .._validation import check_positive_int
from .activations import Activation, activation_from_name
from .base import Serial
from .dense import Dense

__all__ = ["mlp"]


def mlp(hidden_layers: int, width: int, out_features: int = 1, activation: str | Activation = "relu",
        w_std: float = 1.0, b_std: float = 0.1, parameterization: str = "ntk",
        in_features: int | None = None) -> Serial:
    """Fully-connected network with ``hidden_layers`` activations of ``width`` units each.

    ``Serial(Dense(width), σ, ..., Dense(width), σ, Dense(out_features))``: Jacot's depth L (the number of weight
    layers) is ``hidden_layers + 1``. ``hidden_layers=0`` is the linear model. Every Dense layer uses the same
    ``w_std``, ``b_std`` (Jacot's β) and parameterisation.

    Args:
        hidden_layers: number of activations (>= 0).
        width: units of each hidden layer (> 0); it affects ``build`` and the standard-parameterisation NTK,
            not the NTK-parameterisation limit.
        out_features: number of outputs n_L.
        activation: a name from ``nk.layers.ACTIVATION_NAMES`` or an activation instance.
        w_std: weight standard deviation σ_w of every Dense layer (1.0: the NTK paper's setting).
        b_std: bias standard deviation, Jacot's β. The default 0.1 is Jacot et al.'s (β = 0.1 in their figures)
            and the same as ``ntkit.sklearn``'s kernels and estimators, whose GP hyperparameters are log(b_std) and
            so cannot start at 0. A bias matters for the kernel: without one, Σ⁽¹⁾ = w²·x·x'/n0 vanishes at the
            zero input, and with a positively homogeneous σ (ReLU) points on one ray through the origin, x and
            2x, have proportional kernel rows (a singular train-train kernel). ``b_std=0.0`` gives the bias-free
            network (the building block ``nk.Dense`` defaults to it, as do the paper presets ``nk.cnn`` and
            ``nk.myrtle``).
        parameterization: "ntk" (Jacot et al.'s, the default: the limit does not depend on the widths) or
            "standard" (W ~ N(0, w_std²/n); its NTK grows with width; see ``nk.Dense``).
        in_features: optional input dimension, checked by ``kernel`` and used by ``build``.
    """
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
        raise ValueError(f"hidden_layers must be a non-negative integer; got {hidden_layers!r}")
    width = check_positive_int(width, "width")
    act = activation_from_name(activation)
    layers = []
    for _ in range(hidden_layers):
        layers += [Dense(width, w_std, b_std, parameterization), act]
    layers.append(Dense(out_features, w_std, b_std, parameterization))
    return Serial(*layers, in_features=in_features)
