"""Bad input to the dynamics functions gets a clear error naming the argument: one test per case."""

import math

import numpy as np
import pytest
import torch

import ntkit as nk

DTYPE = torch.float64
N = 6
X = torch.randn(N, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
K = nk.mlp(1, 16, b_std=0.1).kernel(X).ntk
Y = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE)


# ----- GradientFlow -------------------------------------------------------------------------------------------
def test_targets_that_do_not_match_the_kernel():
    with pytest.raises(ValueError, match=r"y_train has 5 rows but the train-train kernel is 6x6"):
        nk.GradientFlow(K, Y[:5])
    with pytest.raises(ValueError, match=r"y_train must have shape \(6,\) or \(6, O\); got \(6, 2, 2\)"):
        nk.GradientFlow(K, torch.zeros(N, 2, 2, dtype=DTYPE))


def test_kernel_that_is_not_square_or_not_a_matrix():
    with pytest.raises(ValueError, match=r"ntk_train_train must be a square \(N, N\) kernel.*got shape \(6, 5\)"):
        nk.GradientFlow(K[:, :5], Y)
    with pytest.raises(ValueError, match="ntk_train_train must have shape"):
        nk.GradientFlow(K[0], Y)


def test_non_symmetric_kernel():
    bad = K.clone()
    bad[0, 3] += 0.1
    with pytest.raises(ValueError, match=r"ntk_train_train must be symmetric; \|K\[0,3\] - K\[3,0\]\| = 0.1"):
        nk.GradientFlow(bad, Y)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_kernel_and_targets(value):
    bad = K.clone()
    bad[2, 2] = value
    with pytest.raises(ValueError, match=r"ntk_train_train contains 1 non-finite value\(s\).*index \(2, 2\)"):
        nk.GradientFlow(bad, Y)
    y = Y.clone()
    y[1, 0] = value
    with pytest.raises(ValueError, match=r"y_train contains 1 non-finite"):
        nk.GradientFlow(K, y)


@pytest.mark.parametrize("t, message", [(-1.0, "t must be non-negative"),
                                        (torch.tensor([0.0, -2.0]), "t must be non-negative"),
                                        (math.nan, "t contains NaN"),
                                        (torch.zeros(2, 2), "t must be a number or a 1-D tensor"),
                                        ("soon", "t must be a non-negative number"),
                                        (torch.tensor([]), "t is empty")])
def test_bad_times(t, message):
    flow = nk.GradientFlow(K, Y)
    with pytest.raises((ValueError, TypeError), match=message):
        flow.train_outputs(t)


def test_singular_kernel_at_infinite_time_suggests_diag_reg():
    singular = torch.ones(N, N, dtype=DTYPE)  # rank one
    flow = nk.GradientFlow(singular, Y)
    with pytest.raises(ValueError, match=r"t = inf needs a positive definite train-train kernel.*"
                                         r"pass diag_reg > 0 \(e.g. diag_reg=1e-4"):
        flow.test_outputs(math.inf, singular[:2])
    with pytest.raises(ValueError, match="t = inf needs a positive definite"):
        flow.loss(torch.tensor([1.0, math.inf]))
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0], dtype=DTYPE))
    with pytest.raises(ValueError, match=r"smallest eigenvalue is -0.8.*increase diag_reg"):
        with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
            flow = nk.GradientFlow(indefinite, Y, diag_reg=0.2)
        flow.train_outputs(math.inf)


def test_indefinite_kernel_that_blows_up_is_reported_not_returned_as_inf():
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0], dtype=DTYPE))
    with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
        flow = nk.GradientFlow(indefinite, Y)
    assert torch.isfinite(flow.train_outputs(10.0)).all()  # grows like e^{t/N}, still finite
    with pytest.raises(FloatingPointError, match="eigenvalue -1 < 0.*positive semi-definite"):
        flow.train_outputs(1e5)


def test_no_per_component_quantity_comes_back_infinite():
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0], dtype=DTYPE))
    with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
        flow = nk.GradientFlow(indefinite, Y)
    # e^{t/N} overflows float64 beyond t ≈ 709·N = 4254
    for method in (flow.decay_factors, flow.residual_components, flow.dual_coefficients, flow.loss):
        with pytest.raises(FloatingPointError, match="eigenvalue -1 < 0.*positive semi-definite"):
            method(1e5)


def test_overflow_with_a_positive_definite_kernel_blames_the_inputs():
    flow = nk.GradientFlow(K, Y)
    huge = torch.full((N, 2), 1e308, dtype=DTYPE)  # finite, but Vᵀ(f_0 − y) overflows
    with pytest.raises(FloatingPointError, match="too large for float64"):
        flow.train_outputs(1.0, f0_train=huge)


def test_eigendecompositions_that_cannot_fit_are_refused_with_an_estimate(monkeypatch):
    monkeypatch.setattr("ntkit._memory.available_bytes", lambda device="cpu": 1000)
    # four 6 x 6 float64 matrices: 4·8·36 = 1152 bytes
    with pytest.raises(MemoryError, match=r"eigendecomposition of a 6x6 kernel needs about 1\.12 KiB.*fewer points"):
        nk.spectrum.eigh(K)
    with pytest.raises(MemoryError, match="eigendecomposition of a 6x6 kernel.*fewer training points"):
        nk.GradientFlow(K, Y)


