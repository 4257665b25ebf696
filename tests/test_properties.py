"""Property tests of the infinite-width kernels and the empirical NTK over random architectures and inputs.

Hypothesis draws fully-connected networks (every named activation, w_std in [0.25, 2.5], b_std in [0, 1], depths up
to 100), small conv/pooling networks on tiny images, and inputs whose scale is log-uniform in 1e-20..1e6 with
duplicated, collinear and zero rows, in float32 and float64, and asserts what must hold for every one of them:

* no NaN or inf is returned; where the kernel is refused (an ArithmeticError naming the overflow), an independent
  float64 recursion of its diagonal shows that it really exceeds the dtype (``_diagonal_reference``);
* the kernel is symmetric and positive semi-definite to rounding;
* it does not depend on ``batch_size``, nor on whether x2 is x1 or a copy of it;
* ``kernel_diagonal`` is its diagonal;
* float32 is within 1e-3 (of max|K|) of float64 where the problem is well conditioned;
* with rectified activations, a point (or image) and a copy nudged by 1e-5..1e-3 of its size get float32 kernels
  within 4 ulps of float64 (kernels/near_parallel.py recomputes such pairs; they were ~√ε off);
* the empirical NTK of a finite network is the same by the layerwise, Jacobian and NTK-vector-product methods.

Settings are derandomized (the same examples on every run) and sized to run in about a minute on 2 cores; set
NTKIT_PROPERTY_FACTOR=10 for ten times the examples, and NTKIT_PROPERTY_RANDOM=1 for fresh random ones (fuzzing).
"""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from scipy.special import roots_hermitenorm

import ntkit as nk

# Large pre-activation variances (inputs of size 1e6, w_std 2.5) cap the quadrature rules; the warning says so.
pytestmark = pytest.mark.filterwarnings("ignore:ntkit. quadrature dual kernel:RuntimeWarning")

FACTOR = float(os.environ.get("NTKIT_PROPERTY_FACTOR", "1"))
NAMES = ("relu", "leaky_relu", "abs", "erf", "gelu", "sin", "cos", "identity", "tanh", "sigmoid", "softplus")
QUADRATURE = ("tanh", "sigmoid", "softplus")
KINKED = (nk.ReLU, nk.LeakyReLU, nk.Abs)


def _settings(examples: int):
    return settings(max_examples=max(1, int(examples * FACTOR)), deadline=None, database=None,
                    derandomize=not os.environ.get("NTKIT_PROPERTY_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----- strategies -------------------------------------------------------------------------------------------------

@st.composite
def activations(draw):
    """(name, layer): every name of nk.mlp, and LeakyReLU with a random slope."""
    name = draw(st.sampled_from(NAMES))
    if name == "leaky_relu" and draw(st.booleans()):
        return name, nk.LeakyReLU(draw(st.floats(-1.0, 1.0)))
    return name, nk.layers.activation_from_name(name)


@st.composite
def mlp_specs(draw, max_depth=100):
    name, act = draw(activations())
    if max_depth > 10 and draw(st.integers(0, 7)) == 0:  # deep nets for one example in eight
        depth = draw(st.integers(11, 40 if name in QUADRATURE else max_depth))
    else:
        depth = draw(st.integers(0, min(10, max_depth)))
    return dict(act=act, name=name, depth=depth, w_std=draw(st.floats(0.25, 2.5)),
                b_std=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)),
                parameterization=draw(st.sampled_from(["ntk", "ntk", "ntk", "standard"])),
                width=draw(st.integers(1, 64)))


def _mlp(spec) -> nk.Serial:
    return nk.mlp(spec["depth"], spec["width"], activation=spec["act"], w_std=spec["w_std"], b_std=spec["b_std"],
                  parameterization=spec["parameterization"])


@st.composite
def input_batches(draw, tail, log_scales=(-20.0, 6.0), max_points=12):
    """(N, *tail) float64 inputs: Gaussian rows times a scale log-uniform in 10^log_scales (each row within a decade
    of it), some rows duplicated, some multiples of others, some zero."""
    n = draw(st.integers(1, max_points))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    x = torch.randn(n, *tail, generator=generator, dtype=torch.float64)
    scale = 10.0 ** draw(st.floats(*log_scales))
    spread = draw(st.sampled_from([0.0, 1.0]))
    x *= scale * 10.0 ** (spread * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1))[
        (...,) + (None,) * len(tail)]
    for _ in range(draw(st.integers(0, 3)) if n > 1 else 0):
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["duplicate", "multiple", "zero"]))
        x[j] = x[i] if kind == "duplicate" else x[i] * draw(st.sampled_from([-3.0, -1.0, 0.5, 2.0])) \
            if kind == "multiple" else 0.0
    return x


