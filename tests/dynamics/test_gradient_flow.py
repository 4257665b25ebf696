"""GradientFlow: the MSE closed form against a fine RK4 integration, its limits, its spectrum and its conventions.

Conventions under test: ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j); C = ½ E_{p_in}‖f − y‖²; diag_reg adds
diag_reg · (tr Θ / N) · I to the train-train kernel only.
"""

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from dynamics_reference import rk4_function_space

DTYPE = torch.float64
N, M, O = 8, 5, 3
ETA = 0.7


def _problem(seed=0, n=N, m=M, o=O):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, 4, generator=g, dtype=DTYPE)
    ntk = nk.mlp(2, 64, b_std=0.2).kernel(x).ntk
    y = torch.randn(n, o, generator=g, dtype=DTYPE)
    f0 = torch.randn(n + m, o, generator=g, dtype=DTYPE) * 0.5
    return ntk[:n, :n], ntk[n:, :n], y, f0[:n], f0[n:]


def test_matches_fine_rk4_integration_on_train_and_test_points():
    k, k_test, y, f0, f0_test = _problem()
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    slowest = N / (ETA * float(flow.eigenvalues[-1]))  # time constant of the slowest eigencomponent
    times = torch.tensor([0.0, 0.3, 2.0, 0.5 * slowest, 2 * slowest], dtype=DTYPE)
    # RK4 step = 0.02 / (fastest rate ηλ_max/N): the local error (hλ)^5/120 ~ 3e-11 per step keeps the global
    # error near 1e-10 over the few thousand steps; the closed form must match to 1e-8.
    step = 0.02 * N / (ETA * float(flow.eigenvalues[0]))
    ref_train = rk4_function_space(k, k, y, f0, f0, ETA, times, step)
    ref_test = rk4_function_space(k_test, k, y, f0_test, f0, ETA, times, step)
    train = flow.train_outputs(times, f0_train=f0)
    test = flow.test_outputs(times, k_test, f0_train=f0, f0_test=f0_test)
    assert train.shape == (5, N, O) and test.shape == (5, M, O)
    torch.testing.assert_close(train, ref_train, rtol=0, atol=1e-8)
    torch.testing.assert_close(test, ref_test, rtol=0, atol=1e-8)
    # The test outputs at the training points themselves are the training outputs.
    torch.testing.assert_close(flow.test_outputs(times, k, f0_train=f0, f0_test=f0), train, rtol=0, atol=1e-10)


def test_time_shapes_and_single_output_targets():
    k, k_test, y, _, _ = _problem()
    flow = nk.GradientFlow(k, y[:, 0])
    assert flow.train_outputs(1.5).shape == (N,)
    assert flow.test_outputs(1.5, k_test).shape == (M,)
    assert flow.train_outputs(torch.tensor([0.0, 1.5])).shape == (2, N)
    assert flow.train_outputs(torch.tensor(1.5)).shape == (N,)  # 0-D tensor: one time
    assert flow.loss(1.5).shape == () and flow.loss([0.0, 1.5]).shape == (2,)
    # One output column of a multi-output flow is the single-output flow of that column.
    multi = nk.GradientFlow(k, y)
    torch.testing.assert_close(multi.test_outputs(1.5, k_test)[:, 0], flow.test_outputs(1.5, k_test))


def test_t_zero_returns_the_initial_outputs():
    k, k_test, y, f0, f0_test = _problem()
    flow = nk.GradientFlow(k, y)
    torch.testing.assert_close(flow.train_outputs(0.0, f0_train=f0), f0)
    torch.testing.assert_close(flow.test_outputs(0.0, k_test, f0_train=f0, f0_test=f0_test), f0_test)


def test_t_inf_interpolates_and_gives_the_kernel_regression_predictor():
    k, k_test, y, f0, f0_test = _problem()
    assert nk.spectrum.check_positive_definite(k)
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    torch.testing.assert_close(flow.train_outputs(math.inf), y, rtol=0, atol=1e-10)
    torch.testing.assert_close(flow.train_outputs(math.inf, f0_train=f0), y, rtol=0, atol=1e-10)
    expected = f0_test - k_test @ torch.linalg.solve(k, f0 - y)  # Lee et al. 2019 eq. (10) at t = inf
    torch.testing.assert_close(flow.test_outputs(math.inf, k_test, f0_train=f0, f0_test=f0_test), expected,
                               rtol=1e-9, atol=1e-9)
    assert float(flow.loss(math.inf)) == 0.0
    # A very long finite time reaches the same limit.
    long_time = 60 * N / (ETA * float(flow.eigenvalues[-1]))  # e^{-60} of the slowest component remains
    torch.testing.assert_close(flow.test_outputs(long_time, k_test), flow.test_outputs(math.inf, k_test),
                               rtol=1e-9, atol=1e-9)


