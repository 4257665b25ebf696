"""nk.spectrum: eigendecomposition, positive-definiteness report, kernel principal components, projections."""

import math

import numpy as np
import pytest
import torch

import ntkit as nk

DTYPE = torch.float64


def _kernel(n=7, seed=0):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return nk.mlp(2, 32, b_std=0.2).kernel(x).ntk


def test_eigh_is_float64_descending_and_reconstructs():
    k = _kernel().float()
    eig = nk.spectrum.eigh(k)
    assert eig.values.dtype == torch.float64 and eig.vectors.dtype == torch.float64 and eig.dtype == torch.float32
    assert bool((eig.values[1:] <= eig.values[:-1]).all())
    torch.testing.assert_close(eig.reconstruct(), k.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(eig.vectors.T @ eig.vectors, torch.eye(7, dtype=DTYPE), rtol=0, atol=1e-12)
    assert nk.spectrum.eigh(eig) is eig  # an existing decomposition is reused, not recomputed


def test_positive_definite_report():
    k = _kernel()
    report = nk.spectrum.check_positive_definite(k)
    lam = torch.linalg.eigvalsh(k)
    assert report and report.is_positive_definite and report.is_positive_semidefinite
    assert report.min_eigenvalue == pytest.approx(float(lam[0]))
    assert report.max_eigenvalue == pytest.approx(float(lam[-1]))
    assert report.condition_number == pytest.approx(float(lam[-1] / lam[0]))
    text = str(report)
    assert "7x7 kernel: positive definite" in text and "condition number" in text and "min eigenvalue" in text


def test_singular_and_indefinite_kernels_are_reported():
    v = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    singular = v @ v.T  # rank 2
    report = nk.spectrum.check_positive_definite(singular)
    assert not report and report.is_positive_semidefinite and report.n_zero == 3 and report.n_negative == 0
    assert report.condition_number == math.inf
    assert "positive semi-definite but singular (3 numerically zero eigenvalue(s))" in str(report)
    indefinite = torch.diag(torch.tensor([2.0, 1.0, -0.5], dtype=DTYPE))
    report = nk.spectrum.check_positive_definite(indefinite)
    assert not report.is_positive_semidefinite and report.n_negative == 1
    assert report.min_eigenvalue == pytest.approx(-0.5)
    assert "NOT positive semi-definite (1 negative eigenvalue(s))" in str(report)


def test_zero_tolerance_follows_the_kernel_dtype():
    # λ_min = 1e-9·λ_max: clearly non-zero in float64 (tolerance 3·2.2e-16) but below float32 rounding
    # (tolerance 3·1.2e-7), where the kernel cannot resolve it.
    k = torch.diag(torch.tensor([1.0, 0.5, 1e-9], dtype=DTYPE))
    assert nk.spectrum.check_positive_definite(k)
    assert not nk.spectrum.check_positive_definite(k.float())


def test_principal_components_and_projections():
    k = _kernel()
    values, vectors = nk.spectrum.principal_components(k, k=3)
    assert values.shape == (3,) and vectors.shape == (7, 3)
    torch.testing.assert_close(k @ vectors, vectors * values, rtol=0, atol=1e-10)  # K v_i = λ_i v_i
    y = torch.randn(7, 2, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    coefficients = nk.spectrum.project(k, y)
    eig = nk.spectrum.eigh(k)
    torch.testing.assert_close(eig.vectors @ coefficients, y)  # the coordinates reconstruct the targets
    torch.testing.assert_close(coefficients[:3], vectors.T @ y)
    fraction = nk.spectrum.explained_fraction(eig, y)
    assert fraction.shape == (7,) and float(fraction.sum()) == pytest.approx(1.0)
    # a target that is exactly the top component is fully explained by it
    top = nk.spectrum.explained_fraction(k, 3.0 * vectors[:, 0])
    assert float(top[0]) == pytest.approx(1.0)


def test_numpy_kernels_are_accepted():
    k = _kernel()
    eig = nk.spectrum.eigh(k.numpy())
    torch.testing.assert_close(eig.values, nk.spectrum.eigh(k).values)


@pytest.mark.parametrize("bad, error, message", [
    (torch.ones(3, 4, dtype=DTYPE), ValueError, r"kernel must be a square \(N, N\) kernel matrix"),
    (torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=DTYPE), ValueError, r"kernel must be symmetric; \|K\[0,1\]"),
    (torch.tensor([[1.0, math.nan], [math.nan, 1.0]], dtype=DTYPE), ValueError, "kernel contains 2 non-finite"),
    (torch.ones(3, dtype=DTYPE), ValueError, "kernel must have shape"),
    (np.eye(3, dtype=np.int64), TypeError, "kernel has dtype torch.int64"),
])
def test_bad_kernels(bad, error, message):
    with pytest.raises(error, match=message):
        nk.spectrum.check_positive_definite(bad)


def test_bad_projection_arguments():
    k = _kernel()
    with pytest.raises(ValueError, match="values has 5 rows but the kernel is 7x7"):
        nk.spectrum.project(k, torch.ones(5, dtype=DTYPE))
    with pytest.raises(ValueError, match="k=9 exceeds the number of points N=7"):
        nk.spectrum.principal_components(k, k=9)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        nk.spectrum.principal_components(k, k=0)
    with pytest.raises(ValueError, match="values is identically zero"):
        nk.spectrum.explained_fraction(k, torch.zeros(7, dtype=DTYPE))
