"""backend="dask": a LocalCluster of two worker processes gives the local answer, also when a worker is killed in
the middle of a solve; the driver's CG checkpoint resumes a crashed solve."""

import os
import signal

import pytest
import torch

import ntkit as nk

distributed = pytest.importorskip("distributed")  # the [dask] extra; `make test` installs it

GEN = torch.Generator().manual_seed(3)
X = torch.randn(240, 5, generator=GEN, dtype=torch.float64)
TARGETS = torch.randn(240, 2, generator=GEN, dtype=torch.float64)
ARCH = nk.mlp(2, 8, b_std=0.1)
REG = 1e-2


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        yield client


def _local_solution():
    return nk.conjugate_gradient(nk.KernelOperator(ARCH, X, panel_rows=40), TARGETS, reg=REG, tol=1e-10)[0]


def test_products_and_solves_equal_the_local_backend(client):
    """The same panels and float64 products, computed in other processes (their thread counts may differ, so the
    Gram products may round differently in the last bit): 1e-12 relative."""
    local = nk.KernelOperator(ARCH, X, panel_rows=40)
    remote = nk.KernelOperator(ARCH, X, panel_rows=40, backend="dask", client=client)
    v = torch.randn(240, 3, dtype=torch.float64)
    torch.testing.assert_close(remote @ v, local @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(remote.dense(), local.dense(), rtol=1e-12, atol=0)
    solution, report = nk.conjugate_gradient(remote, TARGETS, reg=REG, tol=1e-10)
    assert report.converged
    torch.testing.assert_close(solution, _local_solution(), rtol=1e-8, atol=1e-10)


def test_a_worker_killed_mid_solve_loses_nothing(client):
    """SIGKILL to one of the two worker processes after the third iteration: Dask recomputes the panels it held
    (pure tasks on data every worker has) and the solve finishes with the local answer."""
    remote = nk.KernelOperator(ARCH, X, panel_rows=40, backend="dask", client=client)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def kill_at_three(iteration, _residuals):
        if iteration == 3:
            os.kill(victim, signal.SIGKILL)
            killed.append(iteration)

    solution, report = nk.conjugate_gradient(remote, TARGETS, reg=REG, tol=1e-10, callback=kill_at_three)
    assert killed == [3] and report.converged
    assert victim not in client.run(os.getpid).values()  # the worker really is gone (the nanny started another)
    torch.testing.assert_close(solution, _local_solution(), rtol=1e-8, atol=1e-10)


def test_the_driver_checkpoint_resumes_a_crashed_solve(tmp_path):
    op = nk.KernelOperator(ARCH, X, panel_rows=40)
    path = tmp_path / "cg.pt"
    uninterrupted, full = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-10)

    def crash(iteration, _residuals):
        if iteration == 7:
            raise KeyboardInterrupt("driver killed")

    with pytest.raises(KeyboardInterrupt):
        nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-10, checkpoint=path, checkpoint_every=5, callback=crash)
    assert path.exists()
    resumed, report = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-10, checkpoint=path, checkpoint_every=5)
    assert report.resumed_from == 5 and report.iterations == full.iterations and report.converged
    torch.testing.assert_close(resumed, uninterrupted, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="belongs to another problem"):
        nk.conjugate_gradient(op, TARGETS, reg=2 * REG, checkpoint=path)


def test_bad_backend_arguments_are_named(client):
    with pytest.raises(ValueError, match="backend must be 'local' or 'dask'"):
        nk.KernelOperator(ARCH, X, backend="spark")
    with pytest.raises(ValueError, match="client is for backend='dask'"):
        nk.KernelOperator(ARCH, X, client=client)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        nk.KernelOperator(ARCH, X, backend="dask", client="tcp://127.0.0.1:8786")
