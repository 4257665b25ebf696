"""nk.GradientFlow on a KernelOperator: Lanczos actions give the eigendecomposition's outputs."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.operators.krylov_flow import KrylovGradientFlow

GEN = torch.Generator().manual_seed(5)
X = torch.randn(200, 4, generator=GEN, dtype=torch.float64)
X_TEST = torch.randn(30, 4, generator=GEN, dtype=torch.float64)
Y = torch.randn(200, 2, generator=GEN, dtype=torch.float64)
ARCH = nk.mlp(2, 8, b_std=0.1)


def test_outputs_equal_the_eigendecomposition_at_every_time():
    """Lanczos stopped at a 1e-12 relative residual of the t = ∞ solve: train and test outputs, dual coefficients
    and losses at t from 1 to ∞ agree with the dense closed form to 1e-8 of their scale (the Krylov error for
    e^{−τA} and φ_t is bounded by the solve's on this spectrum; rounding of 200-dimensional products is ~1e-14)."""
    kernel = ARCH.kernel(X, get="ntk").ntk
    dense = nk.GradientFlow(kernel, Y, learning_rate=0.5, diag_reg=1e-3)
    flow = nk.GradientFlow(nk.KernelOperator(ARCH, X), Y, learning_rate=0.5, diag_reg=1e-3, tol=1e-12)
    assert isinstance(flow, KrylovGradientFlow) and flow.relative_residual <= 1e-12 and max(flow.steps) < 200
    times = torch.tensor([1.0, 1e2, 1e4, 1e6, math.inf], dtype=torch.float64)
    k_test = ARCH.kernel(X_TEST, X, get="ntk").ntk
    for ours, theirs in ((flow.train_outputs(times), dense.train_outputs(times)),
                         (flow.test_outputs(times, k_test), dense.test_outputs(times, k_test)),
                         (flow.test_outputs(times, nk.KernelOperator(ARCH, X_TEST, X)),
                          dense.test_outputs(times, k_test)),
                         (flow.dual_coefficients(times), dense.dual_coefficients(times)),
                         (flow.loss(times), dense.loss(times))):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8 * float(theirs.abs().max()))
    single = nk.GradientFlow(nk.KernelOperator(ARCH, X), Y[:, 0], learning_rate=0.5, diag_reg=1e-3, tol=1e-12)
    assert single.train_outputs(10.0).shape == (200,)
    torch.testing.assert_close(single.train_outputs(10.0), dense.train_outputs(10.0)[:, 0], rtol=1e-8, atol=1e-10)


def test_bad_operators_are_refused():
    with pytest.raises(ValueError, match="symmetric train-train operator"):
        nk.GradientFlow(nk.KernelOperator(ARCH, X, X), Y)
