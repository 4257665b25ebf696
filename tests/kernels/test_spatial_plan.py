"""Planning of spatial kernels: the split into prefix and groups, tile sizes from the device, and that every plan
gives the same kernel (including the mirrored sub-tiles of diagonal groups)."""

import pytest
import torch

import ntkit as nk
from ntkit.kernels import spatial_plan
from ntkit.kernels.spatial_plan import DeviceInfo, plan_spatial
from ntkit.layers.base import Signature, output_forms, output_signatures

GIB = 1 << 30


def _plan(arch, shape, n1, n2, info, batch_size=None, itemsize=4):
    layers = arch.flatten()
    forms = output_forms(layers, "flat")
    signatures = output_signatures(layers, Signature(shape[0], shape[1:]))
    return plan_spatial(layers, signatures, forms, layers[0].input_form(forms[0]), shape[1:], n1, n2, itemsize,
                        info, batch_size)


def test_myrtle_is_split_after_its_first_pooling():
    plan = _plan(nk.myrtle(5), (3, 32, 32), 1000, 1000, DeviceInfo("cpu", 16 * GIB))
    layers = nk.myrtle(5).flatten()
    assert isinstance(layers[plan.split - 1], nk.AvgPool2d) and plan.split == 5
    assert plan.input_form == "full" and plan.forms[-3] == "diagonal"  # the last pooling feeds Flatten
    # CPU: one 32×32 pair (4 MiB per state) per sub-tile; a group of 16×16-position pairs 16 times larger.
    assert plan.sub_tile == (1, 1)
    assert plan.group[0] * plan.group[1] == 16


def test_cuda_plans_take_large_tiles_from_free_memory():
    cpu = _plan(nk.myrtle(5), (3, 32, 32), 50_000, 50_000, DeviceInfo("cpu", 100 * GIB))
    gpu = _plan(nk.myrtle(5), (3, 32, 32), 50_000, 50_000, DeviceInfo("cuda", 80 * GIB))
    # 10 GiB per stage at 32 MiB per 32×32 pair (8 working copies): ~300 pairs per launch instead of one.
    assert gpu.sub_tile[0] * gpu.sub_tile[1] >= 256 * cpu.sub_tile[0] * cpu.sub_tile[1]
    assert gpu.working_bytes <= 0.3 * 80 * GIB
    small_gpu = _plan(nk.myrtle(5), (3, 32, 32), 50_000, 50_000, DeviceInfo("cuda", 2 * GIB))
    assert small_gpu.sub_tile[0] * small_gpu.sub_tile[1] < gpu.sub_tile[0] * gpu.sub_tile[1]


def test_diagonal_states_need_no_split_and_take_large_tiles():
    plan = _plan(nk.cnn(3, readout="flatten"), (3, 32, 32), 500, 500, DeviceInfo("cpu", 16 * GIB))
    assert plan.input_form == "diagonal"
    assert plan.split == len(nk.cnn(3).flatten()) - 1  # the Flatten shrinks 1024-fold; Dense runs per group
    assert plan.sub_tile[0] * plan.sub_tile[1] >= 64


def test_batch_size_sets_the_group():
    plan = _plan(nk.myrtle(5), (3, 32, 32), 100, 100, DeviceInfo("cpu", 16 * GIB), batch_size=7)
    assert plan.group == (7, 7)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _plan(nk.myrtle(5), (3, 32, 32), 100, 100, DeviceInfo("cpu", 16 * GIB), batch_size=0)


@pytest.mark.parametrize("budget", [1 << 9, 1 << 12, 1 << 20])
def test_every_tiling_gives_the_same_kernel(monkeypatch, budget):
    """Small budgets force one-pair sub-tiles, groups that straddle the diagonal and mirrored sub-tiles."""
    torch.manual_seed(0)
    x = torch.randn(7, 2, 8, 8, dtype=torch.float64)
    arch = nk.Serial(nk.Conv2d(4, 3, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(4, 3), nk.Erf(),
                     nk.GlobalAvgPool(), nk.Dense(1))
    reference = arch.kernel(x, x.clone())
    monkeypatch.setattr(spatial_plan, "CPU_TILE_ELEMENTS", budget)
    for batch_size in (None, 3):
        k = arch.kernel(x, batch_size=batch_size)
        torch.testing.assert_close(k.ntk, reference.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(k.nngp, reference.nngp, rtol=1e-13, atol=0)
        k2 = arch.kernel(x, x[:5], batch_size=batch_size)
        torch.testing.assert_close(k2.ntk, reference.ntk[:, :5], rtol=1e-13, atol=0)


def test_symmetrisation_by_blocks_keeps_the_upper_triangle():
    from ntkit.kernels.spatial_evaluate import _symmetrize_mirrored

    a = torch.randn(10, 10, dtype=torch.float64)
    expected = torch.triu(a, 1) + torch.triu(a, 1).T + torch.diag(a.diagonal())
    for block in (1, 3, 16):
        b = a.clone()
        _symmetrize_mirrored(b, None, block=block)
        assert torch.equal(b, expected)
