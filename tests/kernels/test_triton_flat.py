"""The Triton kernel of flat kernels (``kernels/triton_flat.py``), run by Triton's CPU interpreter (tests/conftest.py
sets TRITON_INTERPRET); test_triton_compile.py compiles it for a GPU."""

import warnings

import pytest
import torch

import ntkit as nk
from ntkit.kernels import near_parallel, triton_flat, triton_support
from ntkit.kernels.flat_plan import plan_flat
from ntkit.kernels.spatial_plan import DeviceInfo


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture
def interpreted(monkeypatch):
    """The Triton pass on CPU tensors (interpreted), counting its tile calls."""
    monkeypatch.setattr(triton_support, "INTERPRET", True)
    monkeypatch.setattr(triton_support, "_disabled", None)
    calls = []
    original = triton_flat.TritonSteps.__call__

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(triton_flat.TritonSteps, "__call__", counted)
    return calls


ARCHS = {
    "relu": nk.mlp(3, 1, activation="relu", b_std=0.1),
    "relu-standard": nk.mlp(2, 64, activation="relu", b_std=0.1, parameterization="standard"),
    "leaky": nk.mlp(2, 1, activation="leaky_relu", w_std=1.3, b_std=0.05),
    "abs-no-bias": nk.mlp(2, 1, activation="abs", b_std=0.0),
    "identity": nk.mlp(2, 1, activation="identity", b_std=0.2),
    "mixed": nk.Serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(8, w_std=1.2), nk.Abs(), nk.Dense(8),
                       nk.Identity(), nk.Dense(1, b_std=0.3)),
    "erf": nk.mlp(3, 1, activation="erf", b_std=0.1),
    # large variances (q ~ 1e2 after three layers of w_std 2.5): D's scaled root, arctan's reduction beyond tan(3π/8)
    "erf-standard-wide": nk.mlp(3, 64, activation="erf", w_std=2.5, b_std=0.0, parameterization="standard"),
    "erf-relu": nk.Serial(nk.Dense(8, b_std=0.1), nk.Erf(), nk.Dense(8), nk.ReLU(), nk.Dense(1)),
}


