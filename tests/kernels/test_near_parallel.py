"""Float32 pairs that the rectified duals cannot resolve (ρ ≈ ±1) are recomputed in float64
(``kernels/near_parallel.py``): near-duplicate points get float32-accurate kernels on every path."""

import pytest
import torch

import ntkit as nk
from ntkit.kernels import evaluate, near_parallel


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _near_duplicates(seed=0, n=12, d=10):
    """Random points, each followed by copies nudged by 1e-3, 1e-5 and 0 (relative), and one nearly negated."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    rows = []
    for i, x in enumerate(base):
        rows.append(x)
        if i % 3 == 0:
            rows += [x + 1e-3 * torch.randn(d, generator=g, dtype=torch.float64) * x.norm() / d ** 0.5,
                     x + 1e-5 * torch.randn(d, generator=g, dtype=torch.float64) * x.norm() / d ** 0.5, x.clone(),
                     -x + 1e-4 * torch.randn(d, generator=g, dtype=torch.float64) * x.norm() / d ** 0.5]
    return torch.stack(rows)


ARCHS = {
    "relu": nk.mlp(3, 1, activation="relu", b_std=0.1),
    "relu-no-bias": nk.mlp(3, 1, activation="relu", b_std=0.0),
    "leaky": nk.mlp(2, 1, activation="leaky_relu", w_std=1.3, b_std=0.05),
    "abs": nk.mlp(2, 1, activation="abs", b_std=0.1),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_float32_rectified_kernels_of_near_duplicates_match_float64(name, monkeypatch):
    """Within float32 rounding of float64 (3e-4 off before: θ = arccos ρ of points 1e-3 apart), x with itself and
    with other points; the same data without the recomputation shows the error the test guards against."""
    arch = ARCHS[name]
    x = _near_duplicates()
    y = _near_duplicates(seed=1)[:9]
    exact = [arch.kernel(x), arch.kernel(x, y)]
    single = [arch.kernel(x.float()), arch.kernel(x.float(), y.float())]
    for got, want in zip(single, exact):
        for kernel in ("nngp", "ntk"):
            # A few float32 ulps per layer of the kernel's scale: the float64 values are rounded once, the
            # unflagged pairs (1 − |ρ| >= 1e-4) lose ~ε/θ <= 1e-5 of K̇ per layer at worst.
            assert _relative(getattr(got, kernel), getattr(want, kernel)) < 2e-6, kernel
    monkeypatch.setattr(evaluate, "kinked_layers", lambda layers: [])
    assert _relative(arch.kernel(x.float()).ntk, exact[0].ntk) > 1e-5


@pytest.mark.parametrize("name", ["relu", "abs"])
def test_copies_equal_the_diagonal_and_kernel_diagonal_is_the_diagonal(name):
    """The recomputed pairs and their points' diagonal entries come from the same float64 arithmetic: a point and
    its copy get bitwise the values of the point with itself (the 2×2 block stays singular, not indefinite);
    ``kernel_diagonal`` (float32 throughout) is the diagonal to float32 rounding."""
    x = _near_duplicates().float()
    copies = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if torch.equal(x[i], x[j])]
    assert len(copies) == 4
    arch = ARCHS[name]
    k = arch.kernel(x)
    for i, j in copies:
        for kernel in (k.nngp, k.ntk):
            assert kernel[i, j] == kernel[i, i] == kernel[j, j] == kernel[j, i]
    diagonal = arch.kernel_diagonal(x)
    for kernel in ("nngp", "ntk"):
        torch.testing.assert_close(diagonal[kernel], k[kernel].diagonal(), rtol=4 * torch.finfo(torch.float32).eps,
                                   atol=0)


def test_pairs_parallel_only_inside_the_network_are_caught():
    """A zero row and a row of size 1e-3 are orthogonal at the input but nearly parallel once the bias is added
    (the Abs case that was 2e-2 off in float32)."""
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[1] = 1e-3 * torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=torch.float64)
    x[2] = torch.tensor([0.3, 0.1, -1.0, 2.0], dtype=torch.float64)
    arch = nk.mlp(2, 1, activation="abs", b_std=0.1)
    assert _relative(arch.kernel(x.float()).ntk, arch.kernel(x).ntk) < 2e-6


@pytest.mark.parametrize("path", ["residual", "batch_size_1"])
def test_residual_branches_and_one_pair_tiles(path):
    """Rectified layers inside a residual branch run out of place (no report from the rule): the engine tests the
    final NNGP's correlations instead. And the smallest tiles (one pair each), where the rules report."""
    x = _near_duplicates()[:8]  # no nearly negated row: the output test does not see ρ ≈ −1 at a first ReLU
    if path == "residual":
        arch = nk.Serial(nk.Dense(8, b_std=0.1), nk.Residual(nk.Serial(nk.ReLU(), nk.Dense(8, b_std=0.1))),
                         nk.ReLU(), nk.Dense(1))
        got, want = arch.kernel(x.float()), arch.kernel(x)
    else:
        arch = ARCHS["relu"]
        got, want = arch.kernel(x.float(), batch_size=1), arch.kernel(x)
    assert _relative(got.ntk, want.ntk) < 2e-6


