"""nk.linearize: f_lin(x; θ) = f(x; θ0) + J(x)(θ − θ0), and its training equals GradientFlow with the NTK at θ0.

The empirical NTK reference is an explicit Jacobian contraction (tests/dynamics/dynamics_reference.py).
"""

import pytest
import torch

import ntkit as nk
from dynamics_reference import empirical_ntk_or_reference, jacobian_matrix

ntk_at_init = empirical_ntk_or_reference()  # nk.empirical_ntk once it exists, else a Jacobian contraction

# torch loads its forward-mode decompositions through the deprecated torch.jit.script on the first jvp call
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
DTYPE = torch.float64
N, M, D = 6, 3, 3


def _setup(out_features=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N + M, D, generator=g, dtype=DTYPE)
    y = torch.randn(N, out_features, generator=g, dtype=DTYPE)
    net = nk.mlp(2, 48, out_features=out_features, activation="tanh", b_std=0.3).build(D, seed=seed, dtype=DTYPE)
    return net, x[:N], x[N:], y


def test_linearised_model_is_the_first_order_taylor_expansion():
    net, x, _, _ = _setup(out_features=2)
    lin = nk.linearize(net)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=0)
    jac = jacobian_matrix(net, x)  # (N, O, P) in named_parameters order
    names = [name for name, _ in net.named_parameters()]
    g = torch.Generator().manual_seed(1)
    delta = {name: 0.1 * torch.randn(p.shape, generator=g, dtype=DTYPE) for name, p in net.named_parameters()}
    with torch.no_grad():
        for name in names:
            lin.theta[name].add_(delta[name])
    flat_delta = torch.cat([delta[name].reshape(-1) for name in names])
    expected = net(x) + jac @ flat_delta
    torch.testing.assert_close(lin(x), expected, rtol=1e-10, atol=1e-10)
    # the original network is untouched, and θ0 is kept
    for name, p in net.named_parameters():
        torch.testing.assert_close(lin.theta0[name], p.detach(), rtol=0, atol=0)


def test_trainable_parameters_are_theta_only_and_move_with_the_module():
    net, x, _, _ = _setup()
    lin = nk.linearize(net)
    assert sum(p.numel() for p in lin.parameters()) == sum(p.numel() for p in net.parameters())
    assert any(key.startswith("base.") for key in lin.state_dict())  # θ0 is saved
    lin32 = lin.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in lin32.parameters())
    assert all(t.dtype == torch.float32 for t in lin32.theta0.values())
    assert lin32(x.float()).dtype == torch.float32
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nk.linearize(nk.mlp(1, 8))


def test_sgd_training_of_the_linearised_model_equals_gradient_flow_with_the_initial_ntk():
    net, x, x_test, y = _setup()
    lin = nk.linearize(net)
    theta0_ntk = ntk_at_init(net, torch.cat([x, x_test]), output="trace")
    k, k_test = theta0_ntk[:N, :N], theta0_ntk[N:, :N]
    flow = nk.GradientFlow(k, y, learning_rate=1.0)
    eta = 0.05 * flow.max_learning_rate()  # x = ηλ_max/N = 0.1 per step
    flow = nk.GradientFlow(k, y, learning_rate=eta)
    with torch.no_grad():
        f0, f0_test = net(x), net(x_test)
    optimiser = torch.optim.SGD(lin.parameters(), lr=eta)
    steps = 60
    for _ in range(steps):
        optimiser.zero_grad()
        loss = 0.5 * (lin(x) - y).pow(2).sum(1).mean()  # C = ½ E_{p_in}‖f − y‖²
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        trained, trained_test = lin(x), lin(x_test)
    # A linear model's GD is exactly the discrete kernel recursion f ← f − (η/N) Θ0 (f − y).
    f, f_test = f0.clone(), f0_test.clone()
    for _ in range(steps):
        f, f_test = f - (eta / N) * k @ (f - y), f_test - (eta / N) * k_test @ (f - y)
    torch.testing.assert_close(trained, f, rtol=0, atol=1e-10)
    torch.testing.assert_close(trained_test, f_test, rtol=0, atol=1e-10)
    # And it follows GradientFlow at t = steps up to the time discretisation: per eigencomponent
    # |(1 − x)^k − e^{−kx}| <= k x²/2 for x = ηλ/N <= 1, so ‖error‖ <= (k x_max²/2) ‖f0 − y‖ on the train set.
    x_max = eta * float(flow.eigenvalues[0]) / N
    bound = steps * x_max ** 2 / 2 * float((f0 - y).norm())
    error = float((trained - flow.train_outputs(float(steps), f0_train=f0)).norm())
    assert error <= bound
    assert error < 0.05 * float((trained - f0).norm())  # and the bound is tight enough to mean something
    torch.testing.assert_close(trained_test, flow.test_outputs(float(steps), k_test, f0, f0_test), rtol=0,
                               atol=bound * float(k_test.norm() / k.norm()) * 2)


