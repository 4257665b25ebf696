"""Planning of flat kernels: tiles by device (CPU caches, GPU launches and memory) and when the recursion is
compiled (the ski-rental rule), checked on the CPU through device descriptions and a stand-in for torch.compile."""

import itertools
import warnings

import pytest
import torch

import ntkit as nk
from ntkit.kernels import evaluate, flat_plan
from ntkit.kernels.flat_plan import GPU_TILE_ENTRIES, compile_pays, plan_flat
from ntkit.kernels.spatial_plan import DeviceInfo

GIB = 1 << 30
RELU_COST = max(layer.tile_cost for layer in nk.mlp(3, 8).flatten())


def test_cpu_tiles_stay_near_the_caches():
    cpu = DeviceInfo("cpu", 16 * GIB)
    plan = plan_flat(RELU_COST, 4000, 4000, 4, cpu, fuse=False)
    assert 64 <= plan.tile <= 1024 and plan.working <= 1 << 20
    assert plan_flat(RELU_COST, 4000, 4000, 4, cpu, fuse=True).tile == 512
    # More threads split every pass of a tile: larger tiles amortise the barriers, 2²¹ more numbers per thread,
    # up to tiles of 1024².
    two = plan_flat(RELU_COST, 4000, 4000, 4, cpu, fuse=False, threads=2)
    assert two.tile > plan.tile and two.working <= 3 << 20 and two.working > 2 << 20
    assert plan_flat(RELU_COST, 4000, 4000, 4, cpu, fuse=False, threads=64).tile == 1024


def test_gpu_tiles_are_few_and_large():
    """An H200-sized device: the N = 4,000 grid in one tile (one launch per pass instead of ~200 tiles' worth),
    N = 20,000 in tiles of at most GPU_TILE_ENTRIES entries; a small GPU gets smaller tiles, never past its share."""
    big = DeviceInfo("cuda", 130 * GIB)
    assert plan_flat(RELU_COST, 4000, 4000, 4, big, fuse=False).tile >= 4000
    tile = plan_flat(RELU_COST, 20_000, 20_000, 4, big, fuse=False).tile
    assert 4096 <= tile and tile * tile <= GPU_TILE_ENTRIES and tile % 128 == 0
    small = plan_flat(RELU_COST, 20_000, 20_000, 4, DeviceInfo("cuda", 2 * GIB), fuse=False)
    assert small.tile < tile and small.working * 4 <= 0.25 * 2 * GIB
    cpu = plan_flat(RELU_COST, 20_000, 20_000, 4, DeviceInfo("cpu", 130 * GIB), fuse=False)
    assert (tile // cpu.tile) ** 2 >= 64  # at least 64x fewer tiles, and launches, than on a CPU


def test_batch_size_overrides_and_is_validated():
    assert plan_flat(RELU_COST, 100, 100, 4, DeviceInfo("cuda", 130 * GIB), fuse=False, batch_size=7).tile == 7
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            plan_flat(RELU_COST, 100, 100, 4, DeviceInfo("cpu", GIB), fuse=False, batch_size=bad)


def test_compile_pays_after_the_device_compile_cost():
    assert not compile_pays(0.0, "cpu") and compile_pays(flat_plan.COMPILE_SECONDS["cpu"], "cpu")
    assert not compile_pays(flat_plan.COMPILE_SECONDS["cpu"], "cuda")  # compiling costs more on the GPU
    assert not compile_pays(1.0, "mps") and compile_pays(1e9, "mps")   # unknown devices: the largest estimate


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder returning the eager step; a clock advancing 1 s per reading; grids of
    any size eligible. The policy is then observable in seconds of the fake clock and in compile calls."""
    compiled = []
    monkeypatch.setattr(evaluate.torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    clock = itertools.count()
    monkeypatch.setattr(evaluate.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(evaluate, "FUSE_MIN_ENTRIES", 1)
    return compiled


def test_first_calls_run_eagerly_and_compile_once_it_pays(fake_compile, monkeypatch):
    monkeypatch.setitem(flat_plan.COMPILE_SECONDS, "cpu", 30.0)
    arch = nk.mlp(2, 8, b_std=0.1)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = arch.kernel(x, fused=False, batch_size=10)
    first = arch.kernel(x, batch_size=10)  # 10 tiles: ~10 fake seconds, below the 30 s compile cost
    assert fake_compile == [] and 0 < arch._eager_seconds[(True, 3)] < 30
    torch.testing.assert_close(first.ntk, reference.ntk, rtol=0, atol=0)
    for _ in range(3):  # the third call crosses 30 s mid-call: it compiles at a tile boundary
        arch.kernel(x, batch_size=10)
    assert len(fake_compile) == 1
    arch.kernel(x, batch_size=10)  # later calls reuse the compiled step
    assert len(fake_compile) == 1
    arch.kernel(x, fused=False)
    other = nk.mlp(2, 8, b_std=0.1)
    other.kernel(x[:, :2], batch_size=10)  # another architecture (and input width) starts from zero
    assert len(fake_compile) == 1 and list(other._eager_seconds) == [(True, 2)]


def test_small_grids_and_quadrature_never_compile_by_default(fake_compile, monkeypatch):
    monkeypatch.setitem(flat_plan.COMPILE_SECONDS, "cpu", 0.0)
    monkeypatch.setattr(evaluate, "FUSE_MIN_ENTRIES", 1 << 22)
    nk.mlp(2, 8).kernel(torch.randn(50, 3))
    monkeypatch.setattr(evaluate, "FUSE_MIN_ENTRIES", 1)
    nk.mlp(2, 8, activation="tanh").kernel(torch.randn(50, 3))
    assert fake_compile == []
    nk.mlp(2, 8).kernel(torch.randn(50, 3))
    assert len(fake_compile) == 1


def test_a_failed_compile_falls_back_once_and_is_remembered(monkeypatch):
    def broken(fn, **kw):
        def step(*args):
            raise RuntimeError("no compiler here")
        return step

    monkeypatch.setattr(evaluate.torch, "compile", broken)
    monkeypatch.setattr(evaluate, "FUSE_MIN_ENTRIES", 1)
    monkeypatch.setitem(flat_plan.COMPILE_SECONDS, "cpu", 0.0)
    arch = nk.mlp(1, 8)
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falling back to eager torch"):
        k = arch.kernel(x, batch_size=10)
    torch.testing.assert_close(k.ntk, arch.kernel(x, fused=False, batch_size=10).ntk, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arch.kernel(x, batch_size=10)  # remembered: no second attempt, no second warning
    with pytest.raises(RuntimeError, match="no compiler here"):
        arch.kernel(x, fused=True)  # asked for explicitly: the error is the user's to see


def test_fused_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="fused must be True, False or None; got 'no'"):
        nk.mlp(1, 8).kernel(torch.randn(3, 2), fused="no")

