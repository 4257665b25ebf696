"""Fixtures shared across test modules."""

import os

# Triton's CPU interpreter runs ntkit's GPU kernel in tests/kernels/test_triton_flat.py; Triton reads this when it is
# imported (its own library functions must be interpretable too), so it is set before anything imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def single_thread():
    """One torch/BLAS thread for a module that asks for it (``pytest.mark.usefixtures("single_thread")``).

    On the shared 2-core machine an oversubscribed torch thread pool made the scikit-learn digits test 25x slower
    (52 s instead of 2 s); those problems are small, so one thread costs nothing. The thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)