# ----- an independent reference for the diagonal ------------------------------------------------------------------

_NODES, _WEIGHTS = roots_hermitenorm(400)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _moments(name: str, act, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E[σ(u)²], E[σ'(u)²]) for u ~ N(0, q), per entry of q (float64): closed forms where they are simple, a
    400-point Gauss–Hermite rule otherwise (only its order of magnitude is used, see ``_diagonal_reference``)."""
    if name in ("relu", "leaky_relu", "abs"):
        a, b = act.slopes
        even = (a * a + b * b) / 2
        return even * q, np.full_like(q, even)
    if name == "identity":
        return q, np.ones_like(q)
    if name == "erf":
        return 2 / math.pi * np.arcsin(2 * q / (1 + 2 * q)), 4 / math.pi / np.sqrt(1 + 4 * q)
    if name in ("sin", "cos"):
        decay = np.exp(-2 * q)
        low, high = (1 - decay) / 2, (1 + decay) / 2
        return (low, high) if name == "sin" else (high, low)
    u = np.sqrt(q)[:, None] * _NODES
    fn = {"gelu": lambda t: t * 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2))),
          "tanh": np.tanh, "sigmoid": lambda t: 0.5 * (1 + np.tanh(t / 2)), "softplus": lambda t: np.logaddexp(0, t)}
    dfn = {"gelu": lambda t: 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2))) + t * np.exp(-t * t / 2) /
           math.sqrt(2 * math.pi), "tanh": lambda t: 1 / np.cosh(np.clip(t, -300, 300)) ** 2,
           "sigmoid": lambda t: 0.25 / np.cosh(np.clip(t, -600, 600) / 2) ** 2,
           "softplus": lambda t: 0.5 * (1 + np.tanh(t / 2))}
    return (fn[name](u) ** 2) @ _WEIGHTS, (dfn[name](u) ** 2) @ _WEIGHTS


def _diagonal_reference(spec, x: torch.Tensor) -> tuple[float, float, float]:
    """(largest, smallest, amplification) from the 1-D recursion of the kernel's diagonal in float64 numpy,
    independent of ntkit's code: Dense q ← w²q + b², Θ ← q + w²Θ (NTK param.) or width_in·q_in + 1 + w²Θ
    (standard); σ: q ← E[σ(u)²], Θ ← Θ·E[σ'(u)²].

    largest: the final NNGP/NTK diagonal's maximum. A PSD kernel's largest entry is on its diagonal, so this says
    whether the kernel fits a dtype. smallest: the smallest nonzero per-layer scale (the NNGP's largest diagonal
    entry after each layer, which the NTK's rules read too; Θ >= Σ); while it stays above the dtype's smallest
    normal number, subnormal rounding stays below the relative rounding the checks allow. amplification: how much a rounding error of one ulp of the scale made at
    some layer can grow by the output, summed over the layers. An error δ in a covariance c becomes w²·∂K/∂c·δ in
    the next one, and |∂K/∂c| = |E[σ'(u)σ'(v)]| is largest at ρ = 1 (Mehler: Σ n g_n² ρ^(n−1)), so relative to the
    scale an activation multiplies it by at most χ = q·E[σ'(u)²]/E[σ(u)²] (worst point): 1 for ReLU, above 1 in
    the chaotic phase of erf, sin, cos or tanh at large w_std (1.6 per layer for erf at w_std = 2.5), and q for
    sin/cos at large q (e^{−q(1−ρ)} resolves 1 − ρ to 1/q). Dense layers shrink relative errors (the bias adds
    a constant); each layer adds its own. Within the drawn ranges (w_std <= 2.5, depth <= 100, |x| <= 1e7) every
    value stays in float64's normal range, which is asserted."""
    w2, b2 = spec["w_std"] ** 2, spec["b_std"] ** 2
    q = (x.double() ** 2).mean(1).numpy()
    theta = np.zeros_like(q)
    width = x.shape[1]
    scales, amplification = [q.max()], 1.0  # the input Gram's scale first
    for layer in range(spec["depth"] + 1):
        q_in, q = q, w2 * q + b2
        theta = (q if spec["parameterization"] == "ntk" else width * q_in + 1) + w2 * theta
        width = spec["width"]
        scales.append(q.max())
        amplification += 1.0
        if layer < spec["depth"]:
            second, slope = _moments(spec["name"], spec["act"], q)
            positive = second > 0
            chi = np.where(positive, q * slope / np.where(positive, second, 1.0), 1.0)
            amplification = amplification * max(1.0, float(chi.max())) + 1.0
            q, theta = second, theta * slope
            scales.append(q.max())
    largest = max(q.max(), theta.max())
    smallest = min((s for s in scales if s > 0), default=math.inf)  # exact zeros (zero inputs, no bias) are exact
    assert np.isfinite(largest) and smallest > 1e-290, "the reference left float64's normal range"
    return largest, smallest, amplification


# ----- checks -----------------------------------------------------------------------------------------------------

def _tolerances(dtype: torch.dtype, amplification: float, kinked: int) -> dict[str, float]:
    """The rounding error allowed per entry, relative to max|K|, of the NNGP and the NTK.

    16 ulps per layer, times how much the layers after it can amplify it (``_diagonal_reference``; depth + 2 for a
    non-expansive recursion such as ReLU's): each layer's rule is a few rounded operations on numbers bounded by
    the scale, with correlations clamped and snapped, and the Gram product adds d ulps (d <= 8 features here).

    The NTK of ``kinked`` ReLU/LeakyReLU/Abs layers gets more: K̇ = (a² + b²)/2 − (a − b)²/(2π)·θ, θ = arccos ρ, has
    an infinite slope at ρ = ±1, so an error δρ <= 16·amplification·ε that ρ carries from the layers before moves
    θ by up to √(2δρ) where 1 − |ρ| is a few ulps but not snapped (e.g. x and 2x with a bias, or 1-D inputs),
    i.e. K̇ by (a − b)²/(π(a² + b²)) <= 2/π of that relative to K̇(1), and these add over the layers (Θ's relative
    errors are carried with a factor <= 1). This is the representation's limit, not the kernel's: the NTK is
    Lipschitz in the inputs, but (c, q1, q2) cannot resolve 1 − ρ below ε (issue 13's property-suite report)."""
    eps = torch.finfo(dtype).eps
    base = 16.0 * amplification * eps
    return {"nngp": base, "ntk": base + kinked * (2 / math.pi) * math.sqrt(32.0 * amplification * eps)}


def _assert_psd(k: torch.Tensor, tolerance: float, what: str):
    """Symmetric exactly (the engines mirror one triangle), and λ_min >= −N·tolerance·max|K| (Weyl: an error E of
    entries below tolerance·max|K| moves eigenvalues by at most ‖E‖₂ <= N·tolerance·max|K|)."""
    assert torch.equal(k, k.T), f"{what} is not symmetric"
    top = float(k.abs().max())
    lowest = float(torch.linalg.eigvalsh(k.double())[0])
    assert lowest >= -k.shape[0] * tolerance * top, f"{what}: λ_min = {lowest:.3e} with max|K| = {top:.3e}"


def _assert_close(a: torch.Tensor, b: torch.Tensor, tolerance: float, what: str):
    """|a − b| <= tolerance · max|b| entrywise (the rounding of a kernel is relative to its largest entry)."""
    top = float(b.abs().max())
    gap = float((a.double() - b.double()).abs().max())
    assert gap <= tolerance * top, f"{what}: max|difference| {gap:.3e} > {tolerance:.1e} · max|K| ({top:.3e})"


def _kernel_or_reason(arch, *args, **options):
    """The kernel, or the ArithmeticError it was refused with (which must name the overflow)."""
    try:
        return arch.kernel(*args, **options)
    except ArithmeticError as err:  # FloatingPointError / OverflowError
        assert "overflow" in str(err).lower(), f"an ArithmeticError that does not name its reason: {err}"
        return err


def _check_kernel(arch, x: torch.Tensor, tolerances: dict, exact: bool, refused_ok) -> None:
    """Every property of ``arch.kernel`` on x: finite or refused for a reason ``refused_ok`` confirms; symmetric and
    PSD; the same for batch_size 1, 3 and None, for x2 = x.clone(), and on the diagonal (``kernel_diagonal``).
    ``exact``: whether the per-entry rounding bound holds (the kernel and every layer's scale in the normal range).
    """
    kernel = _kernel_or_reason(arch, x)
    if isinstance(kernel, ArithmeticError):
        assert refused_ok(), f"refused although the kernel fits {x.dtype}: {kernel}"
        event("refused: the kernel exceeds the dtype")
        return
    event("computed, rounding bounds checked" if exact else "computed, subnormal scales: finiteness checked")
    for name in ("nngp", "ntk"):
        k = kernel[name]
        assert k.dtype == x.dtype and k.shape == (len(x), len(x))
        assert bool(torch.isfinite(k).all()), f"{name} has non-finite entries"
        if exact:
            _assert_psd(k, tolerances[name], name)
    others = [("batch_size=1", arch.kernel(x, batch_size=1)), ("batch_size=3", arch.kernel(x, batch_size=3)),
              ("x2 = x.clone()", arch.kernel(x, x.clone()))]
    diagonal = arch.kernel_diagonal(x)
    for name in ("nngp", "ntk"):
        k = kernel[name]
        for label, other in others:
            if exact:
                _assert_close(other[name], k, tolerances[name], f"{name} with {label}")
            else:
                assert bool(torch.isfinite(other[name]).all()), f"{name} with {label} is not finite"
        if exact:
            _assert_close(diagonal[name], k.diagonal(), tolerances[name], f"kernel_diagonal's {name}")
        assert bool(torch.isfinite(diagonal[name]).all())


# ----- fully-connected networks -----------------------------------------------------------------------------------

def _spec(name, depth, w_std, b_std=0.0):
    return dict(act=nk.layers.activation_from_name(name), name=name, depth=depth, w_std=w_std, b_std=b_std,
                parameterization="ntk", width=8)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@_settings(200)
@given(spec=mlp_specs(), x=input_batches((4,)) | input_batches((1,)) | input_batches((8,)),
       dtype=st.sampled_from([torch.float32, torch.float64]))
# Pinned: a kernel beyond float32 (3.1^100: refused) that float64 computes, and issue 13's reproducers (30 ReLU
# layers at w_std 0.5 underflowed to zeros; 40 cos layers overflowed for x2 = x.clone(); erf/GELU cancellations).
@example(spec=_spec("relu", 100, 2.5), x=_randn(5, 4), dtype=torch.float32)
@example(spec=_spec("relu", 100, 2.5), x=_randn(5, 4), dtype=torch.float64)
@example(spec=_spec("relu", 30, 0.5), x=_randn(4, 8), dtype=torch.float32)
@example(spec=_spec("cos", 40, 2.5), x=30 * _randn(12, 8), dtype=torch.float64)
@example(spec=_spec("erf", 1, 1.0), x=torch.tensor([[1e4, -2e4]], dtype=torch.float64), dtype=torch.float32)
@example(spec=_spec("gelu", 2, 1.0), x=1e6 * _randn(5, 4), dtype=torch.float32)
def test_mlp_kernel_properties(spec, x, dtype):
    arch = _mlp(spec)
    x = x.to(dtype)
    largest, smallest, amplification = _diagonal_reference(spec, x)
    finfo = torch.finfo(dtype)
    # Refusing is right only for a kernel that exceeds the dtype (a factor 2 of slack for the rounding of the
    # largest entry and of the intermediate w²Θ before it is added).
    exact = largest < finfo.max / 2 and smallest >= finfo.tiny
    kinked = spec["depth"] if isinstance(spec["act"], KINKED) else 0
    _check_kernel(arch, x, _tolerances(dtype, amplification, kinked), exact, lambda: largest >= finfo.max / 2)


@_settings(200)
@given(spec=mlp_specs(max_depth=10), x=input_batches((5,), log_scales=(-3.0, 3.0)))
def test_mlp_float32_within_1e3_of_float64(spec, x):
    """Well conditioned (depth <= 10, inputs of size 1e-3..1e3): float32 within 1e-3 of max|K| of float64, or
    within float32's rounding times the recursion's amplification where that is larger (chaotic sin/cos/erf nets
    at large w_std: ``_diagonal_reference``; the kinked NTK near ρ = ±1: ``_tolerances``). The kernel fits float32
    here (at most 3.2^10 · 1e8 · width)."""
    arch = _mlp(spec)
    _, _, amplification = _diagonal_reference(spec, x)
    kinked = spec["depth"] if isinstance(spec["act"], KINKED) else 0
    tolerances = _tolerances(torch.float32, amplification, kinked)
    double = arch.kernel(x)
    single = arch.kernel(x.float())
    for name in ("nngp", "ntk"):
        _assert_close(single[name], double[name], max(1e-3, tolerances[name]), f"float32 {name}")


@_settings(100)
@given(spec=mlp_specs(max_depth=10).filter(lambda spec: isinstance(spec["act"], KINKED)),
       x=input_batches((5,), log_scales=(-3.0, 3.0)), nudge=st.floats(-5.0, -3.0))
def test_mlp_float32_kinked_kernels_of_near_duplicates_are_float32_accurate(spec, x, nudge):
    """ReLU/LeakyReLU/Abs nets in float32, a row and a copy nudged by 10^nudge of its size: 1 − ρ ~ 1e-7..1e-11,
    a few float32 ulps or less, where K̇'s arccos ρ turned the rounding of ρ into ~√ε (3e-4 of max|K| for points
    1e-3 apart). Such pairs are recomputed in float64 (kernels/near_parallel.py), so their entries are the float64
    kernel of the same (float32) inputs rounded once: within 4 ulps of max|K|. The other entries: ``_tolerances``.
    """
    direction = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64) * x[0].norm() * 10.0 ** nudge
    x = torch.cat([x, x[:1] + direction]).float()
    arch = _mlp(spec)
    _, _, amplification = _diagonal_reference(spec, x.double())
    kinked = spec["depth"]
    tolerances = _tolerances(torch.float32, amplification, kinked)
    double = arch.kernel(x.double())  # the same float32 inputs, exactly
    single = arch.kernel(x)
    eps = torch.finfo(torch.float32).eps
    for name in ("nngp", "ntk"):
        _assert_close(single[name], double[name], tolerances[name], f"float32 {name}")
        pair = (single[name][0, -1], double[name][0, -1])
        top = float(double[name].abs().max())
        gap = float((pair[0].double() - pair[1]).abs())
        assert gap <= 4 * eps * top, f"near-duplicate pair's {name}: |difference| {gap:.3e} > 4 ulps of {top:.3e}"


# ----- convolutional networks -------------------------------------------------------------------------------------

@st.composite
def spatial_specs(draw):
    """A small conv net for (C, H, W) = (1..2, 3..5, 3..5) images or (C, L) = (1..2, 3..8) sequences: nk.cnn
    (strides 1 or 2), or Conv–activation–pooling stacks with optional LayerNorm/Residual blocks, a Flatten or
    GlobalAvgPool readout, and a Dense."""
    _, act = draw(activations())
    w, b = draw(st.floats(0.25, 2.5)), draw(st.sampled_from([0.0, 0.1, 1.0]))
    if draw(st.integers(0, 3)) == 0:
        shape = (draw(st.integers(1, 2)), draw(st.integers(3, 8)))
        arch = nk.cnn(draw(st.integers(1, 3)), width=4, kernel_size=draw(st.sampled_from([1, 2, 3])),
                      readout=draw(st.sampled_from(["flatten", "gap"])), activation=act, w_std=w, b_std=b,
                      stride=draw(st.sampled_from([1, 2])), dims=1)
        return arch, shape
    shape = (draw(st.integers(1, 2)), draw(st.integers(3, 5)), draw(st.integers(3, 5)))
    if draw(st.booleans()):
        depth, size = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3]))
        valid = min(shape[1:]) - depth * (size - 1) >= 1 and draw(st.booleans())  # "valid" while it fits
        arch = nk.cnn(depth, width=4, kernel_size=size, readout=draw(st.sampled_from(["flatten", "gap"])),
                      activation=act, w_std=w, b_std=b, padding="valid" if valid else "same",
                      stride=1 if valid else draw(st.sampled_from([1, 2])))
        return arch, shape
    layers = [nk.Conv2d(4, 3, padding="same", w_std=w, b_std=b), act]
    if draw(st.booleans()):
        layers += [nk.Residual(nk.Conv2d(4, 2, padding="same", w_std=w, b_std=b), act,
                               nk.Conv2d(4, 1, w_std=w, b_std=b))]
    if draw(st.booleans()):
        layers += [nk.LayerNorm()]
    if draw(st.booleans()):
        layers += [nk.AvgPool2d(2, stride=1, padding=draw(st.sampled_from([0, 1]))),
                   nk.Conv2d(3, 2, padding="valid", w_std=w, b_std=b), act]
    layers += [draw(st.sampled_from([nk.Flatten(), nk.GlobalAvgPool()])), nk.Dense(1, w_std=w, b_std=b)]
    return nk.Serial(*layers), shape


def _activations(arch) -> list:
    """The activation layers of ``arch``, inside Residual blocks too."""
    found = []
    for layer in arch.flatten():
        if isinstance(layer, nk.Residual):
            found += _activations(layer.block) + (_activations(layer.shortcut) if layer.shortcut else [])
        elif isinstance(layer, nk.layers.Activation):
            found.append(layer)
    return found


@_settings(100)
@given(spec=spatial_specs(), data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_spatial_kernel_properties(spec, data, dtype):
    arch, shape = spec
    activations = _activations(arch)
    depth, kinked = len(activations), sum(isinstance(layer, KINKED) for layer in activations)
    x = data.draw(input_batches(shape, max_points=6)).to(dtype)
    # No refusal is right here: with <= 4 activations, w_std <= 2.5, b_std <= 1 and |x| <= 1e7, every kernel is
    # below 1e24. The rounding bound holds while no layer's scale is subnormal: inputs of size 1e-12 have Grams
    # >= 1e-26 and four layers shrink them at most (0.25² · 1/4)⁴ ≈ 1e-7-fold, above float32's 1.2e-38.
    exact = dtype == torch.float64 or float(x.abs().max()) >= 1e-12
    _check_kernel(arch, x, _tolerances(dtype, depth + 2, kinked), exact, lambda: False)


@_settings(40)
@given(spec=spatial_specs().filter(lambda spec: any(isinstance(a, KINKED) for a in _activations(spec[0]))),
       data=st.data(), nudge=st.floats(-5.0, -3.0))
def test_spatial_float32_kinked_kernels_of_near_duplicate_images_are_float32_accurate(spec, data, nudge):
    """Conv nets with ReLU/LeakyReLU/Abs in float32, an image and a copy nudged by 10^nudge of its size: the pair is
    recomputed in float64 (kernels/near_parallel.py ``SpatialPairs``; 2.8e-4 of max|K| off before for images
    1e-3 apart), so its entries are the float64 kernel of the same inputs rounded once: within 4 ulps of max|K|."""
    arch, shape = spec
    activations = _activations(arch)
    x = data.draw(input_batches(shape, max_points=4, log_scales=(-2.0, 2.0)))
    direction = torch.linspace(-1.0, 1.0, x[0].numel(), dtype=torch.float64).reshape(x[0].shape)
    x = torch.cat([x, x[:1] + direction * x[0].norm() * 10.0 ** nudge / x[0].numel() ** 0.5]).float()
    double, single = arch.kernel(x.double()), arch.kernel(x)
    eps = torch.finfo(torch.float32).eps
    tolerances = _tolerances(torch.float32, len(activations) + 2, len(activations))
    for name in ("nngp", "ntk"):
        _assert_close(single[name], double[name], tolerances[name], f"float32 {name}")
        top = float(double[name].abs().max())
        gap = float((single[name][0, -1].double() - double[name][0, -1]).abs())
        assert gap <= 4 * eps * top, f"near-duplicate pair's {name}: |difference| {gap:.3e} > 4 ulps of {top:.3e}"


# ----- empirical NTK ----------------------------------------------------------------------------------------------

@st.composite
def finite_networks(draw):
    """(network, inputs) in float64: a narrow MLP (depth <= 4) or a tiny CNN, inputs as in the kernel tests."""
    seed = draw(st.integers(0, 1000))
    if draw(st.booleans()):
        spec = draw(mlp_specs(max_depth=4))
        d = draw(st.integers(1, 6))
        arch = nk.mlp(spec["depth"], draw(st.integers(1, 12)), out_features=draw(st.integers(1, 3)),
                      activation=spec["act"], w_std=spec["w_std"], b_std=spec["b_std"],
                      parameterization=spec["parameterization"])
        return arch.build(in_features=d, seed=seed, dtype=torch.float64), draw(input_batches((d,), max_points=8))
    arch, shape = draw(spatial_specs())
    return arch.build(shape, seed=seed, dtype=torch.float64), draw(input_batches(shape, max_points=5))


@_settings(50)
@given(case=finite_networks(), two_inputs=st.booleans())
def test_empirical_ntk_methods_agree(case, two_inputs):
    """layerwise, jacobian and vector_products: the same sums of products in other orders, so they agree to float64
    rounding of the largest entry (1e-10 leaves room for the few hundred to few thousand terms summed)."""
    net, x = case
    x2 = x.flip(0)[: max(1, len(x) - 1)] if two_inputs else None
    results = {method: nk.empirical_ntk(net, x, x2, method=method)
               for method in ("layerwise", "jacobian", "vector_products")}
    reference = results["jacobian"]
    assert bool(torch.isfinite(reference).all())
    for method, value in results.items():
        assert value.shape == reference.shape and value.dtype == torch.float64
        _assert_close(value, reference, 1e-10, f"empirical NTK by {method}")