def test_program_encodes_dense_the_relu_family_and_erf_only():
    layers = nk.mlp(2, 16, activation="leaky_relu", w_std=1.5, b_std=0.2).flatten()
    table = triton_flat.program(layers, 5)
    assert table.shape == (5, 7)
    assert table[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert table[0, 1:4].tolist() == pytest.approx([2.25, 0.04, 1.0])
    # LeakyReLU(0.01): (a − b)²/(2π) and (a² + b²)/2
    assert table[1, 1:3].tolist() == pytest.approx([0.99 ** 2 / (2 * torch.pi), (1 + 1e-4) / 2])
    standard = triton_flat.program(nk.mlp(1, 16, parameterization="standard").flatten(), 5)
    assert standard[0, 3:6].tolist() == [0.0, 5.0, 1.0] and standard[2, 3:6].tolist() == [0.0, 16.0, 1.0]
    assert triton_flat.program([nk.Identity()], 5) is None  # nothing to run
    erf = triton_flat.program(nk.mlp(1, 16, activation="erf").flatten(), 5)
    assert erf[1, 0] == 2.0 and erf[1, 1:3].tolist() == pytest.approx([2 / torch.pi, 4 / torch.pi])
    for other in ("tanh", "gelu"):
        assert triton_flat.program(nk.mlp(2, 16, activation=other).flatten(), 5) is None

    class OwnDual(nk.Erf):  # a subclass with its own dual keeps the torch engines
        def dual(self, c, q1, q2, derivative=True):
            return super().dual(c, q1, q2, derivative)

    assert triton_flat.program([nk.Dense(4), OwnDual(), nk.Dense(1)], 5) is None


def test_usable_only_for_float32_on_cuda_unless_interpreted(monkeypatch):
    monkeypatch.setattr(triton_support, "_disabled", None)
    assert triton_flat.usable(torch.device("cuda"), torch.float32)
    assert not triton_flat.usable(torch.device("cuda"), torch.float64)
    assert not triton_flat.usable(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(triton_support, "INTERPRET", True)
    assert triton_flat.usable(torch.device("cpu"), torch.float32)
    triton_support.disable(RuntimeError("no GPU compiler"))
    assert not triton_flat.usable(torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_interpreted_kernel_matches_float64(name, interpreted):
    """NNGP and NTK within float32 rounding of the float64 kernel (a few ulps per layer of the kernel's scale; the
    eager float32 engine is 1-3e-7 off here too), symmetric and not, over several tiles."""
    arch = ARCHS[name]
    # w_std = 2.5 amplifies each layer's rounding: the eager float32 engine is 1.0e-6 off there (0.7e-6 Triton's
    # NNGP, 1.2e-6 its NTK, measured)
    tolerance = 2e-6 if name == "erf-standard-wide" else 1e-6
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(45, 7, generator=g), torch.randn(70, 7, generator=g)
    for second in (x2, None):
        got = arch.kernel(x1, second, batch_size=32)
        want = arch.kernel(x1.double(), None if second is None else second.double())
        for kernel in ("nngp", "ntk"):
            assert _relative(getattr(got, kernel), getattr(want, kernel)) < tolerance, kernel
        if second is None:  # exactly, with no symmetrising pass (the kernel reads one triangle of the Gram)
            assert torch.equal(got.ntk, got.ntk.T) and torch.equal(got.nngp, got.nngp.T)
    assert len(interpreted) == 2 * 3 + 3  # (2 × 3) tiles of 32, then the symmetric 2 × 2 grid's 3
    one = arch.kernel(x1, x2, get="ntk", batch_size=128)
    assert one.nngp is None and _relative(one.ntk, arch.kernel(x1.double(), x2.double()).ntk) < tolerance
    nngp = arch.kernel(x1, get="nngp", batch_size=128)
    assert nngp.ntk is None and _relative(nngp.nngp, arch.kernel(x1.double()).nngp) < tolerance
    ntk = arch.kernel(x1, get="ntk", batch_size=32).ntk  # the NNGP in a buffer, the NTK copied out
    assert torch.equal(ntk, ntk.T) and _relative(ntk, arch.kernel(x1.double()).ntk) < tolerance


def test_a_diagonal_tile_is_exactly_symmetric_from_an_unsymmetric_gram(interpreted):
    """A GEMM's x·xᵀ can differ from its transpose in the last bit; the kernel reads one triangle for both."""
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    gram = (x @ x.T) / 6
    gram.diagonal().copy_((x * x).sum(1) / 6)
    lower = torch.tril(torch.ones_like(gram, dtype=torch.bool), -1)
    gram = torch.where(lower, torch.nextafter(gram, torch.full_like(gram, torch.inf)), gram)  # one ulp off below
    steps = triton_flat.TritonSteps(triton_flat.program(ARCHS["leaky"].flatten(), 6), True, x.device, False)
    variances = gram.diagonal()
    nngp, ntk, _, _ = steps(gram, variances[:, None], variances[None, :], True)
    assert torch.equal(nngp, nngp.T) and torch.equal(ntk, ntk.T)
    unsymmetric, _, _, _ = steps(gram, variances[:, None], variances[None, :], False)
    assert not torch.equal(unsymmetric, unsymmetric.T)  # what the triangle read prevents


@pytest.mark.parametrize("name", ["relu", "erf-relu"])
def test_symmetric_diagonal_is_kernel_diagonal(name, interpreted):
    """A point's correlation with itself stays 1 through the layers (the variances follow c's arithmetic)."""
    arch = ARCHS[name]
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1)) * 3
    k, d = arch.kernel(x), arch.kernel_diagonal(x)
    assert interpreted
    torch.testing.assert_close(k.nngp.diagonal(), d.nngp, rtol=1e-6, atol=0)
    torch.testing.assert_close(k.ntk.diagonal(), d.ntk, rtol=1e-6, atol=0)


def test_paths_that_keep_torch(interpreted):
    arch = ARCHS["relu"]
    x = torch.randn(20, 5)
    arch.kernel(x, fused=False)
    arch.kernel(x.double())
    nk.mlp(2, 1, activation="gelu").kernel(x)
    w = torch.tensor(1.0, requires_grad=True)
    arch.kernel(x * w)  # inputs that carry derivatives
    assert not interpreted


def _near_duplicates():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 8, generator=g, dtype=torch.float64)
    nudged = base[::2] * (1 + 1e-3 * torch.randn(5, 8, generator=g, dtype=torch.float64))
    return torch.cat([base, nudged, -base[1:3]])


