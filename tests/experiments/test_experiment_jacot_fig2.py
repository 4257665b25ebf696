"""jacot-fig2 on its tiny configuration: learned functions against the limiting Gaussian, checked on numbers.

Tiny setting (``CONFIGS["tiny"]``): 16 networks of width 512 (depth 4, ReLU, β = 0.1, float32), 100 GD steps on the
4 training points, 24 test angles. The limit is recomputed here independently with matrix exponentials.
"""

import math

import pytest
import torch

import ntkit as nk
from experiment_checks import check_written
from ntkit.experiments import jacot_fig2

CONFIG = jacot_fig2.CONFIGS["tiny"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return jacot_fig2.run(tmp_path_factory.mktemp("out"), size="tiny", seed=0, progress=False)


def _circle(gamma):
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], 1)


def _reference_limit(t):
    """Lee et al. 2019 eqs. (15)-(16) written out: A = Θ*X Θ⁻¹ (I − exp(−ηΘt/N)), mean A y,
    covariance K** − A K_X* − K*X Aᵀ + A K Aᵀ, with exp by torch.linalg.matrix_exp (not an eigendecomposition)."""
    x_train = _circle(torch.tensor(CONFIG.train_angles, dtype=torch.float64))
    y = x_train[:, 0] * x_train[:, 1]
    x_test = _circle(torch.linspace(-math.pi, math.pi, CONFIG.test_angles, dtype=torch.float64))
    n = x_train.shape[0]
    k = nk.mlp(CONFIG.hidden_layers, 7, b_std=CONFIG.b_std).kernel(torch.cat([x_train, x_test]))
    theta, nngp = k.ntk, k.nngp
    decay = torch.zeros(n, n, dtype=torch.float64) if math.isinf(t) else \
        torch.linalg.matrix_exp(-CONFIG.learning_rate * t / n * theta[:n, :n])
    a = theta[n:, :n] @ torch.linalg.solve(theta[:n, :n], torch.eye(n, dtype=torch.float64) - decay)
    mean = a @ y
    cov = nngp[n:, n:] - a @ nngp[:n, n:] - nngp[n:, :n] @ a.T + a @ nngp[:n, :n] @ a.T
    return mean, torch.diagonal(cov).clamp_min(0).sqrt()


def test_limit_is_the_exact_gaussian_at_the_training_time_and_at_infinity(result):
    mean, std = _reference_limit(float(CONFIG.steps))
    torch.testing.assert_close(result.arrays["limit_mean"], mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.arrays["limit_std"], std, rtol=0, atol=1e-7)  # sqrt amplifies rounding
    mean_inf, std_inf = _reference_limit(math.inf)
    torch.testing.assert_close(result.arrays["limit_mean_inf"], mean_inf, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.arrays["limit_std_inf"], std_inf, rtol=0, atol=1e-7)
    torch.testing.assert_close(result.arrays["limit_p90"] - result.arrays["limit_mean"],
                               jacot_fig2.Z90 * std, rtol=1e-12, atol=1e-12)


def test_learned_functions_fall_inside_the_limit_band(result):
    stats = result.metrics["per_width"]["512"]
    # Draws from the limit fall inside the 10-90 % band with probability 0.8 at each angle. Angles of one network
    # are correlated, but its 4 arcs between the training points are nearly independent, so the 16 networks give
    # about 64 independent draws: standard error sqrt(0.8·0.2/64) = 0.05, and 0.65 is 3 standard errors below 0.8.
    assert stats["fraction_inside_band"] >= 0.65
    # Mean of z² = ((f − μ)/σ)² is 1 for draws from the limit; over ~64 independent draws its standard error is
    # sqrt(2/64) ≈ 0.18, so [0.45, 1.6] is 3 standard errors around 1 (plus a little for the O(n^{-1/2}) finite-
    # width error). A band twice too wide (mean z² ≈ 0.25) or too narrow (≈ 4) fails.
    assert 0.45 <= stats["mean_squared_z"] <= 1.6
    assert stats["points_compared"] == CONFIG.initializations * CONFIG.test_angles  # no angle sits on a train point
    assert stats["final_loss"] < 1e-3  # the networks interpolate the 4 points


def test_band_statistics_are_calibrated_on_gaussian_draws():
    g = torch.Generator().manual_seed(1)
    mean = torch.linspace(-1, 1, 8, dtype=torch.float64)
    std = torch.linspace(0.1, 0.5, 8, dtype=torch.float64)
    draws = mean + std * torch.randn(500, 8, generator=g, dtype=torch.float64)  # 4000 independent draws
    good = jacot_fig2.band_statistics(draws, mean, std)
    # standard errors over 4000 draws: sqrt(0.16/4000) = 0.0063 for the fraction, sqrt(2/4000) = 0.022 for z²
    assert abs(good["fraction_inside_band"] - 0.8) < 3 * 0.0063
    assert abs(good["mean_squared_z"] - 1.0) < 3 * 0.022
    too_narrow = jacot_fig2.band_statistics(draws, mean, std / 2)  # P(|z| < 1.28/2) = 0.48
    assert too_narrow["fraction_inside_band"] < 0.55
    # a zero-width point (a training point) is left out rather than divided by
    std0 = std.clone()
    std0[3] = 0.0
    assert jacot_fig2.band_statistics(draws, mean, std0)["points_compared"] == 500 * 7


def test_writes_figure_metrics_data_and_report(result):
    metrics = check_written(result)
    assert metrics["limit_t_vs_inf"] > 0  # 100 steps is not yet t = ∞ in the tiny setting; recorded, not hidden
    assert result.arrays["learned_n512"].shape == (CONFIG.initializations, CONFIG.test_angles)


def test_paper_settings_are_the_full_configuration():
    full = jacot_fig2.CONFIGS["full"]
    assert full.widths == (50, 1000) and full.initializations == 10 and full.steps == 1000
    assert len(full.train_angles) == 4 and (full.hidden_layers, full.b_std, full.learning_rate) == (3, 0.1, 1.0)
