"""lee-linearization on its tiny configuration: a network and its linearisation trained side by side.

Tiny setting (``CONFIGS["tiny"]``): 16 training and 16 test MNIST digits, 2 hidden ReLU layers of width 32 and 512,
2 initialisations each, 40 GD steps (η = 1) recorded every 10, float64.
"""

import numpy as np
import pytest
import torch

from experiment_checks import check_written
from ntkit.experiments import lee_linearization
from ntkit.experiments.common import log_log_slope

CONFIG = lee_linearization.CONFIGS["tiny"]
# torch.func.jvp (inside nk.linearize) loads torch's forward-AD decompositions, which call torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return lee_linearization.run(tmp_path_factory.mktemp("out"), size="tiny", seed=0, progress=False)


def test_network_and_linearisation_start_identical_and_both_train(result):
    for width in CONFIG.widths:
        f_net, f_lin = result.arrays[f"f_net_n{width}"], result.arrays[f"f_lin_n{width}"]
        assert f_net.shape == f_lin.shape == (CONFIG.seeds, CONFIG.records + 1, CONFIG.test_points)
        # f_lin(θ_0) = f(θ_0): same parameters, and the tangent term is exactly zero at t = 0
        torch.testing.assert_close(f_lin[:, 0], f_net[:, 0], rtol=0, atol=1e-12)
        assert float(result.arrays[f"discrepancy_n{width}"][:, 0].max()) < 1e-12
        assert float((f_net[0, 0] - f_net[1, 0]).abs().max()) > 0  # the initialisations differ
        metrics = result.metrics["per_width"][str(width)]
        assert metrics["final_loss_net"] < 0.5 and metrics["final_loss_lin"] < 0.5  # from ½E[y²] = 0.5
        assert metrics["param_change_net"] > 0 and metrics["param_change_lin"] > 0


def test_linearisation_error_falls_with_width(result):
    narrow, wide = (result.metrics["per_width"][str(w)] for w in CONFIG.widths)
    # Lee et al. 2019 Thm. 2.1: sup_t |f_t − f_t^lin| = O(n^{-1/2}), at least a factor 4 from n = 32 to 512 (the
    # measured log-log slope is ≈ −0.9, a factor ≈ 12). The bound 1/2 leaves a factor ≥ 2 for the spread between
    # initialisations: each value is an RMS over 16 test digits, and in the quick run (3 widths) the points sit
    # within 10 % of the fitted line, far inside a factor 2.
    assert wide["max_discrepancy"] < 0.5 * narrow["max_discrepancy"]
    assert wide["param_distance"] < 0.5 * narrow["param_distance"]
    # the parameters move by a vanishing fraction of their norm (‖θ_0‖ grows like n, ‖θ_t − θ_0‖ stays O(1))
    assert wide["param_change_net"] < 0.5 * narrow["param_change_net"]
    assert result.metrics["log_log_slopes"]["max_discrepancy"] < -0.25


def test_recorded_curves_match_the_metrics(result):
    for width in CONFIG.widths:
        rms = (result.arrays[f"f_net_n{width}"] - result.arrays[f"f_lin_n{width}"]).pow(2).mean(2).sqrt()
        torch.testing.assert_close(result.arrays[f"discrepancy_n{width}"], rms)
        metrics = result.metrics["per_width"][str(width)]
        worst = rms.max(1).values  # per initialisation
        assert metrics["max_discrepancy"] == pytest.approx(float(worst.mean()))
        assert metrics["max_discrepancy_range"] == pytest.approx([float(worst.min()), float(worst.max())])
        change = result.arrays[f"param_change_net_n{width}"]
        assert change.shape == (CONFIG.seeds, CONFIG.records + 1)
        assert metrics["param_change_net"] == pytest.approx(float(change[:, -1].mean()))


def test_panel_a_plots_the_aggregate_over_test_digits_and_initialisations(result):
    """Panel (a) shows, per width, the mean over initialisations of the RMS over all test digits of f − f_lin (with
    the range as a band), not the output on one digit."""
    arrays = result.arrays
    fig = lee_linearization._plot(CONFIG, arrays, result.metrics["per_width"], result.metrics["log_log_slopes"])
    panel = fig.axes[0]
    assert "RMS over test digits" in panel.get_ylabel() and "initialisations" in panel.get_title()
    lines = [line for line in panel.get_lines() if line.get_label().startswith("n = ")]
    assert len(lines) == len(CONFIG.widths)
    for line, width in zip(lines, CONFIG.widths):
        f_net, f_lin = arrays[f"f_net_n{width}"], arrays[f"f_lin_n{width}"]  # (seeds, R, M)
        aggregate = (f_net - f_lin).pow(2).mean(2).sqrt().mean(0)  # RMS over all M digits, mean over seeds
        np.testing.assert_allclose(line.get_xdata(), arrays["times"][1:].numpy())
        np.testing.assert_allclose(line.get_ydata(), aggregate[1:].numpy(), rtol=1e-12)
        one_digit = (f_net[0, 1:, 0] - f_lin[0, 1:, 0]).abs().numpy()
        assert not np.allclose(line.get_ydata(), one_digit)
        mean, low, high = lee_linearization.discrepancy_curves(arrays, width)
        assert np.all(low <= mean) and np.all(mean <= high) and np.any(low < high)  # a real band
    assert len(panel.collections) == len(CONFIG.widths)  # one shaded range per width
    assert result.arrays["times"].tolist() == list(range(0, CONFIG.steps + 1, CONFIG.steps // CONFIG.records))


def test_writes_figure_metrics_data_and_report(result):
    metrics = check_written(result)
    assert set(metrics["per_width"]) == {str(w) for w in CONFIG.widths}


def test_log_log_slope():
    widths = [16, 64, 256, 1024]
    assert log_log_slope(widths, [w ** -0.5 for w in widths]) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="at least two"):
        log_log_slope([16], [1.0])
    with pytest.raises(ValueError, match="non-positive"):
        log_log_slope([16, 64], [1.0, 0.0])


def test_steps_must_split_into_records(tmp_path):
    bad = lee_linearization.Config(widths=(8,), train_points=4, test_points=4, steps=10, records=3)
    with pytest.raises(ValueError, match="multiple of records"):
        lee_linearization.run(tmp_path, config=bad, progress=False)
    no_seeds = lee_linearization.Config(widths=(8,), train_points=4, test_points=4, steps=10, records=5, seeds=0)
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        lee_linearization.run(tmp_path, config=no_seeds, progress=False)
