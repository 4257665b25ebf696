"""The flat engine's in-place tiles give bitwise the values of the out-of-place rules they replace."""

import pytest
import torch

import ntkit as nk
from ntkit.kernels import dual, dual_inplace, evaluate
from ntkit.kernels.scratch import Scratch


def _grid(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q1 = torch.rand(9, 1, generator=g, dtype=dtype) * 3
    q2 = torch.rand(1, 7, generator=g, dtype=dtype) * 3
    q1[0], q2[0, 1] = 0.0, 1e-30  # a zero variance (zero input, no bias) and a tiny one
    c = (torch.rand(9, 7, generator=g, dtype=dtype) * 2.2 - 1.1) * (q1.sqrt() * q2.sqrt())  # some |ρ| > 1
    c[1, 2] = (q1[1] * q2[0, 2]).sqrt() * (1 - 2 * torch.finfo(dtype).eps)  # within the snap to +1
    c[2, 3] = -(q1[2] * q2[0, 3]).sqrt()
    return c, q1, q2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("slopes", [(1.0, 0.0), (1.0, 0.2), (1.0, -1.0)])
def test_rectified_tile_equals_rectified_bitwise(dtype, slopes):
    c, q1, q2 = _grid(dtype)
    k, kdot = dual.rectified(c, q1, q2, *slopes)
    scratch = Scratch()
    k_, kdot_ = dual_inplace.rectified_tile_(c.clone(), q1, q2, *slopes, scratch=scratch)
    assert torch.equal(k, k_) and torch.equal(kdot, kdot_)
    k_only, none = dual_inplace.rectified_tile_(c.clone(), q1, q2, *slopes, derivative=False, scratch=scratch)
    assert none is None and torch.equal(k, k_only)
    # The GPU branch (no reductions read back to the host) gives the same values.
    k_gpu, kdot_gpu = dual_inplace.rectified_tile_(c.clone(), q1, q2, *slopes, scratch=scratch, avoid_sync=True)
    assert torch.equal(k, k_gpu) and torch.equal(kdot, kdot_gpu)
    # A tile with no zero variance and no correlation near ±1, where the CPU branch skips the clamp and the snap.
    c, q1, q2 = 0.3 * c, q1 + 0.1, q2 + 0.1
    expected = dual.rectified(c, q1, q2, *slopes)
    for avoid_sync in (False, True):
        got = dual_inplace.rectified_tile_(c.clone(), q1, q2, *slopes, scratch=scratch, avoid_sync=avoid_sync)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


SMOOTH = [(dual.erf, dual_inplace.erf_tile_), (dual.gelu, dual_inplace.gelu_tile_), (dual.sin, dual_inplace.sin_tile_),
          (dual.cos, dual_inplace.cos_tile_)]
SMOOTH_IDS = ["erf", "gelu", "sin", "cos"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule, tile_rule", SMOOTH, ids=SMOOTH_IDS)
def test_smooth_tile_rules_equal_their_duals_bitwise(dtype, rule, tile_rule):
    """Zero and tiny variances, |c| beyond √q1·√q2 (clamped), within 4 ulps of it (snapped), and the tile without
    any of these (the CPU path that touches no entry)."""
    c, q1, q2 = _grid(dtype)
    grids = [(c * 1e3, q1 * 1e3, q2 * 1e3),  # large variances: D's scaled root, m = max(1, b) > 1
             (0.3 * c, q1 + 0.1, q2 + 0.1),  # nothing to clamp or snap
             (0.3 * c, 0.3 * q1, 0.3 * q2),  # every b <= 1: the CPU path without m, with clamps and snaps
             (0.09 * c, 0.3 * q1 + 0.01, 0.3 * q2 + 0.01)]  # neither
    for grid in grids:
        k, kdot = rule(*grid)
        for avoid_sync in (False, True):  # True: the GPU branch, which reads no reduction back
            k_, kdot_ = tile_rule(grid[0].clone(), *grid[1:], scratch=Scratch(), avoid_sync=avoid_sync)
            assert torch.equal(k, k_) and torch.equal(kdot, kdot_)
        k_only, none = tile_rule(grid[0].clone(), *grid[1:], derivative=False, scratch=Scratch())
        assert none is None and torch.equal(k, k_only)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.5, 40.0])
