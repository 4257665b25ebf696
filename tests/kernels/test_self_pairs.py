"""States that pair points with themselves (``KernelState.self_pairs``): their ρ = 1 entries snap to exactly 1
without the masked passes over the whole state, with the values of the plain path."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ntkit as nk
from ntkit.kernels import dual, dual_inplace


class _CountingMasks(TorchDispatchMode):
    """Counts the masked fills (the snap passes) that run inside the block."""

    def __init__(self):
        super().__init__()
        self.fills = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.fills += func is torch.ops.aten.masked_fill_.Scalar
        return func(*args, **(kwargs or {}))


def _self_state(image):
    """The full-form state (1, 1, H, W, H, W) of an image (C, H, W) with itself, and its variances."""
    c, h, w = image.shape
    cov = torch.einsum("cp,cq->pq", image.reshape(c, -1), image.reshape(c, -1)) / c
    q = cov.diagonal().clone()
    return cov.reshape(1, 1, h, w, h, w), q.reshape(1, 1, h, w, 1, 1), q.reshape(1, 1, 1, 1, h, w)


@pytest.mark.parametrize("slopes", [(1.0, 0.0), (1.0, -1.0)])
def test_a_point_with_itself_snaps_without_masked_passes(slopes):
    image = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    cov, q1, q2 = _self_state(image)
    plain = dual_inplace.rectified_(cov.clone(), q1, q2, *slopes)
    with _CountingMasks() as counter:
        hinted = dual_inplace.rectified_(cov.clone(), q1, q2, *slopes, self_pairs=True)
    assert counter.fills == 0  # the plain path snaps the 20 positions with themselves by one masked pass
    assert torch.equal(plain[0], hinted[0]) and torch.equal(plain[1], hinted[1])
    # Two positions with parallel channels: that pair still needs the snap, with the same values.
    image[:, 1, 1] = 2.0 * image[:, 0, 0]
    cov, q1, q2 = _self_state(image)
    plain = dual_inplace.rectified_(cov.clone(), q1, q2, *slopes)
    with _CountingMasks() as counter:
        hinted = dual_inplace.rectified_(cov.clone(), q1, q2, *slopes, self_pairs=True)
    assert counter.fills >= 1
    assert torch.equal(plain[0], hinted[0]) and torch.equal(plain[1], hinted[1])


def test_the_convolutional_engine_marks_points_with_themselves():
    """The self pass and a symmetric kernel's (i, i) tiles carry the hint: distinct random images then need no
    snap pass anywhere (each self-pair took one per rectified layer before)."""
    arch = nk.cnn(2, kernel_size=3, readout="gap", b_std=0.1)
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    with _CountingMasks() as counter:
        arch.kernel(x, batch_size=1)
    assert counter.fills == 0


class _CountingWholeStateNonzero(TorchDispatchMode):
    """Counts ``nonzero`` over tensors of ``numel`` entries (the smooth rules' search for entries to snap)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.calls = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.aten.nonzero.default and args[0].numel() == self.numel
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule, tile_rule", [(dual.erf, dual_inplace.erf_tile_), (dual.gelu, dual_inplace.gelu_tile_)],
                         ids=["erf", "gelu"])
def test_smooth_rules_snap_a_point_with_itself_on_its_diagonal(rule, tile_rule):
    """The convolutional engine's full-form state of an image with itself: with ``self_pairs`` the erf and GELU
    rules snap the positions paired with themselves on the (P, P) diagonal alone, with ``dual``'s values."""
    image = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov, q1, q2 = _self_state(image)
    expected = rule(cov, q1, q2)
    for self_pairs, searches in ((False, 1), (True, 0)):
        with _CountingWholeStateNonzero(cov.numel()) as counter:
            got = tile_rule(cov.clone(), q1, q2, self_pairs=self_pairs)
        assert counter.calls == searches
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
