"""Spatial kernels (conv, pooling, readouts) against the independent pair-by-pair reference, and their properties.

The reference (``spatial_reference.py``) holds the joint covariance of all positions of a pair and applies each
layer as a matrix product; the engine uses forms, tiles, a variance tape and window sums. In float64 they must
agree to rounding (1e-12 relative: each is a few dozen sums of O(1) terms).
"""

import pytest
import torch

import ntkit as nk
from spatial_reference import reference_kernel

torch.manual_seed(0)
IMAGES = torch.randn(4, 2, 6, 5, dtype=torch.float64)
SEQUENCES = torch.randn(4, 3, 9, dtype=torch.float64)

ARCHITECTURES_2D = {
    "conv-same-flatten": nk.Serial(nk.Conv2d(4, 3, w_std=1.5, b_std=0.2), nk.ReLU(),
                                   nk.Conv2d(4, 3, padding="valid", w_std=1.3), nk.ReLU(), nk.Flatten(),
                                   nk.Dense(1, b_std=0.1)),
    "pool-gap": nk.Serial(nk.Conv2d(4, 3, w_std=1.5, b_std=0.2), nk.ReLU(), nk.AvgPool2d(2),
                          nk.Conv2d(4, 3, w_std=1.3), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(1, b_std=0.1)),
    "strided-padded-pool-standard": nk.Serial(
        nk.Conv2d(4, (3, 2), stride=2, w_std=1.5, b_std=0.2), nk.Erf(), nk.AvgPool2d(2, stride=1, padding=1),
        nk.Conv2d(4, 2, w_std=1.3, parameterization="standard"), nk.Tanh(), nk.Flatten(),
        nk.Dense(3, b_std=0.1, parameterization="standard")),
    "pool-then-flatten-mlp-head": nk.Serial(nk.Conv2d(4, 2, padding=1, b_std=0.3), nk.GELU(), nk.AvgPool2d(3, 2),
                                            nk.Flatten(), nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(1)),
    "gap-then-activation": nk.Serial(nk.Conv2d(4, 3), nk.ReLU(), nk.Conv2d(4, 3, b_std=0.5), nk.GlobalAvgPool(),
                                     nk.Erf(), nk.Dense(1)),
}
ARCHITECTURES_1D = {
    "conv1d-flatten": nk.Serial(nk.Conv1d(4, 3, w_std=1.4, b_std=0.2), nk.Sin(), nk.Conv1d(4, 4, stride=2),
                                nk.LeakyReLU(0.1), nk.Flatten(), nk.Dense(1, b_std=0.1)),
    "conv1d-pool-gap": nk.Serial(nk.Conv1d(4, 5, padding=2, b_std=0.3), nk.ReLU(), nk.AvgPool1d(3, 2, 1),
                                 nk.Conv1d(4, 3, padding="valid"), nk.Abs(), nk.GlobalAvgPool(), nk.Dense(1)),
}
CASES = [(arch, IMAGES) for arch in ARCHITECTURES_2D.values()] + [(arch, SEQUENCES)
                                                                 for arch in ARCHITECTURES_1D.values()]
IDS = [*ARCHITECTURES_2D, *ARCHITECTURES_1D]


def _check_against_reference(arch, x):
    """Reference values on distinct points, symmetric evaluation equal to the explicit one, PSD.

    Distinct points: at a point paired with itself, arccos-based duals (ReLU, Abs) turn a last-bit difference in
    the correlation ρ ≈ 1 into √ε ≈ 1e-8 (two summation orders of the same Gram entry differ in the last bit)."""
    others = torch.randn(3, *x.shape[1:], dtype=torch.float64)
    nngp, ntk = reference_kernel(arch, x, others)
    k = arch.kernel(x, others)
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-12, atol=1e-14)
    sym = arch.kernel(x)
    torch.testing.assert_close(sym.ntk, arch.kernel(x, x.clone()).ntk, rtol=1e-12, atol=0)
    assert torch.linalg.eigvalsh(sym.ntk).min() > -1e-12 * sym.ntk.max()


