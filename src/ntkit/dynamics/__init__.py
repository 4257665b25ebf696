"""Training dynamics in function space (Jacot, Gabriel & Hongler 2018 §3–5; Lee et al. 2019).

Conventions everywhere: C = ½ E_{p_in}‖f − y‖² over the N training points, and gradient descent with learning rate
η makes the outputs follow ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j), so t counts steps (t = step).

    GradientFlow             MSE closed form from one cached eigendecomposition (train/test outputs, loss, spectrum)
    kernel_gradient_descent  any differentiable cost, ODE integrated by scipy's solve_ivp
    ensemble_prediction      mean and covariance of infinitely wide networks after time t (Lee et al. eqs. 15–16)
    linearize                f(x; θ0) + J(x)(θ − θ0) as a trainable nn.Module (torch.func.jvp)
    train                    full-batch gradient descent on a real network, recording outputs and NTKs
    nngp_features, ntk_features, RandomFeatureModel, random_features_kernel
                             the random-features approximation of Jacot et al. §4
"""

from .ensemble import EnsemblePrediction, ensemble_prediction
from .gradient_flow import GradientFlow
from .kernel_descent import COSTS, KernelDescentResult, kernel_gradient_descent
from .linearize import LinearizedModel, linearize
from .random_features import RandomFeatureModel, nngp_features, ntk_features, random_features_kernel
from .train import TrainingResult, train

__all__ = ["GradientFlow", "kernel_gradient_descent", "KernelDescentResult", "COSTS", "ensemble_prediction",
           "EnsemblePrediction", "linearize", "LinearizedModel", "train", "TrainingResult", "nngp_features",
           "ntk_features", "random_features_kernel", "RandomFeatureModel"]


def __dir__():
    """The public names (``__all__``) only: not the submodules and helpers this package imports."""
    return sorted(__all__)