@pytest.mark.parametrize("rule, tile_rule", SMOOTH, ids=SMOOTH_IDS)
def test_smooth_tile_rules_snap_exactly_the_entries_their_duals_snap(dtype, scale, rule, tile_rule):
    """Tiles whose every |c| is b(1 − kε), k = 0 ... 24, next to the 4-ulp snap band (k < 4 snaps), with bounds b
    within 2x of each other, and one tile of all these k with b 100-fold apart. The CPU path skips the snap when
    the smallest slack b − |c| is at least 8ε·max b: a margin too small leaves the k = 2, 3 tiles unsnapped, a
    wrong skip or extra snap changes an entry's value."""
    g = torch.Generator().manual_seed(2)
    eps = torch.finfo(dtype).eps
    sign = torch.where(torch.arange(12) % 2 == 0, 1.0, -1.0).to(dtype)
    for spread in (1.0, 99.0):
        q1 = (torch.rand(25, 1, generator=g, dtype=dtype) * spread + 1.0) * scale / (1.0 + spread)
        q2 = (torch.rand(1, 12, generator=g, dtype=dtype) * spread + 1.0) * scale / (1.0 + spread)
        bound = q1.sqrt() * q2.sqrt()
        steps = torch.arange(25, dtype=dtype)[:, None]
        tiles = [sign * bound * (1 - steps * eps)] if spread > 1 else [sign * bound * (1 - k * eps) for k in range(25)]
        for c in tiles:
            k, kdot = rule(c, q1, q2)
            k_, kdot_ = tile_rule(c.clone(), q1, q2, scratch=Scratch())
            assert torch.equal(k, k_) and torch.equal(kdot, kdot_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule, tile_rule", SMOOTH, ids=SMOOTH_IDS)
def test_smooth_diagonal_tile_self_pairs_same_values(dtype, rule, tile_rule):
    """A symmetric kernel's diagonal tile (``self_pairs``: the diagonal is snapped on its own and left out of the
    reduction that decides the rest), with a near-duplicate pair off the diagonal and a zero-variance point."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 5, generator=g, dtype=dtype)
    x[7] = x[3] * (1 + torch.finfo(dtype).eps)
    x[11] = 0.0
    for scale in (0.5, 30.0):  # b <= 1 everywhere, and b > 1
        q = (x * x).sum(1) / 5 * scale
        gram = x @ x.T / 5 * scale
        gram.diagonal().copy_(q)
        k, kdot = rule(gram, q[:, None], q[None, :])
        for self_pairs in (False, True):
            k_, kdot_ = tile_rule(gram.clone(), q[:, None], q[None, :], scratch=Scratch(), self_pairs=self_pairs)
            assert torch.equal(k, k_) and torch.equal(kdot, kdot_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sin_and_cos_tiles_on_each_branch(dtype):
    """sin and cos use expm1 where |c| <= 1 and two exponentials elsewhere; on a CPU a tile entirely on one side
    skips the other branch. Tiles all below, all above and on both sides of 1: ``dual``'s values bitwise."""
    g = torch.Generator().manual_seed(6)
    q1 = torch.rand(9, 1, generator=g, dtype=dtype) * 4 + 2
    q2 = torch.rand(1, 7, generator=g, dtype=dtype) * 4 + 2
    rho = torch.rand(9, 7, generator=g, dtype=dtype) * 1.8 - 0.9
    mixed = rho * q1.sqrt() * q2.sqrt()
    above = torch.where(mixed.abs() > 1, mixed, torch.where(mixed < 0, -1.5, 1.5).to(dtype))
    assert (mixed.abs() <= 1).any() and (mixed.abs() > 1).any() and (above.abs() > 1).all()
    for c in (mixed.clamp(-0.99, 0.99), above, mixed):
        for rule, tile_rule in ((dual.sin, dual_inplace.sin_tile_), (dual.cos, dual_inplace.cos_tile_)):
            k, kdot = rule(c, q1, q2)
            for avoid_sync in (False, True):
                got = tile_rule(c.clone(), q1, q2, scratch=Scratch(), avoid_sync=avoid_sync)
                assert torch.equal(k, got[0]) and torch.equal(kdot, got[1])


def _out_of_place(monkeypatch):
    monkeypatch.setattr(evaluate, "carries_derivatives", lambda q: True)  # what inputs with derivatives get


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", [
    nk.mlp(3, 8, activation="relu", b_std=0.1),
    nk.mlp(2, 8, activation="leaky_relu", w_std=1.3, b_std=0.0),
    nk.Serial(nk.Dense(8, b_std=0.2), nk.Residual(nk.Serial(nk.Abs(), nk.Dense(8))), nk.ReLU(), nk.Dense(1)),
    nk.mlp(2, 8, activation="erf", b_std=0.1, parameterization="standard"),
    nk.mlp(2, 8, activation="gelu", w_std=1.5, b_std=0.1),
    nk.mlp(2, 8, activation="sin", w_std=1.5, b_std=0.1),
    nk.mlp(2, 8, activation="cos", b_std=0.1, parameterization="standard"),
], ids=["relu", "leaky", "residual", "erf-standard", "gelu", "sin", "cos-standard"])
def test_kernel_in_place_equals_out_of_place_bitwise(monkeypatch, dtype, arch):
    # Without the float64 recomputation of near-parallel float32 pairs (kernels/near_parallel.py), which only the
    # in-place side would apply here: the rules themselves are compared.
    monkeypatch.setattr(evaluate, "kinked_layers", lambda layers: [])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 6, generator=g, dtype=dtype)
    x[7] = x[3]  # a duplicate: ρ = 1 off the diagonal
    x[9] = -x[4]  # and ρ = −1
    x[11] = 0.0
    y = torch.randn(23, 6, generator=g, dtype=dtype)
    fast = [arch.kernel(x, batch_size=16), arch.kernel(x, y, batch_size=16)]
    _out_of_place(monkeypatch)
    slow = [arch.kernel(x, batch_size=16), arch.kernel(x, y, batch_size=16)]
    for a, b in zip(fast, slow):
        assert torch.equal(a.ntk, b.ntk) and torch.equal(a.nngp, b.nngp)
    if dtype == torch.float64:  # kernel_diagonal's promise (float32 transcendentals may round by position)
        assert torch.equal(fast[0].ntk.diagonal(), arch.kernel_diagonal(x).ntk)


