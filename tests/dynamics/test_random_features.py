"""Random-features approximation (Jacot et al. 2018, §4): K̃ = (1/P) Σ_p f^(p) f^(p)ᵀ → K like P^{-1/2}, and the
linear model F^lin(θ) = P^{-1/2} Σ_p θ_p f^(p) trained by gradient descent is kernel gradient descent with K̃.

All architectures here have one hidden layer, for which the features are exactly unbiased at every P
(E[K̃] = K: the hidden pre-activations are exactly Gaussian), so E‖K̃ − K‖²_F = c/P exactly and the log-log slope
of the RMS error against P is exactly −1/2; no finite-width bias enters.
"""

import math

import pytest
import torch

import ntkit as nk
from dynamics_reference import jacobian_matrix
from ntkit.dynamics import RandomFeatureModel, nngp_features, ntk_features, random_features_kernel

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
DTYPE = torch.float64
N, M, D = 6, 3, 3
ARCH = nk.Serial(nk.Dense(64, w_std=1.3, b_std=0.2), nk.ReLU(), nk.Dense(1, w_std=1.1, b_std=0.3))


def _points():
    g = torch.Generator().manual_seed(5)
    return torch.randn(N + M, D, generator=g, dtype=DTYPE)


def _fit_rms_slope(sizes, squared_errors):
    """Weighted least-squares slope of log RMS error against log P, and its standard error.

    squared_errors[i] holds G independent draws of ‖K̃ − K‖²_F at sizes[i]. By the delta method the standard
    error of log(mean) is std/(√G · mean); the weights are its inverse squares. Slope of log RMS = ½ that of
    log MSE.
    """
    log_p = torch.log(torch.tensor(sizes, dtype=DTYPE))
    log_mse = torch.stack([e.mean().log() for e in squared_errors])
    se = torch.stack([e.std() / (math.sqrt(len(e)) * e.mean()) for e in squared_errors])
    w = 1 / se ** 2
    centre = (w * log_p).sum() / w.sum()
    slope = (w * (log_p - centre) * log_mse).sum() / (w * (log_p - centre) ** 2).sum()
    slope_se = 1 / torch.sqrt((w * (log_p - centre) ** 2).sum())
    return float(slope) / 2, float(slope_se) / 2


def _assert_slope_minus_half(sizes, squared_errors):
    slope, se = _fit_rms_slope(sizes, squared_errors)
    assert se < 0.04, f"slope standard error {se:.3f} too large for the test to discriminate"
    # 4 SE: a correct P^{-1/2} law fails with probability 6e-5; a slope of −0.35 or −0.65 fails.
    assert abs(slope + 0.5) < 4 * se, f"RMS error ~ P^{slope:.3f} ± {se:.3f}, expected P^-0.5"


def test_nngp_features_kernel_error_falls_like_inverse_square_root_of_p():
    x = _points()
    exact = ARCH.kernel(x, get="nngp").nngp
    sizes, draws = [16, 64, 256, 1024, 4096], 24
    squared = [torch.stack([(random_features_kernel(nngp_features(ARCH, x, p, source="last_hidden", seed=s))
                             - exact).pow(2).sum() for s in range(draws)]) for p in sizes]
    _assert_slope_minus_half(sizes, squared)


def test_ntk_features_kernel_error_falls_like_inverse_square_root_of_p():
    x = _points()
    sizes, squared = [], []
    for width in (16, 64, 256, 1024, 4096):
        arch = nk.Serial(nk.Dense(width, w_std=1.3, b_std=0.2), nk.ReLU(), nk.Dense(1, w_std=1.1, b_std=0.3))
        exact = arch.kernel(x, get="ntk").ntk
        errors = []
        for seed in range(16):
            features = ntk_features(arch.build(D, seed=seed, dtype=DTYPE), x)
            errors.append((random_features_kernel(features) - exact).pow(2).sum())
        sizes.append(features.shape[1])  # P = number of parameters = width·(D + 2) + 1
        squared.append(torch.stack(errors))
    _assert_slope_minus_half(sizes, squared)


def test_network_outputs_are_unbiased_nngp_features():
    # 2,000 independent networks: each entry of K̃ is a mean of 2,000 i.i.d. products, within 5 of its
    # standard errors of Σ (two-sided tail 6e-7 per entry, 45 distinct entries).
    x = _points()
    features = nngp_features(ARCH, x, 2000, seed=3)
    assert features.shape == (N + M, 2000)
    products = features[:, None, :] * features[None, :, :]
    se = products.std(-1) / math.sqrt(2000)
    z = (random_features_kernel(features) - ARCH.kernel(x, get="nngp").nngp).abs() / se
    assert float(z.max()) < 5