def test_bad_test_kernel_and_initial_outputs():
    flow = nk.GradientFlow(K, Y)
    with pytest.raises(ValueError, match=r"ntk_test_train must have shape \(M, 6\).*got \(3, 5\)"):
        flow.test_outputs(1.0, torch.zeros(3, 5, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"f0_train must have shape \(6, 2\); got \(6, 3\)"):
        flow.train_outputs(1.0, f0_train=torch.zeros(N, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"f0_test must have shape \(3, 2\)"):
        flow.test_outputs(1.0, torch.zeros(3, N, dtype=DTYPE), f0_test=torch.zeros(4, 2, dtype=DTYPE))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite positive number; got 0.0"),
    ({"learning_rate": -1}, ValueError, "learning_rate must be a finite positive"),
    ({"learning_rate": math.inf}, ValueError, "learning_rate must be a finite positive"),
    ({"learning_rate": "fast"}, TypeError, "learning_rate must be a positive number"),
    ({"diag_reg": -1e-3}, ValueError, "diag_reg must be a finite non-negative number"),
])
def test_bad_scalars(kwargs, error, message):
    with pytest.raises(error, match=message):
        nk.GradientFlow(K, Y, **kwargs)


def test_integer_kernel_is_refused():
    with pytest.raises(TypeError, match="ntk_train_train has dtype torch.int64; expected a floating dtype"):
        nk.GradientFlow(torch.eye(N, dtype=torch.int64), Y)


# ----- kernel_gradient_descent ---------------------------------------------------------------------------------
def test_kernel_descent_bad_costs():
    with pytest.raises(ValueError, match=r"cost must be one of \['cross_entropy', 'logistic', 'mse'\]"):
        nk.kernel_gradient_descent(K, Y, "hinge", 1.0)
    with pytest.raises(TypeError, match="cost must be a name or a callable"):
        nk.kernel_gradient_descent(K, Y, 3, 1.0)
    with pytest.raises(ValueError, match=r"cost must return the per-point costs c_j as a tensor of shape \(6,\)"):
        nk.kernel_gradient_descent(K, Y, lambda f, y: 0.5 * ((f - y) ** 2).mean(), 1.0)
    with pytest.raises(ValueError, match="needs O >= 2 logits.*use cost='logistic'"):
        nk.kernel_gradient_descent(K, Y[:, :1], "cross_entropy", 1.0)