@pytest.mark.parametrize("arch, x", CASES, ids=IDS)
def test_matches_the_pair_by_pair_reference(arch, x):
    _check_against_reference(arch, x)


@pytest.mark.parametrize("arch, x", CASES, ids=IDS)
def test_symmetric_tiles_equal_the_explicit_second_argument(arch, x):
    """kernel(x) computes tiles on and above the diagonal and mirrors them; one-pair tiles stress that."""
    full = arch.kernel(x, x.clone())
    for batch_size in (None, 1, 3):
        sym = arch.kernel(x, batch_size=batch_size)
        assert torch.equal(sym.ntk, sym.ntk.T) and torch.equal(sym.nngp, sym.nngp.T)
        torch.testing.assert_close(sym.ntk, full.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(sym.nngp, full.nngp, rtol=1e-13, atol=0)


@pytest.mark.parametrize("arch, x", CASES, ids=IDS)
def test_kernel_diagonal_is_the_diagonal_of_the_kernel(arch, x):
    """The O(N) self-pair pass gives the N×N kernel's diagonal (the same rules; rounding only), for one kernel or
    both, with the inputs' dtype."""
    k = arch.kernel(x)
    d = arch.kernel_diagonal(x)
    assert d.nngp.shape == d.ntk.shape == (len(x),) and d.ntk.dtype == x.dtype
    torch.testing.assert_close(d.nngp, k.nngp.diagonal(), rtol=1e-12, atol=0)
    torch.testing.assert_close(d.ntk, k.ntk.diagonal(), rtol=1e-12, atol=0)
    only = arch.kernel_diagonal(x[:2], get="nngp")
    assert only.ntk is None
    torch.testing.assert_close(only.nngp, d.nngp[:2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("arch, x", CASES, ids=IDS)
def test_kernels_are_positive_semidefinite(arch, x):
    x = torch.cat([x, torch.randn(8, *x.shape[1:], dtype=x.dtype)])
    k = arch.kernel(x)
    for value in (k.nngp, k.ntk):
        eigenvalues = torch.linalg.eigvalsh(value)
        assert eigenvalues.min() > -1e-12 * eigenvalues.max()


def test_diagonal_and_full_forms_agree():
    """A Flatten readout keeps only the diagonal of each state; an identity pooling (AvgPool2d(1)) before the
    Flatten forces the full covariance through every layer. Same kernel, two code paths."""
    head = [nk.Conv2d(4, 3, b_std=0.2), nk.Erf(), nk.Conv2d(4, 2, stride=2, padding=1, w_std=1.3), nk.ReLU()]
    readout = [nk.Flatten(), nk.Dense(1, b_std=0.1)]
    diagonal = nk.Serial(*head, *readout)
    full = nk.Serial(*head, nk.AvgPool2d(1), *readout)
    assert diagonal.input_form("flat") == "diagonal" and full.input_form("flat") == "full"
    a, b = diagonal.kernel(IMAGES), full.kernel(IMAGES)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)


def test_same_padding_is_zero_padding_of_the_input():
    """A first conv with "same" padding on x is a "valid" conv on x padded with zeros (same output size)."""
    tail = [nk.ReLU(), nk.Flatten(), nk.Dense(1, b_std=0.1)]
    same = nk.Serial(nk.Conv2d(4, 3, w_std=1.5, b_std=0.3), *tail).kernel(IMAGES)
    padded = torch.nn.functional.pad(IMAGES, (1, 1, 1, 1))
    valid = nk.Serial(nk.Conv2d(4, 3, padding="valid", w_std=1.5, b_std=0.3), *tail).kernel(padded)
    torch.testing.assert_close(same.ntk, valid.ntk, rtol=1e-13, atol=0)


def test_form_is_chosen_from_the_layers_after_each_state():
    conv = [nk.Conv2d(4, 3), nk.ReLU()]
    assert nk.Serial(*conv, nk.Flatten(), nk.Dense(1)).input_form("flat") == "diagonal"
    assert nk.Serial(*conv, nk.GlobalAvgPool(), nk.Dense(1)).input_form("flat") == "full"
    assert nk.Serial(*conv, nk.AvgPool2d(2), *conv, nk.Flatten(), nk.Dense(1)).input_form("flat") == "full"
    assert nk.Serial(nk.Flatten(), nk.Dense(4), nk.ReLU(), nk.Dense(1)).input_form("flat") == "diagonal"


def test_flatten_then_mlp_equals_the_mlp_on_flattened_inputs():
    """Flatten is the identity map on features: an MLP on images is the MLP on their flattened pixels."""
    mlp = nk.mlp(2, 64, activation="gelu", b_std=0.1)
    a = nk.Serial(nk.Flatten(), mlp).kernel(IMAGES)
    b = mlp.kernel(IMAGES.flatten(1))
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=0)


def test_float32_inputs_give_float32_kernels_close_to_float64():
    arch = ARCHITECTURES_2D["pool-gap"]
    k32, k64 = arch.kernel(IMAGES.float()), arch.kernel(IMAGES)
    assert k32.ntk.dtype == torch.float32
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=2e-5, atol=0)


