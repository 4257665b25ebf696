"""Architecture description: each layer builds its finite module and carries its infinite-width kernel rule."""

from .activations import (ACTIVATION_NAMES, Abs, Activation, Cos, Erf, GELU, Identity, LeakyReLU, ReLU, Sigmoid, Sin,
                          Softplus, Tanh, activation_from_name)
from .base import Layer, Serial
from .dense import Dense, DenseModule
from .mlp import mlp

__all__ = ["Layer", "Serial", "Dense", "DenseModule", "mlp", "Activation", "ReLU", "LeakyReLU", "Abs", "Erf", "GELU",
           "Sin", "Cos", "Identity", "Tanh", "Sigmoid", "Softplus", "activation_from_name", "ACTIVATION_NAMES"]