def test_diag_reg_adds_a_multiple_of_the_mean_diagonal():
    k, k_test, y, f0, _ = _problem()
    reg = 0.05
    flow = nk.GradientFlow(k, y, diag_reg=reg, learning_rate=ETA)
    absolute = reg * float(torch.diagonal(k).mean())
    assert flow.regularization == pytest.approx(absolute)
    explicit = nk.GradientFlow(k + absolute * torch.eye(N, dtype=DTYPE), y, learning_rate=ETA)
    times = torch.tensor([0.5, 4.0, math.inf], dtype=DTYPE)
    torch.testing.assert_close(flow.train_outputs(times, f0), explicit.train_outputs(times, f0))
    torch.testing.assert_close(flow.test_outputs(times, k_test, f0), explicit.test_outputs(times, k_test, f0))
    # ridge regression at t = inf: Θ(x*, X)(Θ + λI)⁻¹ y
    ridge_solve = torch.linalg.solve(k + absolute * torch.eye(N, dtype=DTYPE), y)
    torch.testing.assert_close(flow.test_outputs(math.inf, k_test), k_test @ ridge_solve, rtol=1e-9, atol=1e-9)
    # train_outputs follow the regularised ODE, which still drives its own residual to zero; the ridge fit on the
    # training points is test_outputs with the unregularised Θ(X, X), and it does not interpolate.
    torch.testing.assert_close(flow.train_outputs(math.inf), y, rtol=0, atol=1e-10)
    ridge_fit = flow.test_outputs(math.inf, k)
    torch.testing.assert_close(ridge_fit, k @ ridge_solve, rtol=1e-9, atol=1e-9)
    assert float((ridge_fit - y).abs().max()) > 1e-3


def test_singular_kernel_is_fine_at_finite_times_and_refused_at_inf():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N + M, 2, generator=g, dtype=DTYPE)
    k_all = nk.Dense(1).kernel(x).ntk  # linear kernel x·x'/2 of rank 2 < N: singular
    k, k_test = k_all[:N, :N], k_all[N:, :N]
    y = torch.randn(N, 1, generator=g, dtype=DTYPE)
    report = nk.spectrum.check_positive_definite(k)
    assert not report and report.n_zero == N - 2
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    times = torch.tensor([1.0, 10.0], dtype=DTYPE)
    step = 0.02 * N / (ETA * float(flow.eigenvalues[0]))
    zeros_train, zeros_test = torch.zeros(N, 1, dtype=DTYPE), torch.zeros(M, 1, dtype=DTYPE)
    torch.testing.assert_close(flow.test_outputs(times, k_test),
                               rk4_function_space(k_test, k, y, zeros_test, zeros_train, ETA, times, step),
                               rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match=r"t = inf needs a positive definite.*pass diag_reg > 0"):
        flow.train_outputs(math.inf)
    regularised = nk.GradientFlow(k, y, learning_rate=ETA, diag_reg=1e-3)
    assert torch.isfinite(regularised.test_outputs(math.inf, k_test)).all()


def test_max_learning_rate_is_the_discrete_stability_bound():
    k, _, y, _, _ = _problem()
    flow = nk.GradientFlow(k, y)
    bound = flow.max_learning_rate()
    assert bound == pytest.approx(2 * N / float(torch.linalg.eigvalsh(k)[-1]))

    def residual_after_gd(eta, steps=400):
        f = torch.zeros(N, O, dtype=DTYPE)
        for _ in range(steps):
            f = f - (eta / N) * k @ (f - y)
        return float((f - y).norm())

    start = float(y.norm())
    # Just below the bound the top component shrinks by |1 - 0.98·2| = 0.96 per step; just above it grows by
    # 1.02 per step, i.e. by 1.02^400 ≈ 2.8e3 over 400 steps.
    assert residual_after_gd(0.98 * bound) < start
    assert residual_after_gd(1.02 * bound) > 100 * start


def test_loss_equals_half_mean_squared_residual():
    k, _, y, f0, _ = _problem()
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    times = torch.tensor([0.0, 1.0, 7.0], dtype=DTYPE)
    residual = flow.train_outputs(times, f0) - y
    expected = 0.5 * residual.pow(2).sum((1, 2)) / N
    torch.testing.assert_close(flow.loss(times, f0), expected)


def test_residual_decays_fastest_along_the_top_principal_components():
    k, _, y, f0, _ = _problem()
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    t = 5.0
    components = flow.residual_components(t, f0)
    # the components are the coordinates of the residual on the eigenvectors
    torch.testing.assert_close(components, nk.spectrum.project(k, flow.train_outputs(t, f0) - y))
    decay = flow.decay_factors(t)
    torch.testing.assert_close(components, decay[:, None] * flow.residual_components(0.0, f0))
    torch.testing.assert_close(decay, torch.exp(-ETA * flow.eigenvalues * t / N))
    assert bool((decay[1:] >= decay[:-1]).all())  # descending λ: the first components decay fastest
    assert float(decay[0]) < 0.5 * float(decay[-1])  # and here substantially so (λ spread of this kernel)
    assert flow.decay_factors(torch.tensor([1.0, 2.0])).shape == (2, N)


def test_dtypes_devices_and_numpy_inputs():
    k, k_test, y, _, _ = _problem()
    flow32 = nk.GradientFlow(k.float(), y.float())
    out32 = flow32.test_outputs(2.0, k_test.float())
    assert out32.dtype == torch.float32 and out32.device == k.device
    flow64 = nk.GradientFlow(k, y)
    assert flow64.train_outputs(2.0).dtype == torch.float64
    # float32 in: computed in float64 internally, so only the kernel's own rounding (~1e-7 relative) remains
    torch.testing.assert_close(out32.double(), flow64.test_outputs(2.0, k_test), rtol=1e-5, atol=1e-5)
    from_numpy = nk.GradientFlow(k.numpy(), y.numpy()).test_outputs(2.0, k_test.numpy())
    torch.testing.assert_close(from_numpy, flow64.test_outputs(2.0, k_test))
    assert nk.GradientFlow(k, y).train_outputs(np.array([1.0, 2.0])).shape == (2, N, O)
