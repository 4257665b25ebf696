"""Named convolutional architectures: the Myrtle family (Shankar et al. 2020) and plain conv stacks (CNN-GP, CNTK)."""

from __future__ import annotations

import math

from .._validation import check_positive_int
from .activations import Activation, activation_from_name
from .base import Serial
from .conv import Conv1d, Conv2d
from .dense import Dense
from .pooling import AvgPool2d, Flatten, GlobalAvgPool

__all__ = ["myrtle", "cnn", "MYRTLE_STAGES"]

# Conv + activation repeats in the three stages (Shankar et al. 2020, "Neural Kernels Without Tangents", §3).
MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(depth: int = 5, width: int = 128, out_features: int = 10, activation: str | Activation = "relu",
           w_std: float = math.sqrt(2.0), b_std: float = 0.0, parameterization: str = "ntk") -> Serial:
    """The Myrtle network of Shankar et al. 2020 (the kernel that reaches ~90% on CIFAR-10 without training).

    3×3 "same" convolutions with ``activation`` in three stages separated by 2×2 average pooling, three more 2×2
    poolings, Flatten and Dense(out_features). ``depth`` 5, 7, 10 repeat the conv+activation (2, 1, 1), (2, 2, 2),
    (3, 3, 3) times per stage. Built for 32×32 inputs (32 → 16 → 8 → 1 after the six poolings; other sizes must
    survive six halvings). ``width`` is the channel count of the finite network (``build``); the NTK-
    parameterisation limit does not depend on it. Defaults w_std = √2, b_std = 0 are the paper's (He scaling).

    Args:
        depth: 5, 7 or 10. width: channels of every conv (``build`` only). out_features: outputs of the readout.
        activation: a name from ``nk.layers.ACTIVATION_NAMES`` or an activation instance.
        w_std, b_std: weight and bias standard deviations of every conv and of the readout.
        parameterization: "ntk" or "standard" (see ``nk.Conv2d``).
    """
    if depth not in MYRTLE_STAGES:
        raise ValueError(f"depth must be one of {sorted(MYRTLE_STAGES)}; got {depth!r}")
    width = check_positive_int(width, "width")
    act = activation_from_name(activation)
    layers = []
    for stage, repeats in enumerate(MYRTLE_STAGES[depth]):
        for _ in range(repeats):
            layers += [Conv2d(width, 3, padding="same", w_std=w_std, b_std=b_std, parameterization=parameterization),
                       act]
        layers += [AvgPool2d(2)] * (1 if stage < 2 else 3)
    layers += [Flatten(), Dense(out_features, w_std, b_std, parameterization)]
    return Serial(*layers)


def cnn(depth: int, width: int = 128, out_features: int = 1, kernel_size=3, readout: str = "flatten",
        activation: str | Activation = "relu", w_std: float = math.sqrt(2.0), b_std: float = 0.0,
        stride=1, padding="same", dims: int = 2, parameterization: str = "ntk") -> Serial:
    """A plain conv stack: ``depth`` × (Conv(width, kernel_size) + activation), then a readout and Dense.

    readout="flatten" gives the CNN-GP / CNTK-Vec kernels of Novak et al. 2019 and Arora et al. 2019 (a diagonal
    state, O(|S|) per pair); readout="gap" the CNTK-GAP (global average pooling: the full covariance of positions,
    O(|S|²) per pair). ``dims`` is 1 for (N, C, L) sequences, 2 for (N, C, H, W) images.

    Args:
        depth: number of conv + activation blocks (>= 1). width: channels of every conv (``build`` only).
        out_features: outputs of the readout. kernel_size, stride, padding: of every conv (see ``nk.Conv2d``).
        readout: "flatten" or "gap". activation: a name from ``nk.layers.ACTIVATION_NAMES`` or an instance.
        w_std, b_std: weight and bias standard deviations of every layer. dims: 1 or 2.
        parameterization: "ntk" or "standard".
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer; got {depth!r}")
    if readout not in ("flatten", "gap"):
        raise ValueError(f"readout must be 'flatten' or 'gap'; got {readout!r}")
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2; got {dims!r}")
    conv = Conv1d if dims == 1 else Conv2d
    act = activation_from_name(activation)
    layers = []
    for _ in range(depth):
        layers += [conv(width, kernel_size, stride=stride, padding=padding, w_std=w_std, b_std=b_std,
                        parameterization=parameterization), act]
    layers += [Flatten() if readout == "flatten" else GlobalAvgPool(),
               Dense(out_features, w_std, b_std, parameterization)]
    return Serial(*layers)
