"""Identities, numerics and tiling of ``arch.kernel`` (the infinite-width NNGP/NTK recursion)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import ntkit as nk
from ntkit.kernels.evaluate import FUSE_MIN_ENTRIES


def _points(n=7, d=3, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("hidden_layers", [0, 1, 2, 4])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_relu_diagonal_identity(hidden_layers, dtype, rtol):
    """ReLU, w_std = 1, b_std = 0: Σ(x, x) = |x|²/(n0 2^(L-1)) and Θ(x, x) = L |x|²/(n0 2^(L-1)), L = layers + 1.

    Each ReLU halves the variance (E[relu(u)²] = q/2) and multiplies Θ by Kdot(ρ=1) = 1/2, while each Dense adds Σ.
    The diagonal is exact because a point's self-correlation is kept at exactly 1 (tolerances: a few ulps)."""
    x = _points(dtype=dtype)
    n0, L = x.shape[1], hidden_layers + 1
    k = nk.mlp(hidden_layers, 64, activation="relu", b_std=0.0).kernel(x)
    sq = (x * x).sum(1) / n0
    torch.testing.assert_close(k.nngp.diagonal(), sq / 2 ** (L - 1), rtol=rtol, atol=0)
    torch.testing.assert_close(k.ntk.diagonal(), L * sq / 2 ** (L - 1), rtol=rtol, atol=0)
    assert k.nngp.dtype == dtype and k.ntk.dtype == dtype


def test_linear_model_kernel_is_the_input_gram():
    x, y = _points(), _points(4, seed=1)
    k = nk.Dense(1, w_std=2.0, b_std=0.5).kernel(x, y)
    gram = 4.0 * x @ y.T / 3 + 0.25
    torch.testing.assert_close(k.nngp, gram)
    torch.testing.assert_close(k.ntk, gram)


def test_two_layer_relu_closed_form():
    """Jacot's L = 2 ReLU network by hand: Σ1 = x·x'/n0 + β², Θ = Σ2 + Σ1 · Kdot(Σ1)."""
    x, y = _points(5), _points(6, seed=2)
    beta = 0.3
    s1 = x @ y.T / 3 + beta ** 2
    q1 = (x * x).sum(1, keepdim=True) / 3 + beta ** 2
    q2 = (y * y).sum(1, keepdim=True).T / 3 + beta ** 2
    rho = s1 / torch.sqrt(q1 * q2)
    theta = torch.arccos(rho)
    s2 = torch.sqrt(q1 * q2) * (torch.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi) + beta ** 2
    ntk = s2 + s1 * (math.pi - theta) / (2 * math.pi)
    k = nk.mlp(1, 10, b_std=beta).kernel(x, y)
    torch.testing.assert_close(k.nngp, s2, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 64])
def test_tiles_agree_with_a_single_tile(batch_size):
    x, y = _points(11), _points(9, seed=3)
    arch = nk.mlp(2, 8, activation="gelu", b_std=0.2)
    whole = arch.kernel(x, y, batch_size=64)
    tiled = arch.kernel(x, y, batch_size=batch_size)
    torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=1e-13, atol=1e-15)
    sym_whole, sym_tiled = arch.kernel(x, batch_size=64), arch.kernel(x, batch_size=batch_size)
    torch.testing.assert_close(sym_tiled.nngp, sym_whole.nngp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(sym_tiled.ntk, arch.kernel(x, x, batch_size=batch_size).ntk, rtol=1e-13, atol=1e-15)
    assert torch.equal(sym_tiled.ntk, sym_tiled.ntk.T)


def test_get_nngp_only_skips_the_ntk():
    x = _points()
    arch = nk.mlp(2, 8, activation="tanh")
    only = arch.kernel(x, get="nngp")
    assert only.ntk is None
    torch.testing.assert_close(only.nngp, arch.kernel(x).nngp)
    with pytest.raises(KeyError, match="ntk"):
        only["ntk"]


def test_fused_pass_equals_eager():
    """The torch.compile-d pass computes the same recursion (float64: rounding-level differences only)."""
    x, y = _points(40, 5), _points(30, 5, seed=4)
    arch = nk.mlp(3, 8, activation="relu", b_std=0.1)
    eager = arch.kernel(x, y, fused=False)
    from torch._dynamo.utils import counters  # torch's own compile statistics (private, for this check only)
    graphs = counters["stats"]["unique_graphs"]
    fused = arch.kernel(x, y, fused=True, batch_size=16)  # square tiles and edge tiles (16 × 8, 8 × 14, ...)
    # One graph for every tile shape: without duck sizing the first square tile does not specialise it to t1 == t2
    # (kernels.evaluate._one_graph_for_all_tile_shapes), which cost a second compile of seconds.
    assert counters["stats"]["unique_graphs"] - graphs == 1
    torch.testing.assert_close(fused.ntk, eager.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused.nngp, eager.nngp, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="quadrature"):
        nk.mlp(1, 8, activation="tanh").kernel(x, fused=True)


def test_default_fuses_only_large_grids_of_closed_forms():
    assert FUSE_MIN_ENTRIES >= 1 << 20  # small calls (tests, interactive use) never pay a compile


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "abs"])
def test_one_hundred_hidden_layers_stay_finite_symmetric_psd(activation):
    x = torch.cat([_points(6), torch.zeros(1, 3, dtype=torch.float64), _points(1)])  # a zero and a duplicate
    k = nk.mlp(100, 16, activation=activation, w_std=1.0, b_std=0.1).kernel(x)
    for mat in (k.nngp, k.ntk):
        assert torch.isfinite(mat).all()
        assert torch.equal(mat, mat.T)
        assert torch.linalg.eigvalsh(mat).min() >= -1e-10 * mat.diagonal().max()