def test_near_parallel_pairs_are_counted_and_refined(interpreted, monkeypatch):
    """Nudged copies (1 − ρ ~ 1e-6) are counted by the kernel and recomputed in float64; clean tiles are not
    refined at all, and without the refinement the error the test guards against shows."""
    arch = ARCHS["relu"]
    x = _near_duplicates()
    exact = arch.kernel(x)
    got = arch.kernel(x.float(), batch_size=8)
    assert interpreted
    for kernel in ("nngp", "ntk"):
        assert _relative(getattr(got, kernel), getattr(exact, kernel)) < 2e-6, kernel
    refined = []
    monkeypatch.setattr(near_parallel.NearParallelRefiner, "refine", lambda self, *a, **k: refined.append(a[3:5]))
    arch.kernel(torch.randn(30, 8, generator=torch.Generator().manual_seed(3)))
    assert refined == []  # no near-parallel pair: no tile refined
    unrefined = arch.kernel(x.float(), batch_size=8)
    assert refined and _relative(unrefined.ntk, exact.ntk) > 1e-5


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_subnormal_variances_fall_back_to_torch(activation, interpreted):
    """Variances below 2⁻¹⁰³ (the GPU's division and square root flush subnormals): the tile is recomputed by
    torch's rules, so the values are the eager engine's (its out-of-place and in-place rules agree bitwise)."""
    arch = nk.mlp(2, 1, activation=activation, b_std=0.0)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(2)) * 1e-17
    got = arch.kernel(x)
    assert interpreted
    want = arch.kernel(x, fused=False)
    assert torch.equal(got.nngp, want.nngp) and torch.equal(got.ntk, want.ntk)


def test_failure_warns_and_falls_back_for_the_process(interpreted, monkeypatch):
    def broken(fn):
        raise RuntimeError("PTX assembly failed")

    arch = ARCHS["leaky"]
    x = torch.randn(30, 5)
    monkeypatch.setattr(triton_support, "build", broken)
    with pytest.warns(RuntimeWarning, match="Triton kernel failed .*PTX assembly failed"):
        got = arch.kernel(x, batch_size=16)
    want = arch.kernel(x, fused=False, batch_size=16)
    assert torch.equal(got.ntk, want.ntk)
    assert not triton_flat.usable(torch.device("cuda"), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arch.kernel(x)  # not tried again: no second warning


def test_int64_offsets_past_two_to_the_31(interpreted, monkeypatch):
    assert not triton_support.wide_offsets(8192, 8192, 8192, 50_000)  # the planned GPU tiles of N = 50,000
    assert triton_support.wide_offsets(50_000, 50_000, 50_000)        # batch_size=50,000: one 10 GB tile
    assert triton_support.wide_offsets(2, 2 ** 31, 2 ** 31)
    x = torch.randn(20, 4)
    arch = ARCHS["relu"]
    got = arch.kernel(x, batch_size=8)
    monkeypatch.setattr(triton_support, "wide_offsets", lambda *args: True)
    assert torch.equal(arch.kernel(x, batch_size=8).ntk, got.ntk)  # the int64 variant: the same values


def test_plan_on_a_gpu_is_few_large_tiles():
    h100 = DeviceInfo(kind="cuda", free_bytes=78 << 30)
    assert plan_flat(triton_flat.TILE_COST, 4000, 4000, 4, h100, True).tile == 4000
    assert plan_flat(triton_flat.TILE_COST, 50_000, 50_000, 4, h100, True).tile == 8192
