"""nk.falkon: Nyström kernel ridge regression by Falkon's preconditioned CG."""

import pytest
import torch

import ntkit as nk

GEN = torch.Generator().manual_seed(1)
X = torch.randn(400, 6, generator=GEN, dtype=torch.float64)
X_TEST = torch.randn(50, 6, generator=GEN, dtype=torch.float64)
ARCH = nk.mlp(3, 16, b_std=0.1)


def target(x):
    return torch.sin(x[:, 0]) + x[:, 1] * x[:, 2]


K = ARCH.kernel(X, get="ntk").ntk
REG = 1e-3 * float(K.diagonal().mean())
EXACT = ARCH.kernel(X_TEST, X, get="ntk").ntk @ torch.linalg.solve(K + REG * torch.eye(400, dtype=torch.float64),
                                                                    target(X))


def test_all_points_as_centres_is_kernel_ridge_regression():
    """M = N: the Nyström estimator is KRR itself and Falkon's preconditioner is exact up to the jitter
    (ε·M·mean diag), so CG stops within a few iterations; predictions agree to 1e-6."""
    model = nk.falkon(ARCH, X, target(X), centres=400, reg=REG, tol=1e-10)
    assert model.report.converged and model.report.iterations <= 5 and model.report.rank == 400
    torch.testing.assert_close(model.predict(X_TEST), EXACT, rtol=1e-6, atol=1e-6 * float(EXACT.abs().max()))


def test_half_the_points_as_centres_keeps_the_accuracy():
    """M = N/2 centres (seed 0): the held-out error stays within 20% of exact KRR's (measured 0.072 vs 0.067 of
    the target's variance), with the iteration count independent of the ridge's conditioning (< 50)."""
    model = nk.falkon(ARCH, X, target(X), centres=200, reg=REG, tol=1e-10, max_iter=100)
    assert model.report.converged and model.report.iterations < 50
    variance = float(target(X_TEST).var())
    error = float(((model.predict(X_TEST) - target(X_TEST)) ** 2).mean()) / variance
    exact_error = float(((EXACT - target(X_TEST)) ** 2).mean()) / variance
    assert error < 1.2 * exact_error
    multi = nk.falkon(ARCH, X, torch.stack([target(X), -target(X)], 1), centres=200, reg=REG, tol=1e-10)
    torch.testing.assert_close(multi.alpha[:, 0], model.alpha, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(multi.alpha[:, 1], -model.alpha, rtol=1e-6, atol=1e-8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="falkon needs reg > 0"):
        nk.falkon(ARCH, X, target(X), reg=0.0)
    with pytest.raises(ValueError, match=r"y must have shape \(400,\) or \(400, k\)"):
        nk.falkon(ARCH, X, target(X)[:10], reg=REG)
    with pytest.raises(ValueError, match="centres must be a positive integer"):
        nk.falkon(ARCH, X, target(X), centres=0, reg=REG)


def test_repeated_points_are_one_centre():
    """With duplicated inputs KRR's solution lies in the span of the distinct points' kernel functions, so Falkon on
    the distinct centres is KRR exactly (without the deduplication K_MM is singular and CG diverged on iris)."""
    x = torch.cat([X[:100], X[:40]])
    k = ARCH.kernel(x, get="ntk").ntk
    exact = ARCH.kernel(X_TEST, x, get="ntk").ntk @ torch.linalg.solve(k + REG * torch.eye(140, dtype=torch.float64),
                                                                        target(x))
    model = nk.falkon(ARCH, x, target(x), centres=140, reg=REG, tol=1e-10)
    assert model.centres.shape[0] == 100 and model.report.converged
    torch.testing.assert_close(model.predict(X_TEST), exact, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))
