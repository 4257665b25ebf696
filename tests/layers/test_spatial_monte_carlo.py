"""Every spatial layer's kernel rule against Monte Carlo estimates of the finite network ``arch.build`` makes.

Each architecture has one nonlinearity, applied to the output of the first layer (a conv of the input, exactly
Gaussian at any width); every other layer is linear with fresh N(0, 1) weights. For such a network the rules are
exact expectations at any width: E[f(x) f(x')] = Σ(x, x') and E[Θ̂(x, x')] = Θ(x, x') (each linear layer's rule
is the expectation over its own weights, and the nonlinearity's average over channels is already its mean). So
the test is purely statistical: the mean over S = 32 networks of C channels must be within 5 standard errors of
the exact value at every entry, SE estimated from the 32 networks (Student t with 31 dof: P(|t| > 5) ≈ 2e-5 per
entry, ~80 entries per kernel pair here, so a correct rule fails with probability < 0.5%; the seeds are fixed).
Sensitivity: with C = 256 channels and 32 networks the relative SE is 1-3% (measured), while the mistakes this guards
against are larger (padding zeros not counted in the 1/k average changes border positions by 50%; a pooling
averaged over matched offsets d = d' instead of all pairs changes the kernel by 10-40%).

The NNGP is estimated from ``nk.empirical_nngp`` of the network's hidden representation with the readout's
expectation taken analytically; the NTK by ``nk.empirical_ntk`` of the whole network. A deeper network (two nonlinearities) is checked with an O(1/C) allowance at the end.
"""

import math

import pytest
import torch

import ntkit as nk

torch.manual_seed(1)
IMAGES = torch.randn(4, 2, 5, 5, dtype=torch.float64)
SEQUENCES = torch.randn(4, 3, 7, dtype=torch.float64)
CHANNELS, NETWORKS = 256, 32


def _single_nonlinearity_cases(c):
    return {
        "conv-same+flatten": (nk.Serial(nk.Conv2d(c, 3, w_std=1.5, b_std=0.3), nk.ReLU(), nk.Flatten(),
                                        nk.Dense(1, w_std=1.2, b_std=0.2)), IMAGES),
        "strided-valid-conv+padded-pool": (nk.Serial(
            nk.Conv2d(c, (2, 3), stride=2, padding="valid", w_std=1.4, b_std=0.2), nk.Erf(),
            nk.AvgPool2d(2, stride=1, padding=1), nk.Flatten(), nk.Dense(1, b_std=0.1)), IMAGES),
        "conv1d+pool+conv+gap": (nk.Serial(
            nk.Conv1d(c, 3, padding=1, b_std=0.2), nk.GELU(), nk.AvgPool1d(2), nk.Conv1d(c, 3, w_std=1.3),
            nk.GlobalAvgPool(), nk.Dense(1, b_std=0.3)), SEQUENCES),
        "standard-parameterisation+gap": (nk.Serial(
            nk.Conv2d(c, 3, w_std=1.3, b_std=0.2, parameterization="standard"), nk.ReLU(), nk.GlobalAvgPool(),
            nk.Dense(1, w_std=1.1, b_std=0.1, parameterization="standard")), IMAGES),
        "residual-identity": (nk.Serial(
            nk.Conv2d(c, 3, b_std=0.2), nk.ReLU(), nk.Residual(nk.Conv2d(c, 3, w_std=1.3, b_std=0.3)),
            nk.GlobalAvgPool(), nk.Dense(1, b_std=0.1)), IMAGES),
        "residual-projection": (nk.Serial(
            nk.Conv2d(c, 3, b_std=0.2), nk.Erf(),
            nk.Residual(nk.Conv2d(c, 3, stride=2, b_std=0.3), shortcut=nk.Conv2d(c, 1, stride=2, w_std=0.7)),
            nk.Flatten(), nk.Dense(1, b_std=0.1)), IMAGES),
    }


def _samples(arch, x):
    """Per network: the NNGP with the readout averaged out analytically (Rao–Blackwell: E over the last Dense
    layer's weights of f(x) f(x') is w² h(x)·h(x')/n + b², h its input, so only the channel sum is random), and
    the empirical NTK of the whole network."""
    shape, readout = tuple(x.shape[1:]), arch.flatten()[-1]
    nngp, ntk = [], []
    for seed in range(NETWORKS):
        net = arch.build(shape, seed=seed, dtype=x.dtype)
        hidden = nk.empirical_nngp(net[:-1], x, output="trace")  # h(x)·h(x')/n
        nngp.append(readout.w_std ** 2 * hidden + readout.b_std ** 2)
        ntk.append(nk.empirical_ntk(net, x, output="trace"))
    return torch.stack(nngp), torch.stack(ntk)


def _z_scores(samples, exact):
    se = samples.std(0) / math.sqrt(len(samples))
    return (samples.mean(0) - exact).abs() / se


@pytest.mark.parametrize("name", list(_single_nonlinearity_cases(CHANNELS)))
def test_single_nonlinearity_networks_match_monte_carlo(name):
    arch, x = _single_nonlinearity_cases(CHANNELS)[name]
    exact = arch.kernel(x)
    nngp, ntk = _samples(arch, x)
    assert _z_scores(nngp, exact.nngp).max() < 5
    assert _z_scores(ntk, exact.ntk).max() < 5


