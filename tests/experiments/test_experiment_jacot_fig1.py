"""jacot-fig1 on its tiny configuration: the facts Fig. 1 shows, checked on numbers.

Tiny setting (``CONFIGS["tiny"]``): widths 32 and 1024 (32x apart), 8 initialisations each, 30 GD steps; the limit
is float64, the networks float32 (their O(n^{-1/2}) fluctuations are far above float32 rounding).
Tolerances: Jacot et al. 2018 Thms. 1-2 make both the spread of Θ_0 around the limit and the motion of Θ during
training O(n^{-1/2}), so their ratio between the two widths is about 1/√32 ≈ 0.18; we assert < 1/2. Each quantity
is an RMS over 8 independent initialisations (and correlated angles): its square is a mean of 8 independent
per-network energies with relative standard deviation at most sqrt(2/8) = 0.5 (one degree of freedom each), so the
RMS has a relative error of about 0.25 and the log of a ratio of two such estimates a standard error of about
sqrt(2)·0.25 ≈ 0.35: the bound 1/2 sits log(0.5/0.18) ≈ 1.04 ≈ 3 standard errors above the expectation.
"""

import math

import numpy as np
import pytest
import torch

from experiment_checks import check_written
from ntkit.experiments import jacot_fig1


def closed_form_relu_ntk(x0, xs, hidden_layers, beta):
    """Θ_∞(x0, x) of a ReLU net, w_std = 1, from the arc-cosine kernels (Cho & Saul 2009), written out in numpy.

    Jacot et al. 2018 Prop. 1 / Thm. 1: Σ¹ = x·x'/n0 + β², Θ¹ = Σ¹; then per hidden layer, with the angle θ of
    Σ: K = √(Σ00 Σxx) (sin θ + (π − θ) cos θ) / 2π, K̇ = (π − θ)/2π, Σ ← K + β², Θ ← Σ + Θ K̇.
    """
    n0 = x0.shape[0]
    s00 = x0 @ x0 / n0 + beta ** 2
    sxx = (xs * xs).sum(1) / n0 + beta ** 2
    s0x = xs @ x0 / n0 + beta ** 2
    theta = s0x.copy()
    for _ in range(hidden_layers):
        norm = np.sqrt(s00 * sxx)
        angle = np.arccos(np.clip(s0x / norm, -1.0, 1.0))
        k = norm * (np.sin(angle) + (np.pi - angle) * np.cos(angle)) / (2 * np.pi)
        k_dot = (np.pi - angle) / (2 * np.pi)
        s0x, s00, sxx = k + beta ** 2, s00 / 2 + beta ** 2, sxx / 2 + beta ** 2
        theta = s0x + theta * k_dot
    return theta


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return jacot_fig1.run(tmp_path_factory.mktemp("out"), size="tiny", seed=0, progress=False)


def test_limit_curve_is_the_exact_infinite_width_ntk(result):
    config = jacot_fig1.CONFIGS["tiny"]
    gamma = result.arrays["gamma"].numpy()
    assert gamma[0] == pytest.approx(-math.pi) and gamma[-1] == pytest.approx(math.pi)
    xs = np.stack([np.cos(gamma), np.sin(gamma)], 1)
    expected = closed_form_relu_ntk(np.array([1.0, 0.0]), xs, config.hidden_layers, config.b_std)
    np.testing.assert_allclose(result.arrays["limit"].numpy(), expected, rtol=1e-10, atol=0)


def test_spread_around_the_limit_falls_with_width(result):
    narrow, wide = (result.metrics["per_width"][str(w)] for w in jacot_fig1.CONFIGS["tiny"].widths)
    assert wide["deviation_at_init"] < 0.5 * narrow["deviation_at_init"]
    assert wide["deviation_after_training"] < 0.5 * narrow["deviation_after_training"]


def test_kernel_moves_less_during_training_for_the_wider_network(result):
    narrow, wide = (result.metrics["per_width"][str(w)] for w in jacot_fig1.CONFIGS["tiny"].widths)
    assert narrow["kernel_change"] > 0.0 and wide["kernel_change"] > 0.0
    assert wide["kernel_change"] < 0.5 * narrow["kernel_change"]
    # both trained: the loss fell from ½ E[y²] (same target, same steps for both widths)
    for m in (narrow, wide):
        assert m["final_loss"] < 0.7 * result.metrics["initial_loss"]


def test_curves_recorded_per_initialisation(result):
    config = jacot_fig1.CONFIGS["tiny"]
    for width in config.widths:
        k0, kt = result.arrays[f"ntk_init_n{width}"], result.arrays[f"ntk_trained_n{width}"]
        assert k0.shape == kt.shape == (config.initializations, config.angles)
        assert k0.dtype == torch.float64 and bool(torch.isfinite(kt).all())  # stored in float64
        # different initialisations give different kernels (each network has its own seed)
        assert float((k0[0] - k0[1]).abs().max()) > 0


def test_writes_figure_metrics_data_and_report(result):
    metrics = check_written(result)
    assert set(metrics["per_width"]) == {"32", "1024"}
    assert metrics["settings"]["widths"] == [32, 1024]


def test_paper_settings_are_the_full_configuration():
    full = jacot_fig1.CONFIGS["full"]
    assert full.widths == (500, 10_000) and full.initializations == 10 and full.steps == 200
    assert (full.hidden_layers, full.b_std, full.w_std, full.learning_rate) == (3, 0.1, 1.0, 1.0)
