"""Architecture description: each layer builds its finite module and carries its infinite-width kernel rule."""

from .activations import (ACTIVATION_NAMES, Abs, Activation, Cos, Erf, GELU, Identity, LeakyReLU, ReLU, Sigmoid, Sin,
                          Softplus, Tanh, activation_from_name)
from .attention import SelfAttention, SelfAttentionModule
from .base import Layer, Serial, Signature
from .conv import Conv1d, Conv2d, ConvModule
from .dense import Dense, DenseModule
from .mlp import mlp
from .pooling import AvgPool1d, AvgPool2d, Flatten, GlobalAvgPool
from .normalization import LayerNorm, LayerNormModule
from .presets import cnn, myrtle
from .residual import Residual, ResidualModule

__all__ = ["Layer", "Serial", "Signature", "Dense", "DenseModule", "mlp", "Conv1d", "Conv2d", "ConvModule",
           "AvgPool1d", "AvgPool2d", "GlobalAvgPool", "Flatten", "myrtle", "cnn", "Residual", "ResidualModule", "LayerNorm", "LayerNormModule", "SelfAttention", "SelfAttentionModule", "Activation", "ReLU", "LeakyReLU", "Abs", "Erf", "GELU",
           "Sin", "Cos", "Identity", "Tanh", "Sigmoid", "Softplus", "activation_from_name", "ACTIVATION_NAMES"]


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
