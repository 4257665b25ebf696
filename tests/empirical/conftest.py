"""Fixtures of the empirical NTK tests."""

import pytest


@pytest.fixture(autouse=True)
def share_every_tail(monkeypatch):
    """The zoo's models are small: their linear read-out tails save far fewer multiply-adds than the threshold at
    which ``capture`` shares their cotangents (``tail.MIN_SAVED_FLOPS``), so every tail is shared here, and the
    kernels against brute force check that path. test_empirical_tail.py checks the threshold itself."""
    from ntkit.empirical import capture

    monkeypatch.setattr(capture, "MIN_SAVED_FLOPS", 0)
