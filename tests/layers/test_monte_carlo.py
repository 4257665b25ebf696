"""Every activation's analytic kernel against Monte Carlo estimates of the finite network ``build`` makes.

One hidden layer: f(x) = s2 · W2 σ(s1 W1 x + b_std b1) + b_std b2 (NTK parameterisation). Its pre-activations are
exactly Gaussian, so with n hidden units the kernels are sums of n i.i.d. per-unit terms:
  NNGP, with the readout averaged out analytically (Rao–Blackwell): Σ̂ = Σ_k (w²/n) σ(u_k(x)) σ(u_k(x')) + b²,
  NTK, from autograd on the built module: Θ̂ = Σ_k Θ_k + (readout-bias term), Θ_k = the unit's parameters' share.
Both are unbiased, so the test is purely statistical: with n·S = 2¹⁷·8 ≈ 10⁶ i.i.d. unit samples, each entry's
standard error (SE, ≈ 0.1–0.2% of the entry) is estimated precisely, and every entry must lie within 5 SE of the
analytic value (two-sided normal tail 6e-7 per entry; ~400 entries here, so a correct kernel fails with
probability < 1e-3). Sensitivity, checked by perturbing the ReLU dual kernel: a 1% error is 6 SE away and fails.
The deep test (two hidden layers, width 1024) also has the O(1/n) finite-width bias; its allowance is stated there.
"""

import math

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

import ntkit as nk

torch.set_default_dtype(torch.float32)
DTYPE = torch.float64
X = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.5, 1.1], [0.0, -1.2, 0.4], [0.9, 0.1, -0.2]],
                 dtype=DTYPE)
WIDTH, SEEDS = 1 << 17, 8
W_STD, B_STD = 1.3, 0.4

ACTIVATIONS = [nk.ReLU(), nk.LeakyReLU(0.2), nk.Abs(), nk.Erf(), nk.GELU(), nk.Sin(), nk.Cos(), nk.Identity(),
               nk.Tanh(), nk.Sigmoid(), nk.Softplus(),
               nk.Activation(lambda u: u * torch.exp(-0.5 * u * u), name="u·exp(-u²/2)")]


def _jacobians(net):
    """Per-parameter Jacobians of the single output at the points X, by autograd on the built module."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    return vmap(jacrev(lambda p, x: functional_call(net, p, (x[None],))[0, 0]), (None, 0))(params, X)


def _empirical_ntk(net):
    flat = torch.cat([j.reshape(len(X), -1) for j in _jacobians(net).values()], 1)
    return flat @ flat.T


def _per_unit_samples(arch, seed):
    """(n, N, N) per-unit NNGP and NTK contributions of one built network, and the readout-bias NTK term."""
    net = arch.build(X.shape[1], seed=seed, dtype=DTYPE)
    dense1, act, dense2 = net
    hidden = act(dense1(X))  # (N, n)
    nngp_units = (W_STD ** 2 / WIDTH) * hidden.T[:, :, None] * hidden.T[:, None, :] + (B_STD ** 2) / WIDTH
    jac = _jacobians(net)
    # Group every parameter's Jacobian by hidden unit k: W1 row k, b1_k and W2 column k belong to unit k.
    per_unit = torch.cat([jac["0.weight"], jac["0.bias"][..., None], jac["2.weight"][:, 0, :, None]], -1)  # (N, n, .)
    ntk_units = torch.einsum("akp,bkp->kab", per_unit, per_unit)
    readout_bias = torch.einsum("a,b->ab", jac["2.bias"][:, 0], jac["2.bias"][:, 0])
    return nngp_units, ntk_units, readout_bias


def _assert_within_standard_errors(samples, exact, offset, n_sigma=5.0):
    """samples: (M, N, N) i.i.d. unit terms whose sum over n units (+offset) estimates ``exact``."""
    m = samples.shape[0]
    estimate = samples.mean(0) * WIDTH + offset
    se = samples.std(0) * WIDTH / math.sqrt(m)
    z = (estimate - exact).abs() / se.clamp_min(1e-15)
    worst = z.max().item()
    assert worst < n_sigma, f"max |estimate - exact| = {worst:.2f} SE\nestimate={estimate}\nexact={exact}"


@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_one_hidden_layer_kernels_match_monte_carlo(act):
    arch = nk.Serial(nk.Dense(WIDTH, W_STD, B_STD), act, nk.Dense(1, W_STD, B_STD))
    exact = arch.kernel(X)
    nngp, ntk, bias_term = [], [], None
    for seed in range(SEEDS):
        a, b, bias_term = _per_unit_samples(arch, seed)
        nngp.append(a)
        ntk.append(b)
    _assert_within_standard_errors(torch.cat(nngp), exact.nngp, 0.0)
    _assert_within_standard_errors(torch.cat(ntk), exact.ntk, bias_term)


def test_standard_parameterisation_ntk_matches_monte_carlo():
    """Standard parameterisation: Θ = n_in K + 1 + w² Θ_in per Dense; the built module has W ~ N(0, w²/n)."""
    width = 2048
    arch = nk.Serial(nk.Dense(width, W_STD, B_STD, "standard"), nk.Erf(), nk.Dense(1, W_STD, B_STD, "standard"))
    exact = arch.kernel(X).ntk
    samples = []
    for seed in range(SEEDS):
        samples.append(_empirical_ntk(arch.build(X.shape[1], seed=seed, dtype=DTYPE)))
    samples = torch.stack(samples)
    # The NTK grows like n here (it does not converge); per seed it is a sum over n units, so its relative
    # fluctuation is O(n^-1/2) and across seeds the SE comes from 12 i.i.d. networks: 5 SE again.
    se = samples.std(0) / math.sqrt(len(samples))
    z = ((samples.mean(0) - exact).abs() / se).max()
    assert z < 5, z
    assert exact.max() > width / 10  # it really is the growing standard-parameterisation NTK


@pytest.mark.parametrize("act", [nk.ReLU(), nk.Erf()], ids=repr)
def test_two_hidden_layers_match_monte_carlo(act):
    """Composition of rules: depth 2, width 1024. Pre-activations of layer 2 are Gaussian only as n → ∞, so the
    estimate has an O(1/n) bias on top of its noise; allowance 8/n relative to ‖Θ‖ (≈ 0.8%, several times the bias
    measured at n = 1024) plus 5 SE of the 16-network mean."""
    width, seeds = 1024, 16
    arch = nk.Serial(nk.Dense(width, W_STD, B_STD), act, nk.Dense(width, W_STD, B_STD), act,
                     nk.Dense(1, W_STD, B_STD))
    exact = arch.kernel(X)
    ntks, nngps = [], []
    for seed in range(seeds):
        net = arch.build(X.shape[1], seed=seed, dtype=DTYPE)
        ntks.append(_empirical_ntk(net))
        hidden = net[:4](X)
        nngps.append(W_STD ** 2 * hidden @ hidden.T / width + B_STD ** 2)
    for samples, target in ((torch.stack(nngps), exact.nngp), (torch.stack(ntks), exact.ntk)):
        error = (samples.mean(0) - target).norm()
        noise = (samples.var(0).sum() / seeds).sqrt()
        assert error < 5 * noise + 8 / width * target.norm(), (error, noise)