def test_fused_tiles_are_refined_too():
    x = _near_duplicates()[:8]
    arch = nk.mlp(2, 1, activation="relu", b_std=0.1)
    assert _relative(arch.kernel(x.float(), fused=True).ntk, arch.kernel(x).ntk) < 2e-6


def _record_instances(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` (a class) by a subclass that lists its instances; return the list."""
    made, base = [], getattr(module, name)

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(module, name, Recording)
    return made


def test_well_separated_points_recompute_nothing(monkeypatch):
    """Gaussian data has no pair within 1e-4 of ρ = ±1: nothing is recomputed (the common case costs nothing)."""
    made = _record_instances(monkeypatch, evaluate, "NearParallelRefiner")
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    nk.mlp(3, 1, activation="relu", b_std=0.1).kernel(x, batch_size=16)
    assert len(made) == 1 and made[0].refined == 0
    nk.mlp(3, 1, activation="relu", b_std=0.1).kernel(torch.cat([x, x[:5]]), batch_size=16)
    assert made[1].refined == 5  # each copy with its original: a tile above the diagonal, mirrored below


def test_float64_and_differentiated_inputs_are_left_alone(monkeypatch):
    made = []
    monkeypatch.setattr(evaluate, "NearParallelRefiner", lambda *a, **k: made.append(1))
    x = _near_duplicates()[:6]
    arch = ARCHS["relu"]
    arch.kernel(x)
    tracked = x.float().requires_grad_()
    arch.kernel(tracked).ntk.sum().backward()
    assert not made and bool(torch.isfinite(tracked.grad).all())


# ----- the convolutional engine -----------------------------------------------------------------------------------

def _near_duplicate_images(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64)
    nudged = x0 + 1e-3 * torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64)
    return torch.cat([x0, nudged, torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64), x0])  # row 4 = row 0


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_float32_convolutional_kernels_of_near_duplicate_images_match_float64(readout, monkeypatch):
    """Images 1e-3 apart: the float32 CNN-GP/CNTK was 2.8e-4 (flatten) and 3.4e-5 (GAP) off float64; their pairs
    are now recomputed in float64, also when only the NTK is asked for and with x2 given."""
    from ntkit.kernels import spatial_evaluate

    arch = nk.cnn(depth=3, kernel_size=3, readout=readout, b_std=0.1)
    x = _near_duplicate_images()
    exact = arch.kernel(x)
    single = arch.kernel(x.float())
    for kernel in ("nngp", "ntk"):
        assert _relative(getattr(single, kernel), getattr(exact, kernel)) < 2e-6, kernel
    assert _relative(arch.kernel(x.float(), x[:2].float(), get="ntk").ntk, exact.ntk[:, :2]) < 2e-6
    assert single.ntk[0, 4] == single.ntk[0, 0] == single.ntk[4, 4] == single.ntk[4, 0]  # a copy: its diagonal
    monkeypatch.setattr(spatial_evaluate, "kinked_layers", lambda layers: [])
    assert _relative(arch.kernel(x.float()).ntk, exact.ntk) > 1e-5


def test_well_separated_images_recompute_nothing(monkeypatch):
    from ntkit.kernels import spatial_evaluate

    made = _record_instances(monkeypatch, spatial_evaluate, "SpatialPairs")
    arch = nk.cnn(depth=2, kernel_size=3, readout="gap", b_std=0.1)
    x = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    arch.kernel(x)
    arch.kernel(torch.cat([x, x[:2] + 1e-4 * x[:2]]))  # two near-copies
    assert made[0].refined == 0 and made[1].refined == 2


def test_the_output_test_of_a_diagonal_tile_ignores_the_points_with_themselves():
    """Compiled tiles and GPUs test the final NNGP: on a diagonal tile the self-pairs (ρ = 1) must not make every
    such tile build a mask (one reduction decides when no other pair is near ±1)."""
    arch = nk.mlp(2, 1, activation="relu", b_std=0.1)

    def output_test(x):
        nngp = arch.kernel(x).nngp
        every = slice(0, len(x))
        final = (nngp.diagonal()[:, None], nngp.diagonal()[None, :])  # the rows' and columns' K(x, x)
        return near_parallel.NearParallelRefiner(None, x, x, True)._parallel_at_output(nngp, every, every, final,
                                                                                       None)

    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    assert output_test(x) is None
    mask = output_test(torch.cat([x, x[:1]]))  # and a copy of the first point
    assert mask[0, 30] and mask[30, 0] and int(mask.sum()) == 2
