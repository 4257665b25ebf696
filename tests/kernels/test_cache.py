"""The per-call memo of ``kernels/cache.py``: reuse by value within a ``coefficient_cache`` block, never outside."""

import torch

from ntkit.kernels import cache
from ntkit.kernels.cache import coefficient_cache, memoized


def _counting(calls):
    def compute():
        calls.append(1)
        return torch.tensor(float(len(calls)))
    return compute


def test_equal_values_in_other_tensors_and_shapes_are_reused():
    calls = []
    q = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    with coefficient_cache():
        first = memoized(("variance", 1), q, _counting(calls))
        again = memoized(("variance", 1), q.clone().reshape(3, 4), _counting(calls))  # a tile's (t, 1) vs (1, t)
    assert len(calls) == 1 and again is first


def test_other_values_keys_dtypes_and_lengths_are_computed_again():
    calls = []
    q = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    with coefficient_cache():
        memoized(("variance", 1), q, _counting(calls))
        nudged = q.clone()
        nudged[7] = torch.nextafter(nudged[7], torch.tensor(3.0, dtype=torch.float64))  # one ulp
        memoized(("variance", 1), nudged, _counting(calls))
        memoized(("variance", 2), q, _counting(calls))
        memoized(("variance", 1), q.float(), _counting(calls))
        memoized(("variance", 1), q[:6], _counting(calls))
    assert len(calls) == 5


def test_nothing_is_kept_outside_a_block_or_for_inputs_with_derivatives():
    calls = []
    q = torch.ones(4, dtype=torch.float64)
    memoized(("k",), q, _counting(calls))
    memoized(("k",), q, _counting(calls))
    with coefficient_cache():
        tracked = q.clone().requires_grad_()
        memoized(("k",), tracked, _counting(calls))
        memoized(("k",), tracked, _counting(calls))
    assert len(calls) == 4
    assert cache._CACHE.get() is None


def test_the_number_of_entries_per_key_is_bounded(monkeypatch):
    monkeypatch.setattr(cache, "_CACHE_ENTRIES", 2)
    calls = []
    with coefficient_cache():
        for value in (1.0, 2.0, 3.0, 3.0):  # the third value is not stored: computed twice
            memoized(("k",), torch.full((3,), value), _counting(calls))
    assert len(calls) == 4