def test_any_optimiser_and_nk_train_work_on_the_linearised_model():
    net, x, _, y = _setup()
    lin = nk.linearize(net)
    optimiser = torch.optim.Adam(lin.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = 0.5 * (lin(x) - y).pow(2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # nk.train on a fresh linearisation: the same recursion as the hand-written SGD loop above
    lin2 = nk.linearize(net)
    k = ntk_at_init(net, x, output="trace")
    result = nk.train(lin2, x, y, steps=20, learning_rate=1.0, progress=False)
    with torch.no_grad():
        f = net(x)
    for _ in range(20):
        f = f - (1.0 / N) * k @ (f - y)
    torch.testing.assert_close(result.train_outputs[-1], f, rtol=0, atol=1e-10)


def test_frozen_parameters_stay_frozen_and_out_of_the_linearised_ntk():
    net, x, _, y = _setup()
    for p in net[0].parameters():  # freeze the first layer: nk.train and the empirical NTK leave it out
        p.requires_grad_(False)
    lin = nk.linearize(net)
    assert [p.requires_grad for p in lin.parameters()] == [p.requires_grad for p in net.parameters()]
    k = ntk_at_init(net, x, output="trace")  # over the trainable parameters only
    result = nk.train(lin, x, y, steps=20, learning_rate=1.0, progress=False)
    for name, p in net.named_parameters():
        if not p.requires_grad:
            torch.testing.assert_close(lin.theta[name].detach(), p.detach(), rtol=0, atol=0)
    with torch.no_grad():
        f = net(x)
    for _ in range(20):
        f = f - (1.0 / N) * k @ (f - y)
    torch.testing.assert_close(result.train_outputs[-1], f, rtol=0, atol=1e-10)


@pytest.mark.parametrize("factor, diverges", [(0.9, False), (1.1, True)])
def test_above_max_learning_rate_the_linear_model_diverges(factor, diverges):
    """GD on the linearised model multiplies the residual's top-eigenvector component by 1 − ηλ_max/N per step:
    at η = 0.9·max_learning_rate that is −0.8 (it shrinks), at 1.1× it is −1.2 (it grows by 1.2 per step, so
    by 1.2⁴⁰ ≈ 1,500 over 40 steps, far beyond anything the other components could hide)."""
    net, x, _, y = _setup()
    lin = nk.linearize(net)
    k = ntk_at_init(net, x, output="trace")
    eta = factor * nk.GradientFlow(k, y).max_learning_rate()
    optimiser = torch.optim.SGD(lin.parameters(), lr=eta)
    with torch.no_grad():
        start = float((lin(x) - y).norm())
    for _ in range(40):
        optimiser.zero_grad()
        (0.5 * (lin(x) - y).pow(2).sum(1).mean()).backward()
        optimiser.step()
    with torch.no_grad():
        end = float((lin(x) - y).norm())
    assert (end > 100 * start) if diverges else (end < start)