def test_inputs_with_derivatives_are_not_overwritten():
    x = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    arch = nk.mlp(2, 8, b_std=0.1)
    k = arch.kernel(x, batch_size=8).ntk
    k.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(k.detach(), arch.kernel(x.detach(), batch_size=8).ntk, rtol=0, atol=0)


@pytest.mark.parametrize("slopes", [(1.0, 0.0), (1.0, -1.0)])
def test_diagonal_tile_self_pairs_skip_the_snaps_with_the_same_values(slopes):
    """A symmetric kernel's diagonal tile (``self_pairs``): every self-correlation snaps to exactly 1, and the snap
    and near-parallel passes are skipped unless another pair needs them. Values and reported masks as without."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g)
    q = (x * x).sum(1) / 5
    for copy in (False, True):
        if copy:
            x[7] = x[3] * (1 + 1e-7)  # a near-duplicate: reported with or without self_pairs
            q = (x * x).sum(1) / 5
        gram = x @ x.T / 5
        gram.diagonal().copy_(q)
        results = []
        for self_pairs in (False, True):
            masks = []
            k, kdot = dual_inplace.rectified_tile_(gram.clone(), q[:, None], q[None, :], *slopes, scratch=Scratch(),
                                                   near_parallel=masks, self_pairs=self_pairs)
            results.append((k, kdot, masks))
        (k, kdot, masks), (k_, kdot_, masks_) = results
        assert torch.equal(k, k_) and torch.equal(kdot, kdot_)
        assert len(masks) == 1  # without self_pairs the diagonal alone makes a mask
        if copy:
            assert len(masks_) == 1 and torch.equal(masks_[0], masks[0]) and masks_[0][3, 7]
        else:
            assert masks_ == []
    # A diagonal entry that does not snap (a zero variance: ρ = 0) takes the full path, same values.
    x[5] = 0.0
    q = (x * x).sum(1) / 5
    gram = x @ x.T / 5
    gram.diagonal().copy_(q)
    plain = dual_inplace.rectified_tile_(gram.clone(), q[:, None], q[None, :], *slopes, scratch=Scratch())
    paired = dual_inplace.rectified_tile_(gram.clone(), q[:, None], q[None, :], *slopes, scratch=Scratch(),
                                          self_pairs=True)
    assert torch.equal(plain[0], paired[0]) and torch.equal(plain[1], paired[1])


def test_a_subclass_with_its_own_dual_runs_it_on_in_place_tiles(monkeypatch):
    """The in-place tile rule belongs to the class that defines ``dual``: a subclass that replaces ``dual`` gets
    its own values on the eager tiles, one that does not keeps the tile rule."""

    class Halved(nk.Erf):
        def dual(self, c, q1, q2, derivative=True):
            k, kdot = dual.erf(c, q1, q2, derivative)
            return 0.5 * k, (None if kdot is None else 0.5 * kdot)

    class Renamed(nk.GELU):
        pass

    assert Halved()._paired_tile_rule() is None
    assert Renamed()._paired_tile_rule() is dual_inplace.gelu_tile_
    assert nk.Erf()._paired_tile_rule() is dual_inplace.erf_tile_
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    arch = nk.Serial(nk.Dense(8, b_std=0.1), Halved(), nk.Dense(1))
    fast = arch.kernel(x, batch_size=16)
    _out_of_place(monkeypatch)
    slow = arch.kernel(x, batch_size=16)
    assert torch.equal(fast.ntk, slow.ntk) and torch.equal(fast.nngp, slow.nngp)
    plain = nk.Serial(nk.Dense(8, b_std=0.1), nk.Erf(), nk.Dense(1)).kernel(x, batch_size=16)
    assert not torch.allclose(fast.ntk, plain.ntk)