@pytest.mark.parametrize("b_std", [0.0, 0.5])
def test_zero_inputs_and_duplicates_are_finite(b_std):
    x = torch.zeros(3, 4)
    x[2] = 1.0
    for act in ["relu", "erf", "sin", "tanh", "leaky_relu"]:
        k = nk.mlp(3, 8, activation=act, b_std=b_std).kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), act
        assert k.ntk[0, 1] == k.ntk[0, 0]  # the two zero inputs are the same point
        if b_std == 0.0:
            assert k.ntk[0, 0] == 0 and k.nngp[0, 2] == 0  # no bias: a zero input has a zero kernel


def test_ntk_is_positive_definite_on_the_sphere():
    """Jacot et al. 2018, Prop. 2: for a non-polynomial Lipschitz σ the limiting NTK is positive definite on the
    unit sphere (b_std > 0 or depth >= 2). Distinct points on the circle give a well-conditioned Gram."""
    x = nk.data.circle(24, dtype=torch.float64)
    ntk = nk.mlp(3, 8, activation="relu", b_std=0.1).kernel(x).ntk
    eig = torch.linalg.eigvalsh(ntk)
    assert eig.min() > 1e-6 * eig.max()


def test_ntk_dominates_nngp_in_ntk_parameterisation():
    """Θ = Σ + w² Θ_in ⊙ Kdot with each term PSD (Schur product), so Θ - Σ is PSD."""
    x = _points(8)
    k = nk.mlp(3, 8, activation="erf", w_std=1.5, b_std=0.2).kernel(x)
    assert torch.linalg.eigvalsh(k.ntk - k.nngp).min() > -1e-12


@settings(max_examples=30, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 4)),
                elements=st.floats(-3, 3, allow_nan=False, width=64)),
       activation=st.sampled_from(["relu", "leaky_relu", "abs", "erf", "gelu", "sin", "cos", "identity"]),
       depth=st.integers(0, 4), w_std=st.floats(0.2, 2.0), b_std=st.floats(0.0, 1.0))
def test_kernels_are_symmetric_and_psd(x, activation, depth, w_std, b_std):
    k = nk.mlp(depth, 8, activation=activation, w_std=w_std, b_std=b_std).kernel(x)
    for mat in (k.nngp, k.ntk):
        assert torch.isfinite(mat).all()
        assert torch.equal(mat, mat.T)
        # Rounding of an exactly PSD matrix: eigenvalues >= -(n · eps · ‖K‖).
        assert torch.linalg.eigvalsh(mat).min() >= -1e-12 * max(1.0, mat.abs().max().item()) * len(mat)