def test_kernel_descent_bad_targets_and_times():
    with pytest.raises(TypeError, match="integer y_train is only understood as class labels"):
        nk.kernel_gradient_descent(K, torch.arange(N), "mse", 1.0)
    with pytest.raises(ValueError, match=r"class labels in y_train must lie in \[0, 2\); got \[0, 5\]"):
        nk.kernel_gradient_descent(K, torch.arange(N), "cross_entropy", 1.0, f0_train=torch.zeros(N, 2, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"y_train must have shape \(6,\) or \(6, O\)"):
        nk.kernel_gradient_descent(K, Y[:4], "mse", 1.0)
    with pytest.raises(ValueError, match=r"times must be finite \(the ODE is integrated.*use nk.GradientFlow\)"):
        nk.kernel_gradient_descent(K, Y, "mse", math.inf)
    with pytest.raises(ValueError, match="times must be non-negative"):
        nk.kernel_gradient_descent(K, Y, "mse", [1.0, -1.0])
    with pytest.raises(ValueError, match=r"kernel_test_train must have shape \(M, 6\)"):
        nk.kernel_gradient_descent(K, Y, "mse", 1.0, kernel_test_train=torch.zeros(2, 3, dtype=DTYPE))
    with pytest.raises(TypeError, match="times must hold real numbers"):
        nk.kernel_gradient_descent(K, Y, "mse", ["soon"])


@pytest.mark.parametrize("name, value", [("rtol", -1.0), ("rtol", 0.0), ("atol", -1e-12), ("atol", math.nan),
                                         ("rtol", math.inf)])
def test_kernel_descent_tolerances_must_be_positive(name, value):
    """Issue 13: scipy only warned about rtol=-1 (and substituted its own floor); it is refused, naming it."""
    with pytest.raises(ValueError, match=f"{name} must be a finite positive number"):
        nk.kernel_gradient_descent(K, Y, "mse", 1.0, **{name: value})
    with pytest.raises(TypeError, match="rtol must be a positive number"):
        nk.kernel_gradient_descent(K, Y, "mse", 1.0, rtol="tight")


def test_kernel_descent_checks_the_costs_even_when_nothing_is_integrated():
    # At t = 0 only, the solver never evaluates the cost's gradient: the reported costs are still checked.
    with pytest.raises(ValueError, match=r"cost must return the per-point costs c_j as a tensor of shape \(6,\)"):
        nk.kernel_gradient_descent(K, Y, lambda f, y: 0.5 * ((f - y) ** 2).mean(), 0.0)
    with pytest.raises(FloatingPointError, match="costs contains 1 non-finite"):
        nk.kernel_gradient_descent(K, Y, lambda f, y: torch.log(f[:, 0] - 1.0), 0.0)  # log(−1) at f_0 = 0


# ----- ensemble_prediction --------------------------------------------------------------------------------------
def test_ensemble_bad_arguments():
    arch = nk.mlp(1, 16, b_std=0.1)
    with pytest.raises(TypeError, match="arch must be an ntkit architecture"):
        nk.ensemble_prediction(arch.build(3), X, Y, X, 1.0)
    with pytest.raises(ValueError, match=r"kernel must be one of \('ntk', 'nngp'\)"):
        nk.ensemble_prediction(arch, X, Y, X, 1.0, kernel="gp")
    # Issue 13: the errors name ensemble_prediction's own parameters, not arch.kernel's x1/x2.
    with pytest.raises(ValueError, match=r"x_train and x_test must have the same feature shape; got x_train \(6, 3\) "
                                         r"and x_test \(2, 4\)"):
        nk.ensemble_prediction(arch, X, Y, torch.zeros(2, 4, dtype=DTYPE), 1.0)
    with pytest.raises(ValueError, match="x_train has 3 features but the architecture expects in_features=4"):
        nk.ensemble_prediction(nk.mlp(1, 16, in_features=4), X, Y, X, 1.0)
    with pytest.raises(ValueError, match="x_test is on the meta device"):
        nk.ensemble_prediction(arch, X, Y, X.to("meta"), 1.0)
    with pytest.raises(TypeError, match=r"x_test has dtype torch.bfloat16.*x_test.float\(\)"):
        nk.ensemble_prediction(arch, X, Y, X.bfloat16(), 1.0)
    with pytest.raises(ValueError, match="y_train has 5 rows"):
        nk.ensemble_prediction(arch, X, Y[:5], X, 1.0)
    duplicated = torch.cat([X[:3], X[:3]])  # repeated points: a singular kernel
    with pytest.raises(ValueError, match="pass diag_reg > 0"):
        nk.ensemble_prediction(arch, duplicated, Y, X, math.inf)
    assert nk.ensemble_prediction(arch, duplicated, Y, X, math.inf, diag_reg=1e-3).mean.shape == (N, 2)


# ----- train ----------------------------------------------------------------------------------------------------
def test_train_bad_arguments():
    net = nk.mlp(1, 8).build(3, seed=0, dtype=DTYPE)
    with pytest.raises(ValueError, match="steps must be a positive integer; got 0"):
        nk.train(net, X, Y[:, 0], steps=0, learning_rate=1.0)
    with pytest.raises(TypeError, match="steps must be a positive integer"):
        nk.train(net, X, Y[:, 0], steps=2.5, learning_rate=1.0)
    with pytest.raises(ValueError, match="learning_rate must be a finite positive"):
        nk.train(net, X, Y[:, 0], steps=2, learning_rate=-0.1)
    with pytest.raises(ValueError, match=r"x is torch.float32 on cpu but the model's parameters are torch.float64"):
        nk.train(net, X.float(), Y[:, 0], steps=2, learning_rate=1.0)
    with pytest.raises(ValueError, match=r"y has 2 output column\(s\) but model\(x\) returns 1"):
        nk.train(net, X, Y, steps=2, learning_rate=1.0)
    with pytest.raises(ValueError, match="record_every must be a positive integer"):
        nk.train(net, X, Y[:, 0], steps=2, learning_rate=1.0, record_every=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nk.train(nk.mlp(1, 8), X, Y[:, 0], steps=2, learning_rate=1.0)
    with pytest.raises(ValueError, match=r"y must have shape \(6,\) or \(6, O\) to match the 6 points of x"):
        nk.train(net, X, Y[:4, 0], steps=2, learning_rate=1.0)


def test_train_refuses_the_relative_change_of_a_zero_ntk():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every ReLU is off on X: the outputs and all their gradients vanish
    with pytest.raises(ValueError, match="empirical NTK at initialisation is zero.*pass record_ntk=False"):
        nk.train(net, X, Y[:, 0], steps=2, learning_rate=1.0, record_ntk=True, progress=False)


def test_train_with_a_learning_rate_above_the_stability_bound_raises():
    net = nk.mlp(0, 1).build(3, seed=0, dtype=DTYPE)  # a linear model: it diverges surely
    bound = nk.GradientFlow(nk.mlp(0, 1).kernel(X).ntk, Y[:, 0]).max_learning_rate()
    with pytest.raises(FloatingPointError, match="the learning rate .* is too large.*max_learning_rate"):
        nk.train(net, X, Y[:, 0], steps=5000, learning_rate=3 * bound, progress=False)


def test_numpy_inputs_are_accepted_at_the_edges():
    flow = nk.GradientFlow(K.numpy(), np.asarray(Y))
    assert isinstance(flow.train_outputs(1.0), torch.Tensor)
