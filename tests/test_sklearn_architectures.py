"""ntkit.sklearn with any architecture: conv kernels inside scikit-learn estimators, pipelines and grid searches."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import check_estimator

import ntkit as nk
from ntkit.sklearn import NNGP, NTK, NTKClassifier, NTKRegressor

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch/BLAS thread

CNTK = nk.Serial(nk.Conv2d(8, 3, b_std=0.1), nk.ReLU(), nk.Conv2d(8, 3), nk.ReLU(), nk.GlobalAvgPool(),
                 nk.Dense(1, b_std=0.1))
CNN_GP = nk.cnn(2, readout="flatten", b_std=0.1)


def _digits(n_train=120, n_test=60):
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def test_classifier_with_a_conv_architecture_is_kernel_regression_on_its_kernel():
    x, y, x_test, y_test = _digits()
    clf = NTKClassifier(architecture=CNTK, input_shape=(1, 8, 8), diag_reg=1e-3).fit(x, y)
    images = lambda a: torch.from_numpy(a).reshape(-1, 1, 8, 8)  # noqa: E731
    k_train = CNTK.kernel(images(x)).ntk
    k_test = CNTK.kernel(images(x_test), images(x)).ntk
    targets = torch.from_numpy(np.eye(10)[y] - 0.1)
    reg = 1e-3 * k_train.diagonal().mean()
    scores = k_test @ torch.linalg.solve(k_train + reg * torch.eye(len(x), dtype=k_train.dtype), targets)
    np.testing.assert_allclose(clf.decision_function(x_test), scores.numpy(), rtol=1e-8, atol=1e-10)
    assert clf.score(x_test, y_test) > 0.8  # 120 digits: far above chance (0.1); a reshape bug would not be


def test_regressor_gridsearch_over_architectures_in_a_pipeline():
    x, y, x_test, _ = _digits(80, 20)
    pipe = make_pipeline(FunctionTransformer(lambda a: a - 0.5),
                         NTKRegressor(input_shape=(1, 8, 8), architecture=CNN_GP))
    search = GridSearchCV(pipe, {"ntkregressor__architecture": [CNN_GP, CNTK],
                                 "ntkregressor__kernel": ["ntk", "nngp"]}, cv=2).fit(x, (y == 3).astype(float))
    assert search.best_params_["ntkregressor__architecture"] in (CNN_GP, CNTK)
    assert search.predict(x_test).shape == (20,)


def test_estimators_with_an_architecture_pass_sklearns_checks():
    """clone/get_params/set_params and every estimator check with an architecture parameter (flat inputs)."""
    check_estimator(NTKRegressor(architecture=nk.mlp(1, 4, b_std=0.1, activation="erf")))
    cloned = clone(NTKClassifier(architecture=nk.myrtle(5), input_shape=(3, 32, 32)))
    assert repr(cloned.architecture) == repr(nk.myrtle(5))


def test_gp_kernel_with_an_architecture_has_no_free_hyperparameters():
    x, y, x_test, _ = _digits(60, 10)
    kernel = NTK(architecture=CNTK, input_shape=(1, 8, 8))
    assert kernel.n_dims == 0
    images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
    np.testing.assert_allclose(kernel(x), CNTK.kernel(images).ntk.numpy(), rtol=1e-12)
    np.testing.assert_allclose(kernel.diag(x[:5]), np.diag(kernel(x[:5])), rtol=1e-12)
    value, gradient = kernel(x[:5], eval_gradient=True)
    assert gradient.shape == (5, 5, 0)
    gp = GaussianProcessRegressor(NNGP(architecture=CNTK, input_shape=(1, 8, 8)), alpha=1e-3).fit(x, y / 10.0)
    assert gp.predict(x_test).shape == (10,)


def test_bad_architecture_arguments():
    x, y, _, _ = _digits(20, 5)
    with pytest.raises(TypeError, match="NTKRegressor: architecture must be an ntkit architecture"):
        NTKRegressor(architecture=torch.nn.Linear(64, 1)).fit(x, y)
    with pytest.raises(ValueError, match=r"NTKClassifier: X has 64 features but input_shape=\(1, 9, 9\) holds 81"):
        NTKClassifier(architecture=CNTK, input_shape=(1, 9, 9)).fit(x, y)
    with pytest.raises(ValueError, match="NTK: input_shape must be None or a tuple of positive ints"):
        NTK(architecture=CNTK, input_shape=(0, 8, 8))(x)
