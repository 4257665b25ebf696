"""The empirical NNGP (output Gram) against the model's outputs, and its Monte Carlo limit."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.empirical import empirical_nngp
from empirical_models import mlp_model, reduce_output, zoo_case


@pytest.mark.parametrize("name", ["mlp", "grouped_cnn", "tokens"])
def test_output_gram_in_every_mode(name):
    model, x1, x2 = zoo_case(name)
    with torch.no_grad():
        f1, f2 = model(x1).reshape(4, -1), model(x2).reshape(3, -1)
    full = torch.einsum("xa,yb->xyab", f1, f2)
    outputs = f1.shape[1]
    torch.testing.assert_close(empirical_nngp(model, x1, x2), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(empirical_nngp(model, x1, x2, output="diagonal"), reduce_output(full, "diagonal"),
                               rtol=1e-12, atol=1e-12)
    # "trace" is the mean over outputs, f(x)·f(x')/O: the per-output NNGP estimate.
    torch.testing.assert_close(empirical_nngp(model, x1, x2, output="trace"),
                               reduce_output(full, "trace") / outputs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(empirical_nngp(model, x1, batch_size=3), empirical_nngp(model, x1, x1),
                               rtol=1e-12, atol=1e-12)


def test_trace_estimates_the_infinite_width_nngp():
    """Averaged over 64 outputs of 8 wide networks, f·f'/O approaches arch.kernel(x).nngp.

    Tolerance: each entry averages R = 8·64 = 512 products of jointly Gaussian outputs (in the infinite-width
    limit), whose variance is Σ_xx Σ_x'x' + Σ_xx'² <= 2 max Σ²; the standard error is <= sqrt(2/512) max Σ
    = 0.0625 max Σ. The 64 outputs of one network also share its last hidden layer, whose kernel fluctuates by
    O(width^-1/2) ≈ 0.044 max Σ per network, i.e. ≈ 0.016 max Σ over 8 networks; together ≈ 0.065 max Σ.
    The bound 5·sqrt(2/512) max Σ = 0.31 max Σ is 4.8 of those (upper-bound) standard errors for the worst of the
    21 distinct entries of the symmetric 6x6 kernel: false-failure chance below 21·2·Φ(−4.8) ≈ 3e-5.
    """
    arch = nk.mlp(2, 512, out_features=64, b_std=0.2)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    limit = arch.kernel(x, get="nngp").nngp
    estimate = torch.stack([empirical_nngp(arch.build(4, seed=s, dtype=torch.float64), x, output="trace")
                            for s in range(8)]).mean(0)
    scale = float(limit.abs().max())
    assert float((estimate - limit).abs().max()) < 5 * math.sqrt(2 / 512) * scale


def test_bad_arguments():
    model = mlp_model()
    with pytest.raises(ValueError, match="output must be one of"):
        empirical_nngp(model, torch.zeros(2, 5, dtype=torch.float64), output="sum")
    with pytest.raises(ValueError, match="x1 contains"):
        empirical_nngp(model, torch.full((2, 5), float("inf"), dtype=torch.float64))
