"""Width convergence: the empirical NTK approaches the infinite-width NTK like width^(-1/2)."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.empirical import WidthConvergence, width_convergence
from ntkit.empirical.convergence import with_width


def _sphere_inputs(n=10, d=8):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)  # Σ⁽⁰⁾(x, x) = 1


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_error_falls_like_width_to_the_minus_one_half(activation):
    """Fit log err = s log n + c over widths 64..1024 and 8 seeds (40 points).

    Tolerance: the fit's own standard error (from the residual scatter of log err, ~0.3 per seed), which for
    40 points spread over log n ∈ [4.2, 6.9] is about 0.04; finite-width corrections O(1/n) bend the curve
    slightly at n = 64. |s + 1/2| < 3 standard errors (about 0.12), and the standard error itself must be
    below 0.08 so that the bound is informative: a non-converging error (s = 0) or an O(1/n) error (s = -1)
    both fail.
    """
    arch = nk.mlp(2, 16, out_features=1, activation=activation, b_std=0.1)
    result = width_convergence(arch, _sphere_inputs(), widths=[64, 128, 256, 512, 1024], seeds=range(8))
    slope, _, stderr = result.slope()
    assert stderr < 0.08
    assert abs(slope + 0.5) < 3 * stderr, (slope, stderr)
    mean = result.mean_errors
    # 16x the width: sqrt(16) = 4x smaller errors expected; require at least 2x.
    assert float(mean[0] / mean[-1]) > 2.0
    assert result.errors.shape == (5, 8) and bool((result.errors > 0).all())


def test_several_outputs_and_a_factory():
    """With O outputs the trace / O is compared; a factory width -> architecture works the same."""
    x = _sphere_inputs(6, 4)

    def factory(width):
        return nk.Serial(nk.Dense(width, b_std=0.1), nk.Erf(), nk.Dense(3, b_std=0.1))

    result = width_convergence(factory, x, widths=[32, 2048], seeds=[0, 1])
    assert isinstance(result, WidthConvergence)
    # sqrt(64) = 8x smaller errors expected. log err scatters by about 0.3 per seed (see the test above), so a
    # mean of 2 seeds by about 0.3/sqrt(2) ≈ 0.2 and the log of the ratio by about 0.3: 8x falls below 3x only
    # at log(8/3) ≈ 1.0, over 3 of those standard deviations.
    assert float(result.mean_errors[1]) < float(result.mean_errors[0]) / 3


def test_with_width_keeps_the_output_layer_and_the_scales():
    arch = nk.Serial(nk.Dense(7, w_std=1.5, b_std=0.3), nk.ReLU(), nk.Dense(2, w_std=0.9, b_std=0.1))
    resized = with_width(arch, 33).flatten()
    assert resized[0].out_features == 33 and resized[0].w_std == 1.5 and resized[0].b_std == 0.3
    assert resized[2].out_features == 2 and resized[2].w_std == 0.9


def test_bad_arguments():
    x = _sphere_inputs(4, 3)
    with pytest.raises(ValueError, match="widths\\[i\\] must be a positive integer"):
        width_convergence(nk.mlp(1, 4), x, widths=[0])
    with pytest.raises(TypeError, match="ntkit Layer/Serial or a function"):
        width_convergence("mlp", x, widths=[8])
    with pytest.raises(ValueError, match="no Dense or Conv layer"):
        width_convergence(nk.ReLU(), x, widths=[8])
    with pytest.raises(TypeError, match="widths must be a sequence of integers; got 8"):
        width_convergence(nk.mlp(1, 4), x, widths=8)
    with pytest.raises(ValueError, match="seeds must hold at least one value"):
        width_convergence(nk.mlp(1, 4), x, widths=[8], seeds=[])
    with pytest.raises(TypeError, match="seeds must be integers; got 1.5"):  # not silently seed 1
        width_convergence(nk.mlp(1, 4), x, widths=[8], seeds=[1.5])
    with pytest.raises(ValueError, match="method must be one of"):
        width_convergence(nk.mlp(1, 4), x, widths=[8], method="exact")


def test_undefined_relative_errors_and_slopes_are_refused():
    """x = 0 with b_std = 0 makes the limit zero (a relative error would be NaN); a slope needs two widths."""
    arch = nk.mlp(1, 4, b_std=0.0)
    with pytest.raises(ValueError, match="infinite-width NTK is zero on x"):
        width_convergence(arch, torch.zeros(3, 2, dtype=torch.float64), widths=[8])
    one_width = width_convergence(arch, _sphere_inputs(3, 2), widths=[8], seeds=[0, 1])
    with pytest.raises(ValueError, match="at least two different widths"):
        one_width.slope()
    exact = WidthConvergence((8, 16), (0,), torch.tensor([[0.1], [0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive errors"):
        exact.slope()


def test_conv_networks_converge_to_their_limit():
    """with_width resizes the conv channels too; the relative NTK error falls like C^(-1/2)."""
    torch.manual_seed(0)
    images = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    arch = nk.Serial(nk.Conv2d(1, 3, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(1, 2), nk.ReLU(),
                     nk.Flatten(), nk.Dense(1))
    study = width_convergence(arch, images, widths=[16, 64, 256], seeds=[0, 1, 2])
    slope, _, stderr = study.slope()
    assert study.errors.shape == (3, 3) and study.errors[0].mean() > study.errors[2].mean()
    assert abs(slope + 0.5) < 3 * stderr + 0.15, (slope, stderr)
