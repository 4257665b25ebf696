"""nk.conjugate_gradient: equals the dense solve, preconditioners cut iterations, reports, errors."""

import pytest
import torch

import ntkit as nk
from ntkit.operators import nystrom, pivoted_cholesky

GEN = torch.Generator().manual_seed(1)
X = torch.randn(300, 6, generator=GEN, dtype=torch.float64)
ARCH = nk.mlp(3, 16, b_std=0.1)
K = ARCH.kernel(X, get="ntk").ntk
REG = 1e-3 * float(K.diagonal().mean())
TARGETS = torch.randn(300, 3, generator=GEN, dtype=torch.float64)
EXACT = torch.linalg.solve(K + REG * torch.eye(300, dtype=torch.float64), TARGETS)


@pytest.mark.parametrize("preconditioner", [None, "nystrom", "pivoted_cholesky"])
def test_solution_equals_the_dense_solve(preconditioner):
    """A relative residual below tol = 1e-10 bounds the error by cond(K + λI)·tol: K + λI here has condition
    number ~1e3·N, so 1e-10 residuals give agreement well inside the 1e-6 asserted."""
    op = nk.KernelOperator(ARCH, X)
    solution, report = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-10, preconditioner=preconditioner, rank=40)
    assert report.converged and report.relative_residual <= 1e-10 and report.iterations < 300
    residual = TARGETS - (K @ solution + REG * solution)
    assert float(residual.norm(dim=0).max() / TARGETS.norm(dim=0).min()) < 2e-10
    torch.testing.assert_close(solution, EXACT, rtol=1e-6, atol=1e-6 * float(EXACT.abs().max()))
    vector, _ = nk.conjugate_gradient(op, TARGETS[:, 0], reg=REG, tol=1e-10, preconditioner=preconditioner, rank=40)
    assert vector.shape == (300,)
    torch.testing.assert_close(vector, solution[:, 0], rtol=1e-6, atol=1e-6 * float(EXACT.abs().max()))


def test_preconditioners_cut_the_iterations():
    op = nk.KernelOperator(ARCH, X)
    plain = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-8, preconditioner=None)[1]
    for name in ("nystrom", "pivoted_cholesky"):
        report = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-8, preconditioner=name, rank=150)[1]
        assert report.rank == 150 and report.preconditioner == name
        assert report.iterations < plain.iterations / 2, (name, report.iterations, plain.iterations)


def test_low_rank_factors_approximate_the_kernel():
    """Both factors are Nyström approximations B Bᵀ ≤ K (PSD remainder); at full rank they reproduce K, and the
    Woodbury application inverts B Bᵀ + λI."""
    op = nk.KernelOperator(ARCH, X[:60])
    k = ARCH.kernel(X[:60], get="ntk").ntk
    for factor in (pivoted_cholesky(op, 60, 1.0, rtol=0.0), nystrom(op, 60, 1.0, torch.Generator().manual_seed(0))):
        approx = factor.factor @ factor.factor.T
        torch.testing.assert_close(approx, k, rtol=1e-6, atol=1e-6 * float(k.max()))
        v = torch.randn(60, 2, dtype=torch.float64)
        torch.testing.assert_close(factor(v), torch.linalg.solve(approx + torch.eye(60, dtype=torch.float64), v),
                                   rtol=1e-8, atol=1e-10)
    partial = pivoted_cholesky(op, 10, 1.0)
    remainder = torch.linalg.eigvalsh(k - partial.factor @ partial.factor.T)
    assert remainder.min() > -1e-8 * float(k.max())


def test_the_iteration_cap_is_reported_not_hidden():
    op = nk.KernelOperator(ARCH, X)
    solution, report = nk.conjugate_gradient(op, TARGETS, reg=REG, tol=1e-12, max_iter=3, preconditioner=None)
    assert report.iterations == 3 and not report.converged and report.relative_residual > 1e-12
    assert torch.isfinite(solution).all()


def test_bad_arguments_are_named():
    op = nk.KernelOperator(ARCH, X)
    with pytest.raises(ValueError, match="preconditioner='nystrom' needs reg > 0"):
        nk.conjugate_gradient(op, TARGETS, reg=0.0, preconditioner="nystrom")
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        nk.conjugate_gradient(op, TARGETS, reg=REG, preconditioner="jacobi")
    with pytest.raises(ValueError, match=r"y must have shape \(300,\) or \(300, k\)"):
        nk.conjugate_gradient(op, TARGETS[:10], reg=REG)
    with pytest.raises(ValueError, match="NaN or infinity"):
        nk.conjugate_gradient(op, torch.full((300,), float("nan")), reg=REG)
    with pytest.raises(ValueError, match="symmetric kernel of one set of points"):
        nk.conjugate_gradient(nk.KernelOperator(ARCH, X, X), TARGETS, reg=REG)
    with pytest.raises(TypeError, match="op must be an nk.KernelOperator"):
        nk.conjugate_gradient(K, TARGETS, reg=REG)
