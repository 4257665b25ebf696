"""Block planning and assembly (``ntkit.empirical.blocks``): merged blocks of small kept chunks, split blocks of
large ones, and the same kernel whichever way it is tiled."""

import pytest
import torch

from ntkit.empirical.blocks import MERGED_BLOCK, assemble, plan_blocks


@pytest.mark.parametrize("n1, n2, symmetric, chunk, mergeable, split, expected", [
    (64, 64, True, 14, 100, False, (14, 70)),  # five kept chunks of 14 merged into one block
    (64, 64, True, 6, 100, False, (6, 18)),  # the full NTK, 10 outputs: 128 rows need 13 samples, 3 chunks
    (1000, 1000, True, 14, 100, True, (14, 14 * -(-MERGED_BLOCK // 14))),  # merging comes before splitting
    (64, 64, True, 14, 3, False, (14, 42)),  # no more chunks than a chunk's transient memory allows
    (64, 64, True, 14, 1, False, (14, 14)),  # features not kept
    (6, 3, False, 2, 100, False, (2, 6)),  # no larger than the larger side needs
    (1000, 1000, True, 300, 100, True, (250, 250)),  # large chunks: about n1/4 per block, the chunk a multiple
    (1000, 1000, True, 300, 100, False, (300, 300)),
    (1000, 500, False, 300, 100, True, (300, 300)),  # splitting pays only for x2 None
])
def test_plan_blocks(n1, n2, symmetric, chunk, mergeable, split, expected):
    rows_per_sample = 10 if chunk == 6 else 1
    assert plan_blocks(n1, n2, symmetric, chunk, mergeable, split, rows_per_sample) == expected


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("chunk, block", [(2, 2), (4, 2), (2, 6), (3, 9)])
def test_merged_and_split_blocks_give_the_same_gram(symmetric, chunk, block):
    """A Gram matrix of random features assembled with blocks that divide the chunk, or merge several chunks, is
    the direct product; merged blocks compute each chunk's features once."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    sides = (x1, x1 if symmetric else x2)
    calls = []

    def features(side, rows):
        calls.append((side, rows.start))
        return [sides[side - 1][rows]]

    out = torch.empty(7, 7 if symmetric else 4, dtype=torch.float64)
    assemble(7, out.shape[1], symmetric, chunk, block, True, features, lambda f, rows: [f[0][rows]],
             lambda a, b: a[0] @ b[0].T, out, "trace", False, "test", lambda parts: [torch.cat([p[0] for p in parts])])
    torch.testing.assert_close(out, sides[0] @ sides[1].T, rtol=1e-14, atol=1e-14)
    assert len(calls) == len(set(calls))


def test_a_block_that_neither_divides_nor_merges_chunks_is_refused():
    with pytest.raises(ValueError, match="must divide chunk"):
        assemble(4, 4, True, 2, 3, True, None, None, None, torch.empty(4, 4), "trace", False, "test", lambda p: p)
    with pytest.raises(ValueError, match="must divide chunk"):  # merging needs kept features
        assemble(4, 4, True, 2, 4, False, None, None, None, torch.empty(4, 4), "trace", False, "test", lambda p: p)
