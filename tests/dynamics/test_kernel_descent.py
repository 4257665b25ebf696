"""kernel_gradient_descent: equals GradientFlow for MSE, and for other costs equals parameter-space gradient flow
of a linear model whose NTK is the kernel (integrated independently with RK4 in parameter space).

Convention under test: C = (1/N) Σ_j c(f(x_j), y_j), ∂_t f(x) = −(η/N) Σ_j K(x, x_j) ∂c/∂f(x_j).
"""

import pytest
import torch

import ntkit as nk
from dynamics_reference import rk4
from ntkit.dynamics.kernel_descent import COSTS

DTYPE = torch.float64
N, M, O, P = 10, 4, 3, 6
ETA = 0.8


def _kernel_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N + M, 3, generator=g, dtype=DTYPE)
    k = nk.mlp(1, 32, b_std=0.3, activation="erf").kernel(x).ntk
    y = torch.randn(N, O, generator=g, dtype=DTYPE)
    f0 = 0.3 * torch.randn(N + M, O, generator=g, dtype=DTYPE)
    return k[:N, :N], k[N:, :N], y, f0[:N], f0[N:]


def test_mse_agrees_with_gradient_flow():
    k, k_test, y, f0, f0_test = _kernel_problem()
    times = torch.tensor([3.0, 0.0, 0.5, 40.0, 10.0], dtype=DTYPE)  # unsorted on purpose
    result = nk.kernel_gradient_descent(k, y, "mse", times, kernel_test_train=k_test, f0_train=f0,
                                        f0_test=f0_test, learning_rate=ETA)
    flow = nk.GradientFlow(k, y, learning_rate=ETA)
    # solve_ivp with rtol 1e-10 / atol 1e-12 on O(1) states: agreement to ~1e-9 expected, 1e-8 asserted
    torch.testing.assert_close(result.train_outputs, flow.train_outputs(times, f0), rtol=0, atol=1e-8)
    torch.testing.assert_close(result.test_outputs, flow.test_outputs(times, k_test, f0, f0_test), rtol=0,
                               atol=1e-8)
    torch.testing.assert_close(result.costs, flow.loss(times, f0), rtol=0, atol=1e-8)
    torch.testing.assert_close(result.times, times)
    assert result.n_evaluations > 0


def test_callable_cost_matches_the_built_in_one_and_single_output_shapes():
    k, k_test, y, _, _ = _kernel_problem()
    y1 = y[:, 0]

    def half_squared_error(f, target):  # f is (N, 1), target is y as given: (N,)
        return 0.5 * (f[:, 0] - target) ** 2

    built_in = nk.kernel_gradient_descent(k, y1, "mse", 2.0, kernel_test_train=k_test, learning_rate=ETA)
    custom = nk.kernel_gradient_descent(k, y1, half_squared_error, 2.0, kernel_test_train=k_test,
                                        learning_rate=ETA)
    assert built_in.train_outputs.shape == (N,) and built_in.test_outputs.shape == (M,)
    assert built_in.costs.shape == ()
    torch.testing.assert_close(custom.train_outputs, built_in.train_outputs, rtol=0, atol=1e-10)
    torch.testing.assert_close(custom.test_outputs, built_in.test_outputs, rtol=0, atol=1e-10)


def _parameter_space_reference(features, features_test, y, cost_fn, theta0, times, step):
    """RK4 on dθ/dt = −η ∇_θ C(Φθ), C = mean_j c(Φ_j θ, y_j): the linear model with NTK K = ΦΦᵀ."""

    def rhs(theta):
        theta = theta.detach().requires_grad_(True)
        cost = cost_fn(features @ theta, y).mean()
        (grad,) = torch.autograd.grad(cost, theta)
        return -ETA * grad

    thetas = rk4(rhs, theta0.clone(), times, step)
    return torch.stack([features @ t for t in thetas]), torch.stack([features_test @ t for t in thetas])


@pytest.mark.parametrize("cost, outputs", [("cross_entropy", O), ("logistic", 1)])
def test_other_costs_follow_parameter_space_gradient_flow_of_a_linear_model(cost, outputs):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(N + M, P, generator=g, dtype=DTYPE)
    phi, phi_test = features[:N], features[N:]
    kernel_all = features @ phi.T  # NTK of f = Φθ: ∂f/∂θ = Φ
    if cost == "cross_entropy":
        y = torch.nn.functional.one_hot(torch.randint(0, O, (N,), generator=g), O).to(DTYPE)
    else:
        y = torch.randint(0, 2, (N, 1), generator=g).to(DTYPE)
    theta0 = 0.2 * torch.randn(P, outputs, generator=g, dtype=DTYPE)
    times = [0.5, 3.0, 12.0]
    # RK4 step 0.01: error O(h⁴·rate⁵·t), rates ηλ/N <~ 2 here, so ≤ 1e-8 against a 1e-7 tolerance
    ref_train, ref_test = _parameter_space_reference(phi, phi_test, y, COSTS[cost], theta0, times, 0.01)
    result = nk.kernel_gradient_descent(kernel_all[:N], y, cost, torch.tensor(times),
                                        kernel_test_train=kernel_all[N:], f0_train=phi @ theta0,
                                        f0_test=phi_test @ theta0, learning_rate=ETA)
    torch.testing.assert_close(result.train_outputs, ref_train, rtol=0, atol=1e-7)
    torch.testing.assert_close(result.test_outputs, ref_test, rtol=0, atol=1e-7)
    assert bool((result.costs[1:] < result.costs[:-1]).all())  # dC/dt = −(η/N²) gᵀKg < 0 for a PD kernel


def test_cross_entropy_accepts_integer_labels():
    k, _, _, _, _ = _kernel_problem()
    labels = torch.arange(N) % O
    one_hot = torch.nn.functional.one_hot(labels, O).to(DTYPE)
    from_labels = nk.kernel_gradient_descent(k, labels, "cross_entropy", [1.0, 5.0], learning_rate=ETA)
    from_one_hot = nk.kernel_gradient_descent(k, one_hot, "cross_entropy", [1.0, 5.0], learning_rate=ETA)
    assert from_labels.train_outputs.shape == (2, N, O)
    torch.testing.assert_close(from_labels.train_outputs, from_one_hot.train_outputs)
    # the logits of the true class grow: the softmax probability of the label rises over time
    probs = torch.softmax(from_labels.train_outputs, -1)[:, torch.arange(N), labels]
    assert bool((probs[1] > probs[0]).all())