@pytest.mark.parametrize("source", ["nngp", "ntk"])
def test_random_feature_model_trained_by_gd_is_kernel_gd_with_the_features_kernel(source):
    x = _points()
    if source == "nngp":
        features = nngp_features(ARCH, x, 500, source="last_hidden", seed=0)
    else:
        features = ntk_features(ARCH.build(D, seed=0, dtype=DTYPE), x)
    f_train, f_test = features[:N], features[N:]
    k_tilde = random_features_kernel(f_train)
    k_tilde_test = random_features_kernel(f_test, f_train)
    y = torch.sin(x[:N, :2].sum(1, keepdim=True))
    model = RandomFeatureModel(features.shape[1], 1, seed=1, dtype=DTYPE)
    flow = nk.GradientFlow(k_tilde, y)
    eta = 0.05 * flow.max_learning_rate()
    steps = 80
    result = nk.train(model, f_train, y, steps=steps, learning_rate=eta, x_test=f_test, progress=False)
    f0, f0_test = result.train_outputs[0], result.test_outputs[0]
    # exactly the discrete kernel recursion with K̃ ...
    f, ft = f0.clone(), f0_test.clone()
    for _ in range(steps):
        f, ft = f - (eta / N) * k_tilde @ (f - y), ft - (eta / N) * k_tilde_test @ (f - y)
    torch.testing.assert_close(result.train_outputs[-1], f, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.test_outputs[-1], ft, rtol=0, atol=1e-10)
    # ... hence GradientFlow with K̃ up to the time step: per component |(1−x)^k − e^{−kx}| <= k x²/2
    flow = nk.GradientFlow(k_tilde, y, learning_rate=eta)
    x_max = eta * float(flow.eigenvalues[0]) / N
    error = float((result.train_outputs[-1] - flow.train_outputs(float(steps), f0)).norm())
    assert error <= steps * x_max ** 2 / 2 * float((f0 - y).norm())


def test_features_dynamics_approach_the_infinite_width_kernel_dynamics_as_p_grows():
    # Predictions with K̃ differ from those with K by O(‖K̃ − K‖) = O(P^{-1/2}): 64x more features should shrink
    # the mean difference about 8x; 16 draws each keep the mean within ±25%, so a factor 4 is asserted.
    x = _points()
    k = ARCH.kernel(x, get="nngp").nngp
    y = torch.sin(x[:N, :2].sum(1))
    exact = nk.GradientFlow(k[:N, :N], y).test_outputs(20.0, k[N:, :N])
    gaps = []
    for p in (64, 4096):
        gap = 0.0
        for seed in range(16):
            features = nngp_features(ARCH, x, p, source="last_hidden", seed=seed)
            kt = random_features_kernel(features)
            gap += float((nk.GradientFlow(kt[:N, :N], y).test_outputs(20.0, kt[N:, :N]) - exact).norm()) / 16
        gaps.append(gap)
    assert gaps[1] < gaps[0] / 4, gaps


def test_ntk_features_in_the_inputs_dtype_and_of_the_chosen_output():
    x = _points()
    net = nk.mlp(1, 8, out_features=2).build(D, seed=0, dtype=DTYPE)
    second = ntk_features(net, x, output=1)
    jac = jacobian_matrix(net, x)[:, 1, :]  # (N, P) for output 1, named_parameters order
    torch.testing.assert_close(second, jac * math.sqrt(jac.shape[1]), rtol=1e-12, atol=1e-12)
    in_float32 = ntk_features(net, x.float(), output=1, batch_size=4)  # the float64 model's weights, cast
    assert in_float32.dtype == torch.float32
    torch.testing.assert_close(in_float32.double(), second, rtol=1e-5, atol=1e-5)
    mixed = random_features_kernel(in_float32, second)
    assert mixed.dtype == torch.float64 and mixed.shape == (N + M, N + M)


def test_feature_errors():
    x = _points()
    with pytest.raises(ValueError, match="source must be one of"):
        nngp_features(ARCH, x, 4, source="hidden")
    with pytest.raises(ValueError, match="one output per network"):
        nngp_features(nk.mlp(1, 8, out_features=2), x, 4)
    with pytest.raises(ValueError, match="needs a hidden nk.Dense layer"):
        nngp_features(nk.Dense(1), x, 4, source="last_hidden")
    with pytest.raises(ValueError, match="pass output="):
        ntk_features(nk.mlp(1, 8, out_features=2).build(D, dtype=DTYPE), x)
    two_outputs = nk.mlp(1, 8, out_features=2).build(D, dtype=DTYPE)
    assert ntk_features(two_outputs, x, output=1).shape == (N + M, 8 * D + 8 + 2 * 8 + 2)  # all parameters
    with pytest.raises(ValueError, match="features1 has 3 features but features2 has 4"):
        random_features_kernel(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"expects features of shape \(N, 5\)"):
        RandomFeatureModel(5)(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"output must be an integer in \[0, 2\); got 2"):
        ntk_features(two_outputs, x, output=2)
    with pytest.raises(ValueError, match=r"output must be an integer in \[0, 2\); got 1.0"):
        ntk_features(two_outputs, x, output=1.0)
    with pytest.raises(TypeError, match="seed must be an int or None; got 0.5"):
        RandomFeatureModel(5, seed=0.5)
    with pytest.raises(TypeError, match="arch must be an ntkit architecture"):
        nngp_features(two_outputs, x, 4)