def test_monte_carlo_detects_a_ten_percent_error():
    """The tolerance is tight enough to matter: the same estimates refuse a kernel 10% off (w_std 5% off)."""
    arch, x = _single_nonlinearity_cases(CHANNELS)["conv-same+flatten"]
    nngp, ntk = _samples(arch, x)
    off = nk.Serial(nk.Conv2d(1, 3, w_std=1.5, b_std=0.3), nk.ReLU(), nk.Flatten(),
                    nk.Dense(1, w_std=1.2 * 1.05, b_std=0.2)).kernel(x)
    assert _z_scores(nngp, off.nngp).max() > 5 and _z_scores(ntk, off.ntk).max() > 5


def _assert_close_up_to_bias(samples, target, channels):
    error = (samples.mean(0) - target).norm()
    noise = (samples.var(0).sum() / len(samples)).sqrt()
    assert error < 5 * noise + 4 / channels * target.norm(), (error, noise)


@pytest.mark.parametrize("center", [True, False])
def test_layernorm_matches_monte_carlo_up_to_the_finite_width_bias(center):
    """A finite LayerNorm divides by the empirical mean square over C channels, a random quantity with O(C^-1/2)
    fluctuations: the estimate has an O(1/C) bias, allowance 4/C of ‖K‖ plus 5 times the noise of the mean."""
    arch = nk.Serial(nk.Conv2d(CHANNELS, 3, w_std=1.4, b_std=0.3), nk.LayerNorm(center=center), nk.ReLU(),
                     nk.Conv2d(CHANNELS, 3), nk.LayerNorm(), nk.Flatten(), nk.Dense(1, b_std=0.1))
    exact = arch.kernel(IMAGES)
    nngp, ntk = _samples(arch, IMAGES)
    _assert_close_up_to_bias(nngp, exact.nngp, CHANNELS)
    _assert_close_up_to_bias(ntk, exact.ntk, CHANNELS)


def test_two_nonlinearities_match_monte_carlo_up_to_the_finite_width_bias():
    """Myrtle-like: conv, ReLU, conv, ReLU, pool, flatten. The second ReLU sees pre-activations that are Gaussian
    only as C → ∞, so the estimate has an O(1/C) bias besides its noise: allowance 4/C of ‖Θ‖ (1.6% at C = 256;
    the bias of ReLU networks measured at C = 256 is below 1%) plus 5 times the noise of the mean."""
    c = CHANNELS
    arch = nk.Serial(nk.Conv2d(c, 3, w_std=math.sqrt(2)), nk.ReLU(), nk.Conv2d(c, 3, w_std=math.sqrt(2)),
                     nk.ReLU(), nk.AvgPool2d(2), nk.Flatten(), nk.Dense(1, w_std=math.sqrt(2)))
    exact = arch.kernel(IMAGES)
    nngp, ntk = _samples(arch, IMAGES)
    _assert_close_up_to_bias(nngp, exact.nngp, c)
    _assert_close_up_to_bias(ntk, exact.ntk, c)


def test_self_attention_matches_monte_carlo_up_to_the_finite_width_bias():
    """The finite attention's logits are an average over C channels and d_key key units that converges to
    qk·K(x, x) with O(1/√width) fluctuations, passed through a softmax: an O(1/C + 1/d_key) bias, allowance
    4/C + 4/d_key of ‖K‖ (3% here) plus 5 times the noise of the mean. The attention networks fluctuate more than
    the others (noise of the mean ≈ 3% of ‖K‖ with 32 networks, measured error 3-4%), so this pins the finite module
    to its limit within ~15-20%; the rule itself is pinned exactly by the reference test (test_spatial_kernels.py),
    and equals neural-tangents' to 2e-16."""
    keys = 256
    arch = nk.Serial(nk.Conv1d(CHANNELS, 3, b_std=0.2),
                     nk.SelfAttention(CHANNELS, heads=4, key_channels=keys, value_channels=64, qk_std=1.5, ov_std=1.2,
                                      b_std=0.1),
                     nk.Flatten(), nk.Dense(1, b_std=0.1))
    exact = arch.kernel(SEQUENCES)
    nngp, ntk = _samples(arch, SEQUENCES)
    for samples, target in ((nngp, exact.nngp), (ntk, exact.ntk)):
        error = (samples.mean(0) - target).norm()
        noise = (samples.var(0).sum() / len(samples)).sqrt()
        assert error < 5 * noise + (4 / CHANNELS + 4 / keys) * target.norm(), (error, noise)
    # The attention really attends: the kernel differs from the same network with uniform weights (qk_std = 0).
    uniform = nk.Serial(*arch.layers[:1], nk.SelfAttention(CHANNELS, qk_std=0.0, ov_std=1.2, b_std=0.1),
                        *arch.layers[2:]).kernel(SEQUENCES)
    assert (uniform.ntk - exact.ntk).norm() > 0.05 * exact.ntk.norm()
