"""Bad input gets a clear error naming the argument (issue 2, point 5): one test per case."""

import numpy as np
import pytest
import torch

import ntkit as nk

ARCH = nk.mlp(2, 16, activation="relu")
X = torch.randn(4, 3)


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"x1 must have shape \(N, d\) or \(N, C, L\) or \(N, C, H, W\); got a 1-D"):
        ARCH.kernel(torch.randn(5))
    with pytest.raises(ValueError, match=r"x2 must have shape \(N, d\) or .*; got a 5-D"):
        ARCH.kernel(X, torch.randn(2, 3, 1, 1, 1))


def test_feature_mismatch_between_x1_and_x2():
    with pytest.raises(ValueError, match="x1 and x2 must have the same feature shape"):
        ARCH.kernel(X, torch.randn(2, 4))


def test_feature_mismatch_with_the_description():
    arch = nk.mlp(1, 8, in_features=5)
    with pytest.raises(ValueError, match="x1 has 3 features but the architecture expects in_features=5"):
        arch.kernel(X)
    with pytest.raises(ValueError, match="contradicts the description's in_features=5"):
        arch.build(3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(bad):
    x = X.clone()
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value\(s\).*index \(2, 1\)"):
        ARCH.kernel(x)
    with pytest.raises(ValueError, match="x2 contains"):
        ARCH.kernel(X, x)


def test_empty_inputs():
    with pytest.raises(ValueError, match="x1 is empty"):
        ARCH.kernel(torch.empty(0, 3))
    with pytest.raises(ValueError, match="x2 is empty"):
        ARCH.kernel(X, torch.empty(0, 3))
    with pytest.raises(ValueError, match="x1 has no features"):
        ARCH.kernel(torch.empty(2, 0))


@pytest.mark.parametrize("x", [torch.ones(3, 2, dtype=torch.int64), np.ones((3, 2), dtype=np.int32),
                               torch.ones(3, 2, dtype=torch.bool)])
def test_integer_and_bool_dtypes(x):
    with pytest.raises(TypeError, match="x1 has dtype .*expected a floating dtype"):
        ARCH.kernel(x)


def test_complex_dtype():
    with pytest.raises(TypeError, match="x1 has complex dtype"):
        ARCH.kernel(torch.ones(3, 2, dtype=torch.complex64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_the_conversion_to_use(dtype):
    """Issue 13: float16/bfloat16 inputs were computed in half precision and returned so (3 significant digits,
    float16 overflowing past 65504). The README's convention: refused, naming the argument and ``.float()``."""
    x = X.to(dtype)
    for call, name in ((lambda: ARCH.kernel(x), "x1"), (lambda: ARCH.kernel(X, x), "x2"),
                       (lambda: ARCH.kernel_diagonal(x), "x"),
                       (lambda: nk.cnn(1, readout="gap").kernel(torch.randn(2, 1, 4, 4, dtype=dtype)), "x1"),
                       (lambda: nk.KernelOperator(ARCH, x), "x1"), (lambda: nk.KernelOperator(ARCH, X, x), "x2")):
        with pytest.raises(TypeError, match=rf"{name} has dtype {dtype}; infinite-width kernels are computed in "
                                            rf"float32 or float64 only.*Pass {name}\.float\(\)"):
            call()
    with pytest.raises(TypeError, match="x1 has dtype torch.float16"):
        ARCH.kernel(np.ones((3, 3), dtype=np.float16))  # numpy's float16 too
    # The empirical NTK of a half-precision model is computed in the model's dtype, as its forward pass is.
    net = ARCH.build(3, seed=0).to(dtype)
    assert nk.empirical_ntk(net, x, output="trace").dtype == dtype


def test_meta_device_inputs_are_refused():
    with pytest.raises(ValueError, match="x1 is on the meta device"):
        ARCH.kernel(torch.empty(3, 3, device="meta"))
    with pytest.raises(ValueError, match="x2 is on the meta device"):
        ARCH.kernel(X, torch.empty(3, 3, device="meta"))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor or numpy array"):
        ARCH.kernel("abc")


@pytest.mark.parametrize("width", [0, -3])
def test_width_must_be_positive(width):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        nk.mlp(2, width)
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        nk.Dense(width)


def test_width_must_be_an_integer():
    with pytest.raises(TypeError, match="width must be a positive integer; got 2.5"):
        nk.mlp(2, 2.5)


@pytest.mark.parametrize("name", ["w_std", "b_std"])
def test_negative_std(name):
    with pytest.raises(ValueError, match=f"{name} must be a finite non-negative number; got -0.1"):
        nk.Dense(4, **{name: -0.1})
    with pytest.raises(ValueError, match=f"{name} must be a finite non-negative number"):
        nk.mlp(1, 4, **{name: float("nan")})


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="unknown activation 'rellu'; choose one of relu, "):
        nk.mlp(2, 8, activation="rellu")


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization must be one of"):
        nk.Dense(3, parameterization="mup")


def test_negative_hidden_layers():
    with pytest.raises(ValueError, match="hidden_layers must be a non-negative integer"):
        nk.mlp(-1, 8)


def test_layer_order_the_kernel_cannot_follow():
    twice = nk.Serial(nk.Dense(8), nk.ReLU(), nk.Erf(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 2 \(Erf\(\)\) does not follow a Dense or Conv layer"):
        twice.kernel(X)
    first = nk.Serial(nk.ReLU(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 0 \(ReLU\(\)\) does not follow a Dense or Conv layer"):
        first.kernel(X)
    first.build(3)  # the finite network itself is fine; only its kernel is undefined


def test_serial_needs_layers():
    with pytest.raises(ValueError, match="at least one layer"):
        nk.Serial()
    with pytest.raises(TypeError, match="layer 1 must be an ntkit layer"):
        nk.Serial(nk.Dense(2), torch.nn.ReLU())


@pytest.mark.parametrize("get", ["ntkk", (), ("nngp", "cov")])
def test_bad_get(get):
    with pytest.raises(ValueError, match="get must name 'nngp' and/or 'ntk'"):
        ARCH.kernel(X, get=get)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ARCH.kernel(X, batch_size=batch_size)


def test_build_arguments():
    with pytest.raises(ValueError, match="build needs in_shape"):
        ARCH.build()
    with pytest.raises(TypeError, match="seed must be an int"):
        ARCH.build(3, seed=1.5)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        ARCH.build(3, dtype=torch.int32)


def test_activation_needs_a_callable():
    with pytest.raises(TypeError, match="fn must be a callable"):
        nk.Activation(3.0)
    with pytest.raises(ValueError, match="degree must be a positive integer"):
        nk.Activation(torch.tanh, degree=0)


@pytest.mark.parametrize("slope", [float("nan"), float("inf"), -float("inf")])
def test_leaky_relu_slope_must_be_finite(slope):
    """Issue 13: LeakyReLU(nan) was accepted, and its kernel then refused as an "overflow" blamed on w_std."""
    with pytest.raises(ValueError, match="negative_slope must be a finite real number"):
        nk.LeakyReLU(slope)
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        nk.LeakyReLU("0.1")
    assert nk.LeakyReLU(np.float32(0.2)).negative_slope == pytest.approx(0.2)


@pytest.mark.parametrize("fn, where", [(torch.sqrt, "-1e-08"), (lambda u: torch.log(u + 1.0), "-1.25893"),
                                       (lambda u: u * float("nan"), "0")], ids=["sqrt", "log", "nan"])
def test_activation_returning_nan_is_named_not_blamed_on_overflow(fn, where):
    """Issue 13: an ``nk.Activation(fn)`` returning NaN made the kernel NaN, and the error blamed overflow and
    w_std. Now it names the activation and the finite pre-activation where σ returned NaN (the smallest in
    magnitude of the probes 0, ±10^k)."""
    arch = nk.Serial(nk.Dense(8), nk.Activation(fn, name="mine"), nk.Dense(1))
    for call in (lambda: arch.kernel(X), lambda: arch.kernel_diagonal(X)):
        with pytest.raises(ValueError, match=rf"not from overflow: the activation Activation\(mine, degree=128\) "
                                             rf"\(layer 1 of the flattened architecture\) returned NaN for the finite "
                                             rf"pre-activation u = {where}"):
            call()
    images = nk.Serial(nk.Conv2d(2, 3), nk.Activation(fn, name="mine"), nk.GlobalAvgPool(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"returned NaN for the finite pre-activation"):
        images.kernel(torch.randn(2, 1, 5, 5))


def test_request_too_big_for_memory_is_refused_with_an_estimate():
    x = torch.zeros(1, 3).expand(3_000_000, 3)  # 3e6² outputs = 36 TB of float32: refused before allocating
    with pytest.raises(MemoryError, match=r"needs about [0-9.]+ GiB but only .* free"):
        ARCH.kernel(x)


@pytest.mark.filterwarnings("ignore:ntkit. quadrature dual kernel:RuntimeWarning")  # tanh at q ~ 1e6: capped rule
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_overflow_is_refused_not_returned_as_nan(activation):
    """w_std = 1e20 makes w_std² = 1e40 > float32's largest value (3.4e38) at the first layer: the recursion would
    return inf/NaN (inf − inf inside the dual kernels). It must be refused; a large but representable setting in
    float64 must still come back finite."""
    huge = nk.mlp(3, 16, activation=activation, w_std=1e20)
    with pytest.raises(FloatingPointError, match=r"overflowed.*smaller w_std"):
        huge.kernel(X)
    with pytest.raises(FloatingPointError, match="overflowed"):
        huge.kernel(X, X[:2], get="nngp")
    large = nk.mlp(3, 16, activation=activation, w_std=1e3)
    assert torch.isfinite(large.kernel(X.double()).ntk).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_overflow_in_one_tile_is_refused(symmetric):
    """CPU tiles are checked finite one by one (kernels/evaluate.py): one point whose kernel leaves float32's range,
    in a tile of its own, off the diagonal (and in the mirrored half of a symmetric kernel), is still refused."""
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    x[33] = 1e17  # |x|²/n0 = 1e34; four Dense layers of w_std = 10 and three ReLUs: ~1e41 > 3.4e38
    arch = nk.mlp(3, 16, activation="relu", w_std=10.0)
    assert torch.isfinite(arch.kernel(x[:30], batch_size=8).ntk).all()
    with pytest.raises(FloatingPointError, match="overflowed"):
        arch.kernel(x, None if symmetric else x[:20], batch_size=8)
