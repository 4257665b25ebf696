"""ntkit.sklearn.NTK / NNGP: values, exact gradients, sklearn kernel algebra, GP hyperparameter fitting, errors."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

import ntkit as nk
from ntkit.sklearn import NNGP, NTK

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch/BLAS thread

KERNELS = {"ntk": NTK, "nngp": NNGP}


def awkward_inputs(n=14, d=3, seed=0):
    """Random rows plus a duplicate, a scaled copy, a negated copy and the zero vector: the rows where ρ = ±1 or
    q = 0 at some layer, which is where naive autodiff through arccos / sqrt(1 − ρ²) breaks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[1] = x[0]
    x[2] = 2.5 * x[0]
    x[3] = -x[4]
    x[5] = 0.0
    return x


def central_differences(kernel, x, step=1e-5):
    """∂k/∂theta by central differences in log space. Truncation error is O(step²) ≈ 1e-10 relative and rounding
    O(ulp / step) ≈ 1e-11 relative, so agreement to 1e-6 relative leaves a wide margin and still catches any
    wrong factor or missing term."""
    columns = []
    for i in range(len(kernel.theta)):
        up, down = kernel.theta.copy(), kernel.theta.copy()
        up[i] += step
        down[i] -= step
        columns.append((kernel.clone_with_theta(up)(x) - kernel.clone_with_theta(down)(x)) / (2 * step))
    return np.stack(columns, axis=-1)


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
@pytest.mark.parametrize("activation,hidden_layers", [("relu", 3), ("erf", 2), ("tanh", 1), ("gelu", 0)])
def test_values_equal_arch_kernel(kind, activation, hidden_layers):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    kernel = KERNELS[kind](hidden_layers=hidden_layers, activation=activation, w_std=1.4, b_std=0.3)
    arch = nk.mlp(hidden_layers, 512, activation=activation, w_std=1.4, b_std=0.3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    expected_xx = arch.kernel(xt, get=kind)[kind].numpy()
    expected_xy = arch.kernel(xt, yt, get=kind)[kind].numpy()
    np.testing.assert_array_equal(kernel(x), expected_xx)
    np.testing.assert_array_equal(kernel(x, y), expected_xy)
    value, _ = kernel(x, eval_gradient=True)  # the forward-mode recursion: same formulas, same rounding order
    np.testing.assert_allclose(value, expected_xx, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(kernel.diag(x), np.diag(expected_xx), rtol=1e-13, atol=1e-13)
    assert kernel(x).dtype == np.float64


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "erf", "gelu", "sin", "identity", "tanh"])
def test_gradient_matches_finite_differences(kind, activation):
    x = awkward_inputs()
    kernel = KERNELS[kind](hidden_layers=2, activation=activation, w_std=1.2, b_std=0.4)
    value, gradient = kernel(x, eval_gradient=True)
    assert gradient.shape == (len(x), len(x), 2)
    assert np.isfinite(gradient).all()
    expected = central_differences(kernel, x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_array_equal(gradient, gradient.transpose(1, 0, 2))  # GP code needs exact symmetry


def test_theta_order_and_fixed_bounds():
    kernel = NTK(w_std=2.0, b_std=0.5)
    # sklearn orders hyperparameters alphabetically: b_std, then w_std
    assert [h.name for h in kernel.hyperparameters] == ["b_std", "w_std"]
    np.testing.assert_allclose(kernel.theta, np.log([0.5, 2.0]))
    x = awkward_inputs()
    _, both = kernel(x, eval_gradient=True)
    fixed_b = NTK(w_std=2.0, b_std=0.5, b_std_bounds="fixed")
    _, only_w = fixed_b(x, eval_gradient=True)
    assert only_w.shape == (len(x), len(x), 1)
    np.testing.assert_array_equal(only_w[..., 0], both[..., 1])
    no_bias = NNGP(b_std=0.0, b_std_bounds="fixed")  # b_std = 0 is allowed once it is not optimised
    _, gradient = no_bias(x, eval_gradient=True)
    assert gradient.shape[-1] == 1 and np.isfinite(gradient).all()
    np.testing.assert_allclose(gradient, central_differences(no_bias, x), rtol=1e-6, atol=1e-9)


def test_log_w_derivative_of_the_nngp_is_exact_for_relu():
    # Closed form: ReLU is positively homogeneous, so with b_std = 0 every Dense scales the NNGP by w² and every
    # ReLU keeps its scale: Σ ∝ w^(2(L+1)), hence ∂Σ/∂log w = 2(L+1)·Σ exactly.
    x = awkward_inputs()
    kernel = NNGP(hidden_layers=3, w_std=1.7, b_std=0.0, b_std_bounds="fixed")
    value, gradient = kernel(x, eval_gradient=True)
    np.testing.assert_allclose(gradient[..., 0], 8.0 * value, rtol=1e-12, atol=1e-14)


def test_sklearn_kernel_protocol():
    kernel = NTK(hidden_layers=2, activation="erf", w_std=1.5, b_std=0.2)
    params = kernel.get_params()
    assert params == {"hidden_layers": 2, "activation": "erf", "w_std": 1.5, "b_std": 0.2,
                      "w_std_bounds": (1e-2, 1e2), "b_std_bounds": (1e-5, 1e2), "architecture": None,
                      "input_shape": None}
    copy = clone(kernel)
    assert copy == kernel and copy is not kernel
    moved = kernel.clone_with_theta(np.log([0.3, 0.9]))
    assert (moved.b_std, moved.w_std) == pytest.approx((0.3, 0.9))
    np.testing.assert_allclose(moved.bounds, np.log([[1e-5, 1e2], [1e-2, 1e2]]))
    kernel.set_params(hidden_layers=1)
    assert kernel.hidden_layers == 1
    assert not kernel.is_stationary()
    assert kernel.requires_vector_input
    assert "NTK(hidden_layers=1" in repr(kernel)


def test_sums_and_products_with_other_kernels():
    x = awkward_inputs()
    ntk, nngp = NTK(hidden_layers=1), NNGP(hidden_layers=2)
    combined = ConstantKernel(2.0) * ntk + nngp * RBF(1.5) + WhiteKernel(0.1)
    value, gradient = combined(x, eval_gradient=True)
    expected = 2.0 * ntk(x) + nngp(x) * RBF(1.5)(x) + 0.1 * np.eye(len(x))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert gradient.shape == (len(x), len(x), len(combined.theta)) and len(combined.theta) == 7
    np.testing.assert_allclose(gradient, central_differences(combined, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(combined.diag(x), np.diag(value), rtol=1e-12)


def test_gp_hyperparameter_optimisation_improves_marginal_likelihood():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(40, 2))
    y = np.sin(2 * x[:, 0]) * x[:, 1] + 0.05 * rng.normal(size=40)
    kernel = NNGP(hidden_layers=2, w_std=1.0, b_std=0.1) + WhiteKernel(0.01)
    start = GaussianProcessRegressor(kernel, optimizer=None).fit(x, y).log_marginal_likelihood_value_
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(x, y)
    fitted = gp.kernel_.k1
    assert gp.log_marginal_likelihood_value_ > start + 10.0  # from the default start, a large gain (in nats)
    assert (fitted.w_std, fitted.b_std) != pytest.approx((1.0, 0.1), rel=1e-3)
    assert gp.score(x, y) > 0.99  # the noise is 5% of the signal's scale
    # the optimum is a stationary point: sklearn's own gradient (from ours) is small there
    _, grad = gp.log_marginal_likelihood(gp.kernel_.theta, eval_gradient=True)
    interior = [not np.isclose(t, b).any() for t, b in zip(gp.kernel_.theta, gp.kernel_.bounds)]
    assert np.abs(grad[interior]).max() < 1e-2 * (1 + abs(gp.log_marginal_likelihood_value_))


@pytest.mark.parametrize("bad_params,message", [
    ({"activation": "swish"}, "activation must be one of"),
    ({"hidden_layers": -1}, "hidden_layers must be a non-negative integer"),
    ({"w_std": float("nan")}, "w_std must be a finite non-negative number"),
    ({"b_std": 0.0}, "b_std must be > 0 while it is a free hyperparameter"),
])
def test_bad_parameters_are_named(bad_params, message):
    with pytest.raises(ValueError, match=message):
        NTK(**bad_params)(np.ones((3, 2)))


def test_bad_inputs():
    kernel = NNGP()
    with pytest.raises(ValueError, match="NaN or infinity"):
        kernel(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D array"):
        kernel(np.ones(3))
    with pytest.raises(ValueError, match="Gradient can only be evaluated when Y is None"):
        kernel(np.ones((2, 2)), np.ones((2, 2)), eval_gradient=True)
    with pytest.raises(ValueError, match="X has 2 features but Y has 3"):
        kernel(np.ones((2, 2)), np.ones((2, 3)))
    # Issue 13: complex data was cast to float64 with only numpy's ComplexWarning, dropping the imaginary part.
    for call in (lambda: kernel(np.ones((2, 2)) + 1j), lambda: kernel(np.ones((2, 2)), np.ones((2, 2)) + 1j),
                 lambda: kernel(np.ones((2, 2)) + 1j, eval_gradient=True), lambda: kernel.diag(np.ones((2, 2)) + 1j)):
        with pytest.raises(ValueError, match=r"NNGP: [XY] has complex dtype complex128. Complex data not "
                                             "supported: the NTK and NNGP are defined for real inputs"):
            call()
    # float16 is converted to float64, as scikit-learn converts every dtype: the same values, the same kernel.
    half = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float16)
    np.testing.assert_array_equal(kernel(half), kernel(half.astype(np.float64)))
