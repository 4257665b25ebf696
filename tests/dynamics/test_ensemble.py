"""ensemble_prediction (Lee et al. 2019, eqs. 15–16): exact limits, and the mean and covariance of many finite
networks trained through their linearisation.

Monte Carlo design: S = 400 independently seeded networks of width 1024. Each network's linearised training is
solved exactly in function space (GradientFlow with its own empirical NTK Θ̂ and its own initial outputs f_0; the
linearised model's training is checked to equal this in test_linearize.py). The sample mean and covariance of the
S predictions are compared entrywise with the infinite-width formulas, each within 5 standard errors estimated
from the same samples (two-sided normal tail 6e-7 per entry, ~40 entries: a correct formula fails with probability
< 1e-4). The finite-width bias of a mean over networks is O(1/width) ≈ 0.1% of the scale, far below one SE
(≈ std/√400 = 5% of the spread).
"""

import math

import pytest
import torch

import ntkit as nk
from dynamics_reference import jacobian_matrix

DTYPE = torch.float64
WIDTH, NETWORKS = 1024, 400
ARCH = nk.mlp(1, WIDTH, activation="relu", w_std=1.4, b_std=0.3)
N, M = 5, 3
ETA = 1.0
TIMES = torch.tensor([0.0, 2.0, 10.0, math.inf], dtype=DTYPE)


def _data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N + M, 3, generator=g, dtype=DTYPE)
    y = torch.randn(N, generator=g, dtype=DTYPE)
    return x[:N], x[N:], y


def _monte_carlo(readout_only: bool):
    """(S, T, M) test outputs of S finite networks after linearised gradient descent for each time."""
    x, x_test, y = _data()
    x_all = torch.cat([x, x_test])
    samples = []
    for seed in range(NETWORKS):
        net = ARCH.build(3, seed=seed, dtype=DTYPE)
        if readout_only:  # train the last layer only: its NTK is the last hidden layer's Gram matrix
            for p in net[0].parameters():
                p.requires_grad_(False)
        jac = jacobian_matrix(net, x_all)[:, 0, :]
        ntk = jac @ jac.T
        with torch.no_grad():
            f0 = net(x_all)[:, 0]
        flow = nk.GradientFlow(ntk[:N, :N], y, learning_rate=ETA)
        samples.append(flow.test_outputs(TIMES, ntk[N:, :N], f0_train=f0[:N], f0_test=f0[N:]))
    return torch.stack(samples)


def _assert_within_standard_errors(samples, mean, covariance, n_sigma=5.0):
    s = samples.shape[0]
    sample_mean = samples.mean(0)
    z_mean = (sample_mean - mean).abs() / (samples.std(0) / math.sqrt(s)).clamp_min(1e-12)
    centred = samples - sample_mean
    products = centred[..., :, None] * centred[..., None, :]  # (S, T, M, M); their mean estimates Σ
    sample_cov = products.sum(0) / (s - 1)
    z_cov = (sample_cov - covariance).abs() / (products.std(0) / math.sqrt(s)).clamp_min(1e-12)
    assert float(z_mean.max()) < n_sigma, f"mean off by {float(z_mean.max()):.2f} SE"
    assert float(z_cov.max()) < n_sigma, f"covariance off by {float(z_cov.max()):.2f} SE"


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_mean_and_covariance_match_monte_carlo_over_finite_networks(kernel):
    x, x_test, y = _data()
    mean, covariance = nk.ensemble_prediction(ARCH, x, y, x_test, TIMES, learning_rate=ETA, kernel=kernel)
    assert mean.shape == (len(TIMES), M) and covariance.shape == (len(TIMES), M, M)
    samples = _monte_carlo(readout_only=kernel == "nngp")
    _assert_within_standard_errors(samples, mean, covariance)
    # Sensitivity: training shrinks the variance well beyond the Monte Carlo resolution (≈ 10% of it here), so
    # a formula that forgot the training terms would fail the check above.
    prior_var, trained_var = torch.diagonal(covariance[0]), torch.diagonal(covariance[-1])
    assert bool((trained_var < 0.7 * prior_var).all())


def test_exact_limits_prior_at_zero_and_gaussian_process_posterior_at_infinity():
    x, x_test, y = _data()
    k = ARCH.kernel(torch.cat([x, x_test]))
    nngp, ntk = k.nngp, k.ntk
    mean0, cov0 = nk.ensemble_prediction(ARCH, x, y, x_test, 0.0)
    torch.testing.assert_close(mean0, torch.zeros(M, dtype=DTYPE))
    torch.testing.assert_close(cov0, nngp[N:, N:])
    # kernel="nngp" at t = inf: the exact GP posterior
    mean, cov = nk.ensemble_prediction(ARCH, x, y, x_test, math.inf, kernel="nngp")
    k_inv_cross = torch.linalg.solve(nngp[:N, :N], nngp[:N, N:])
    torch.testing.assert_close(mean, k_inv_cross.T @ y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cov, nngp[N:, N:] - nngp[N:, :N] @ k_inv_cross, rtol=1e-9, atol=1e-9)
    # kernel="ntk" at t = inf: Lee et al. eq. (16) with A = Θ(x*, X) Θ⁻¹
    a = torch.linalg.solve(ntk[:N, :N], ntk[:N, N:]).T
    expected = nngp[N:, N:] - a @ nngp[:N, N:] - nngp[N:, :N] @ a.T + a @ nngp[:N, :N] @ a.T
    mean, cov = nk.ensemble_prediction(ARCH, x, y, x_test, math.inf)
    torch.testing.assert_close(mean, a @ y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=1e-9)


def test_shapes_dtypes_and_multiple_outputs():
    x, x_test, y = _data()
    y2 = torch.stack([y, -2 * y], 1)
    mean, cov = nk.ensemble_prediction(ARCH, x.float(), y2.float(), x_test.float(), torch.tensor([1.0, 3.0]))
    assert mean.shape == (2, M, 2) and cov.shape == (2, M, M)
    assert mean.dtype == torch.float32 and cov.dtype == torch.float32
    torch.testing.assert_close(mean[..., 1], -2 * mean[..., 0])  # outputs are independent: Θ ⊗ Id
    single_mean, single_cov = nk.ensemble_prediction(ARCH, x, y, x_test, 3.0)
    torch.testing.assert_close(mean[1, :, 0].double(), single_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cov[1].double(), single_cov, rtol=1e-5, atol=1e-5)