def test_inputs_keep_dtype_and_device_and_accept_numpy():
    x32 = torch.randn(5, 3)
    k32 = nk.mlp(2, 8).kernel(x32)
    assert k32.ntk.dtype == torch.float32 and k32.ntk.device == x32.device
    k64 = nk.mlp(2, 8).kernel(x32.double().numpy())
    assert k64.ntk.dtype == torch.float64
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=1e-5, atol=1e-6)
    assert nk.mlp(1, 8).kernel([[1.0, 2.0], [0.0, 1.0]]).ntk.dtype == torch.float32
    mixed = nk.mlp(1, 8).kernel(x32, x32.double())
    assert mixed.ntk.dtype == torch.float64


def test_standard_parameterisation_ntk_grows_with_width():
    x = _points()
    narrow = nk.mlp(2, 100, parameterization="standard").kernel(x).ntk
    wide = nk.mlp(2, 1000, parameterization="standard").kernel(x).ntk
    same_nngp = nk.mlp(2, 100, parameterization="ntk").kernel(x).nngp
    torch.testing.assert_close(nk.mlp(2, 1000, parameterization="standard").kernel(x).nngp, same_nngp)
    assert (wide / narrow).mean() > 5  # ~n_in · K dominates


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "gelu"])
def test_kernel_diagonal_is_the_diagonal_of_the_kernel(activation):
    """arch.kernel_diagonal runs the same rules on the N self-pairs: the grid's diagonal to rounding (the grid's
    diagonal tiles use the same |x|²/n0 for the Gram diagonal), without the N² grid; errors name the argument."""
    arch = nk.mlp(3, 16, activation=activation, w_std=1.3, b_std=0.2)
    x = torch.cat([_points(9), torch.zeros(1, 3)])
    k, d = arch.kernel(x), arch.kernel_diagonal(x)
    torch.testing.assert_close(d.ntk, k.ntk.diagonal(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(d.nngp, k.nngp.diagonal(), rtol=1e-13, atol=1e-15)
    assert arch.kernel_diagonal(x.float(), get="ntk").ntk.dtype == torch.float32
    with pytest.raises(ValueError, match="x has 4 features but the architecture expects in_features=3"):
        nk.Serial(nk.Dense(4), in_features=3).kernel_diagonal(torch.ones(2, 4))


@pytest.mark.parametrize("scale, depth, w_std", [(1.0, 30, 0.5), (1e12, 3, 1.0)])
def test_relu_kernels_of_tiny_and_huge_variances_keep_float32(scale, depth, w_std):
    """Issue 13's reproducers: √(q1·q2) underflowed (30 layers at w_std = 0.5: q ~ 1e-27, kernel all zeros in
    float32 although 6e-27 is representable) or overflowed (inputs of size 1e12: refused, though the kernel is
    ~5e23). With √q1·√q2 float32 stays within 1e-6 of float64 and the diagonal keeps ρ = 1 exactly."""
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * scale
    arch = nk.mlp(depth, 16, activation="relu", w_std=w_std, b_std=0.0)
    low, high = arch.kernel(x), arch.kernel(x.double())
    for name in ("nngp", "ntk"):
        assert float(low[name].abs().max()) > 0
        error = (low[name].double() - high[name]).abs().max() / high[name].abs().max()
        assert float(error) < 1e-6, (name, float(error))


def test_sin_and_cos_kernels_are_stable_at_tiny_and_aligned_correlations():
    """Issue 13's reproducers: sinh as a difference of exponentials gave exact zeros for tiny inputs (the sin NNGP
    is ~c·e^{-h}, 1e-18 here), and unclamped correlations compounded through 40 cos layers (w_std 2.5) so that
    kernel(x, x.clone()) overflowed where kernel(x) was finite. Now float32 keeps 1e-6 of float64 on the first,
    and the two calls agree to float64 rounding on the second."""
    tiny = 1e-9 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    sin = nk.mlp(1, 8, activation="sin", b_std=0.0)
    low, high = sin.kernel(tiny).nngp, sin.kernel(tiny.double()).nngp
    assert float(high.abs().max()) > 1e-19 and float((low.double() - high).abs().max() / high.abs().max()) < 1e-6
    x = 30 * torch.randn(20, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    deep = nk.mlp(40, 8, activation="cos", w_std=2.5, b_std=0.0)
    k, k_copy = deep.kernel(x), deep.kernel(x, x.clone())
    assert torch.isfinite(k_copy.ntk).all()
    torch.testing.assert_close(k_copy.ntk, k.ntk, rtol=1e-12, atol=1e-12 * float(k.ntk.abs().max()))
