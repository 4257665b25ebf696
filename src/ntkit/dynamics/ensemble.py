r"""Infinite ensembles: mean and covariance of infinitely wide networks' outputs after gradient flow.

Lee et al. 2019 (arXiv 1902.06720), eqs. (15)–(16), with our time scaling. At initialisation the outputs of an
infinitely wide network are a centred Gaussian process with covariance K (the NNGP); training by gradient descent
on C = ½ E_{p_in}‖f − y‖² over the N training points with learning rate η follows
∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j) with the deterministic NTK Θ, so f_t is an affine map of f_0:

    f_t(x*) = A_t y + (f_0(x*) − A_t f_0(X)),   A_t = Θ(x*, X) Θ⁻¹ (I − e^{−ηΘt/N})

and therefore Gaussian with

    mean        μ_t(x*)      = A_t y                                                   (eq. 15)
    covariance  Σ_t(x*, x*') = K(x*, x*') − A_t K(X, x*') − K(x*, X) A_tᵀ + A_t K(X, X) A_tᵀ   (eq. 16)

``kernel="nngp"`` replaces Θ by K: training only the readout layer, whose NTK is the NNGP kernel; at t = ∞ this is
the exact Gaussian-process posterior K(x*, x*) − K(x*, X) K⁻¹ K(X, x*) with mean K(x*, X) K⁻¹ y.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .._memory import check_fits
from .._validation import as_input_tensor, check_pair, refuse_half_precision
from ._checks import as_targets, as_times, check_architecture, check_learning_rate, finite_or_raise
from .gradient_flow import GradientFlow

__all__ = ["ensemble_prediction", "EnsemblePrediction"]

KERNELS = ("ntk", "nngp")


class EnsemblePrediction(NamedTuple):
    """Mean (M,) / (M, O) and covariance (M, M) of the outputs on x_test, with a leading T axis for T times.

    The covariance is the same for every output (the infinite-width kernels are K ⊗ Id).
    """

    mean: torch.Tensor
    covariance: torch.Tensor


def ensemble_prediction(arch, x_train, y_train, x_test, t, *, learning_rate: float = 1.0, diag_reg: float = 0.0,
                        kernel: str = "ntk") -> EnsemblePrediction:
    r"""Mean and covariance of an infinite ensemble of ``arch``'s networks after gradient flow for time t.

    Conventions: C = ½ E_{p_in}‖f − y‖² over the N training points; ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j),
    so t counts gradient-descent steps of size η. Lee et al. 2019, eqs. (15)–(16) with that scaling:
    A_t = Θ(x*, X) Θ⁻¹(I − e^{−ηΘt/N}), mean A_t y, covariance K** − A_t K(X, x*) − K(x*, X) A_tᵀ + A_t K A_tᵀ,
    where K is the NNGP (the prior covariance of f_0) and Θ the NTK. With ``kernel="nngp"`` Θ is replaced by K
    (training the last layer only; at t = ∞ the Gaussian-process posterior).

    Args:
        arch: an ntkit architecture (``nk.Serial``, ``nk.mlp(...)``); its exact kernels come from ``arch.kernel``,
            evaluated in float64 because the solve amplifies rounding by the kernel's condition number.
        x_train: (N, d) training inputs; y_train: (N,) or (N, O) targets.
        x_test: (M, d) test inputs.
        t: float, math.inf or 1-D tensor of T times.
        learning_rate: η > 0.
        diag_reg: relative ridge on the train-train dynamics kernel, Θ ← Θ + diag_reg·(tr Θ/N)·I (see
            ``GradientFlow``); needed at t = ∞ if Θ is singular.
        kernel: "ntk" (all layers trained) or "nngp" (readout only / Bayesian posterior at t = ∞).

    Returns:
        ``EnsemblePrediction(mean, covariance)``: mean (M,) or (M, O), covariance (M, M); a leading T axis for
        T times. Dtype promoted from the inputs; device of the inputs.
    """
    check_architecture(arch)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
    x_train = refuse_half_precision(as_input_tensor(x_train, "x_train", ndim=2), "x_train")
    x_test = refuse_half_precision(as_input_tensor(x_test, "x_test", ndim=2), "x_test")
    x_train, x_test = check_pair(x_train, x_test, ("x_train", "x_test"))
    arch._check_kernel_input(x_train, "x_train")  # before the two are joined into one kernel call's x1
    n, m = x_train.shape[0], x_test.shape[0]
    y, squeeze = as_targets(y_train, n)
    eta = check_learning_rate(learning_rate)
    times, scalar = as_times(t)
    dtype = torch.promote_types(x_train.dtype, y.dtype)
    check_fits(8 * times.numel() * m * (m + y.shape[1]) * 3, x_train.device, "ensemble_prediction's outputs",
               "Evaluate fewer times or test points per call.")

    get = ("nngp", "ntk") if kernel == "ntk" else ("nngp",)
    both = arch.kernel(torch.cat([x_train, x_test]).to(torch.float64), get=get)
    nngp = both.nngp
    dynamics_kernel = both.ntk if kernel == "ntk" else nngp
    flow = GradientFlow(dynamics_kernel[:n, :n], y.to(torch.float64), learning_rate=eta, diag_reg=diag_reg)
    times = times.to(x_train.device)
    mean = flow.test_outputs(times, dynamics_kernel[n:, :n])  # f_0 = 0 in the mean: A_t y (refuses a bad t = inf)
    projected = dynamics_kernel[n:, :n] @ flow.eigenvectors  # Θ(x*, X) V, (M, N)
    v_k_v = flow.eigenvectors.T @ nngp[:n, :n] @ flow.eigenvectors  # Vᵀ K V, (N, N)
    v_k_test = flow.eigenvectors.T @ nngp[:n, n:]  # Vᵀ K(X, x*), (N, M)
    covariances = []
    # Each time costs O(M·N²) for (Θ(x*, X) V diag φ_t)(Vᵀ K V): a bar when that adds up to seconds.
    long_run = times.numel() * m * n * n > 10 ** 10
    for phi in tqdm(flow._phi(times), desc="ensemble covariance", disable=not long_run, leave=False):
        a_v = projected * phi[None, :]
        cross = a_v @ v_k_test
        cov = nngp[n:, n:] - cross - cross.T + a_v @ v_k_v @ a_v.T
        covariances.append(0.5 * (cov + cov.T))
    covariance = finite_or_raise(torch.stack(covariances), "covariance", "the kernel solve overflowed")
    mean = mean[..., 0] if squeeze else mean  # (T, M, O) -> (T, M) for (N,) targets
    return EnsemblePrediction(mean=(mean[0] if scalar else mean).to(dtype),
                              covariance=(covariance[0] if scalar else covariance).to(dtype))