def test_get_ntk_only_and_numpy_inputs():
    arch = ARCHITECTURES_2D["conv-same-flatten"]
    k = arch.kernel(IMAGES.numpy(), get="ntk")
    assert k.nngp is None
    torch.testing.assert_close(k.ntk, arch.kernel(IMAGES).ntk, rtol=0, atol=0)


def test_build_gives_the_described_conv_network():
    arch = ARCHITECTURES_2D["pool-gap"]
    net = arch.build((2, 6, 5), seed=0)
    assert [type(m).__name__ for m in net] == ["ConvModule", "ReLU", "AvgPool2d", "ConvModule", "ReLU",
                                               "GlobalAvgPoolModule", "DenseModule"]
    assert net(IMAGES.float()).shape == (4, 1)
    strided = ARCHITECTURES_2D["strided-padded-pool-standard"].build((2, 6, 5), seed=0)
    assert strided(IMAGES.float()).shape == (4, 3)
    conv1d = ARCHITECTURES_1D["conv1d-pool-gap"].build((3, 9), seed=0, dtype=torch.float64)
    assert conv1d(SEQUENCES).shape == (4, 1)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_same_padding_keeps_the_size_for_any_stride_and_even_kernels():
    """"same" means output ⌈n/s⌉ with the extra zero on the right, as torch's padding="same" (stride 1)."""
    x = torch.randn(2, 3, 7, 8)
    for kernel, stride in ((3, 1), (4, 1), (2, 1), (3, 2), (4, 3)):
        net = nk.Conv2d(5, kernel, stride=stride).build((3, 7, 8), seed=0)
        assert net(x).shape[2:] == (-(-7 // stride), -(-8 // stride))
        if stride == 1:
            torch.manual_seed(0)
            ref = torch.nn.Conv2d(3, 5, kernel, padding="same", bias=False)
            ref.weight.data = net[0].weight.data.clone()
            torch.testing.assert_close(net[0](x) - net[0].bias.reshape(-1, 1, 1) * net[0].bias_scale,
                                       ref(x) * net[0].weight_scale)


RESIDUAL_CASES = {
    "resnet-block-identity": nk.Serial(
        nk.Conv2d(4, 3, b_std=0.1), nk.Residual(nk.ReLU(), nk.Conv2d(4, 3, w_std=1.2, b_std=0.2)),
        nk.Residual(nk.ReLU(), nk.Conv2d(4, 3), nk.ReLU(), nk.Conv2d(4, 3, w_std=0.8)), nk.ReLU(),
        nk.GlobalAvgPool(), nk.Dense(1)),
    "projection-shortcut-and-layernorm": nk.Serial(
        nk.Conv2d(4, 3), nk.LayerNorm(center=True), nk.Erf(),
        nk.Residual(nk.Conv2d(6, 3, stride=2, b_std=0.3), shortcut=nk.Conv2d(6, 1, stride=2)),
        nk.LayerNorm(), nk.ReLU(), nk.Flatten(), nk.Dense(1)),
    "residual-first-then-pool": nk.Serial(
        nk.Residual(nk.Conv2d(2, 3, b_std=0.2)), nk.AvgPool2d(2), nk.LayerNorm(), nk.Conv2d(3, 3), nk.ReLU(),
        nk.Flatten(), nk.Dense(1)),
    # The shortcut needs the full form and the block only the diagonal: the block converts a borrowed state.
    "block-diagonal-shortcut-full": nk.Serial(
        nk.Conv2d(4, 3, b_std=0.1), nk.ReLU(), nk.Conv2d(4, 3),
        nk.Residual(nk.ReLU(), nk.Conv2d(4, 3, b_std=0.2), shortcut=nk.AvgPool2d(3, stride=1, padding=1)),
        nk.ReLU(), nk.Flatten(), nk.Dense(1)),
    "flat-residual-mlp": nk.Serial(nk.Flatten(), nk.Dense(8, b_std=0.1), nk.Residual(nk.ReLU(), nk.Dense(8)),
                                   nk.LayerNorm(), nk.GELU(), nk.Dense(1)),
}


@pytest.mark.parametrize("name", list(RESIDUAL_CASES))
def test_residual_and_layernorm_match_the_reference(name):
    _check_against_reference(RESIDUAL_CASES[name], IMAGES)


def test_flat_residual_and_layernorm_in_the_flat_engine():
    """(N, d) inputs run the flat engine (its own rules, variances propagated): same as on (N, d, 1) sequences
    through the spatial engine, where the tape supplies the variances."""
    arch = nk.Serial(nk.Dense(8, b_std=0.1), nk.Residual(nk.ReLU(), nk.Dense(8, b_std=0.2)), nk.LayerNorm(),
                     nk.Tanh(), nk.Residual(nk.Dense(8)), nk.Dense(1))
    x = torch.randn(5, 3, dtype=torch.float64)
    flat = arch.kernel(x)
    spatial = nk.Serial(nk.Flatten(), arch).kernel(x[:, :, None])
    # The engines round LayerNorm's division differently, so on the diagonal Tanh's quadrature sees ρ = 1 exactly
    # in one (its 1-D rule) and 1 - ε in the other (the series): equal to the quadrature's accuracy, 2e-11.
    torch.testing.assert_close(flat.ntk, spatial.ntk, rtol=1e-10, atol=0)
    torch.testing.assert_close(flat.nngp, spatial.nngp, rtol=1e-10, atol=0)


def test_residual_builds_a_residual_network():
    arch = RESIDUAL_CASES["projection-shortcut-and-layernorm"]
    net = arch.build((2, 6, 5), seed=0, dtype=torch.float64)
    assert type(net[3]).__name__ == "ResidualModule" and net[3].shortcut is not None
    assert net(IMAGES).shape == (4, 1)
    block = nk.Residual(nk.Dense(3)).build(3, seed=0, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(block(x), x + block[0].block(x))


ALL_ACTIVATIONS = [nk.ReLU(), nk.LeakyReLU(0.2), nk.Abs(), nk.Erf(), nk.GELU(), nk.Sin(), nk.Cos(), nk.Identity(),
                   nk.Tanh(), nk.Sigmoid(), nk.Softplus()]


@pytest.mark.parametrize("act", ALL_ACTIVATIONS, ids=repr)
def test_every_activation_on_full_and_diagonal_states(act):
    """Entrywise on every (p, p') with per-position variances: the full form (before a global pooling) and the
    diagonal form (before a Flatten) against the reference."""
    others = torch.randn(2, *IMAGES.shape[1:], dtype=torch.float64)
    for readout in (nk.GlobalAvgPool(), nk.Flatten()):
        arch = nk.Serial(nk.Conv2d(4, 3, w_std=1.2, b_std=0.3), act, nk.Conv2d(4, 2, w_std=1.1, b_std=0.1), act,
                         readout, nk.Dense(1))
        nngp, ntk = reference_kernel(arch, IMAGES[:3], others)
        k = arch.kernel(IMAGES[:3], others)
        torch.testing.assert_close(k.nngp, nngp, rtol=1e-11, atol=1e-14)
        torch.testing.assert_close(k.ntk, ntk, rtol=1e-11, atol=1e-14)


ATTENTION_CASES = {
    "attention-flatten": nk.Serial(nk.Conv1d(4, 3, b_std=0.2), nk.ReLU(),
                                   nk.SelfAttention(4, qk_std=1.5, ov_std=1.2, b_std=0.1), nk.Flatten(),
                                   nk.Dense(1, b_std=0.1)),
    "transformer-block": nk.Serial(
        nk.Conv1d(4, 1), nk.Residual(nk.SelfAttention(4, qk_std=2.0)), nk.LayerNorm(),
        nk.Residual(nk.Conv1d(4, 1, b_std=0.1), nk.GELU(), nk.Conv1d(4, 1)), nk.LayerNorm(), nk.GlobalAvgPool(),
        nk.Dense(1)),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_self_attention_matches_the_reference(name):
    """Hron et al.'s tied, 1/d-scaled attention: A(x) = softmax(qk·K(x, x)) on each side (neural-tangents'
    GlobalSelfAttention(linear_scaling=True) gives the same kernel to 2e-16 on these sequences, checked by hand)."""
    _check_against_reference(ATTENTION_CASES[name], SEQUENCES)


def test_self_attention_module_shapes():
    net = ATTENTION_CASES["transformer-block"].build((3, 9), seed=0, dtype=torch.float64)
    assert net(SEQUENCES).shape == (4, 1)
    layer = nk.SelfAttention(5, heads=2, key_channels=3, value_channels=4).build((3, 9), seed=0)
    assert layer(SEQUENCES.float()).shape == (4, 5, 9)


DIFFERENTIATED = {
    **{f"gap-{name}": (nk.Serial(nk.Conv2d(4, 2, w_std=1.3, b_std=0.2), act, nk.Conv2d(4, 2), act, nk.GlobalAvgPool(),
                                 nk.Dense(1)), IMAGES[:2, :, :3, :3])
       for name, act in (("relu", nk.ReLU()), ("erf", nk.Erf()), ("gelu", nk.GELU()))},
    "pool-flatten": (nk.Serial(nk.Conv2d(3, 2, b_std=0.2), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3, 2), nk.Tanh(),
                               nk.Flatten(), nk.Dense(1)), IMAGES[:2, :, :4, :4]),
    "attention-residual-layernorm": (nk.Serial(
        nk.Conv1d(3, 1), nk.ReLU(), nk.SelfAttention(3), nk.Residual(nk.Serial(nk.Conv1d(3, 3), nk.GELU(),
                                                                               nk.Conv1d(3, 1))),
        nk.LayerNorm(), nk.GlobalAvgPool(), nk.Dense(1)), SEQUENCES[:2, :, :5]),
}


@pytest.mark.parametrize("name", list(DIFFERENTIATED))
def test_inputs_with_derivatives_get_the_same_kernel_and_its_gradient(name):
    """Ops with out= buffers, which autograd cannot follow, and the activations' in-place rules give way to plain
    ops when the state takes part in a derivative: the same values as without, and a gradient that gradcheck
    confirms (float64; these used to raise "functions with out=... arguments don't support automatic
    differentiation")."""
    arch, x = DIFFERENTIATED[name]
    x = x.clone().requires_grad_(True)
    k = arch.kernel(x)
    plain = arch.kernel(x.detach())
    torch.testing.assert_close(k.ntk.detach(), plain.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.nngp.detach(), plain.nngp, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda t: arch.kernel(t).ntk, (x,))
