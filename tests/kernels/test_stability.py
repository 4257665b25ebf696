"""Regression tests for the numerical defects the property suite (tests/test_properties.py) found, one per
minimised reproducer. Each failed before the fix it names (measured values in the docstrings) and compares with
float64 or with the same kernel computed another way."""

import math

import pytest
import torch

import ntkit as nk


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_correlations_of_minus_one_are_snapped_like_plus_one():
    """One-channel images under a 1×1 conv have ρ = sign(x_p x'_p) = ±1 at every position; only ρ ≈ +1 was
    snapped, and arccos turned the rounding at ρ ≈ −1 into √ε: the float32 NTK was 2.4e-6 off float64 (now 4e-8),
    and kernel(x, x.clone()) differed from kernel(x) by 9e-6 relative."""
    x = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    arch = nk.Serial(nk.Conv2d(4, 1), nk.ReLU(), nk.Flatten(), nk.Dense(1))
    exact = arch.kernel(x.double()).ntk
    assert _relative(arch.kernel(x).ntk, exact) < 2e-7
    assert _relative(arch.kernel(x, x.clone()).ntk, exact) < 2e-7


def test_sin_kernel_of_a_point_with_itself_at_large_variance():
    """e^{-h} sinh(c) took |c| − h as a difference, off by q·ε after the clamp |c| <= √q1·√q2 rounded c down: for
    inputs of size 300 (q ~ 1e5) K(x, x) = (1 − e^{-2q})/2 came out 0.4961 instead of 0.5 in float32."""
    x = 300 * torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    arch = nk.mlp(1, 1, activation="sin", b_std=0.0)
    for dtype in (torch.float32, torch.float64):
        kernel = arch.kernel(x.to(dtype))
        torch.testing.assert_close(kernel.nngp.diagonal(), torch.full((3,), 0.5, dtype=dtype), rtol=2e-7, atol=0)
    # cos: Θ(x, x) = E[cos²] + q·E[sin²] = ½ + ½q (e^{-2q} = 0 here), q = |x|²/d
    q = (x.double() ** 2).mean(1)
    torch.testing.assert_close(nk.mlp(1, 1, activation="cos", b_std=0.0).kernel(x.double()).ntk.diagonal(),
                               0.5 + 0.5 * q, rtol=1e-14, atol=0)


def test_erf_ntk_of_a_point_with_itself_in_the_spatial_engine():
    """The spatial pair pass forms c[p, p] of a point with itself by a GEMM and its variance by another sum: an ulp
    apart, and the erf NTK's q1 q2 − c² turned that into 1.3e-5 relative (images of size 100, float32) between
    kernel_diagonal and the kernel's diagonal. The gap is now (b − |c|)(b + |c|) with |c| snapped to b = √q1·√q2."""
    x = 100 * torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    arch = nk.Serial(nk.Conv2d(4, 3), nk.Erf(), nk.Flatten(), nk.Dense(1))
    exact = arch.kernel(x.double()).ntk
    assert _relative(arch.kernel(x).ntk, exact) < 2e-7
    assert _relative(arch.kernel_diagonal(x).ntk, exact.diagonal()) < 2e-7


def test_deep_chaotic_erf_keeps_a_point_correlated_with_its_copy():
    """erf at w_std = 2 is chaotic (the correlation map's slope at ρ = 1 is ~1.2-2 per layer): an ulp between a
    point's Gram with its copy and its variance grew over 11 layers to 1.1e-5 relative between kernel(x) and
    kernel(x, x.clone()) in float32. With the snap, a copy is exactly ρ = 1 at every layer: bitwise the same."""
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    arch = nk.mlp(11, 1, activation="erf", w_std=2.0)
    assert torch.equal(arch.kernel(x).nngp, arch.kernel(x, x.clone()).nngp)


def test_gelu_and_erf_kernels_that_fit_float32_are_computed_past_q_1e19():
    """q1 q2 and (1 + 2q1)(1 + 2q2) overflow float32 for q beyond ~1e19 although the kernels are O(q): a 20-layer
    GELU net (w_std 2.5) on inputs of size 1e6 reaches q ~ 1e24 and was refused as overflow; erf on inputs of size
    1e10 gave (1 + 2q)² = inf and was refused too. Both within float32 rounding of float64 now."""
    generator = torch.Generator().manual_seed(0)
    for arch, scale in ((nk.mlp(20, 1, activation="gelu", w_std=2.5, b_std=0.0), 1e6),
                        (nk.mlp(1, 1, activation="erf", b_std=0.0), 1e10)):
        x = scale * torch.randn(3, 4, generator=generator)
        single, double = arch.kernel(x), arch.kernel(x.double())
        for name in ("nngp", "ntk"):
            assert _relative(single[name], double[name]) < 1e-6, (arch, name)
    # erf's NNGP of a point with itself, (2/π) arcsin(2q/(1 + 2q)) = (2/π) atan2(2q, √(1 + 4q)) = 1 − 6e-11 here
    q = float((x.double()[0] ** 2).mean())
    expected = 2 / math.pi * math.atan2(2 * q, math.sqrt(1 + 4 * q))
    assert float(arch.kernel(x.double()).nngp[0, 0]) == pytest.approx(expected, rel=1e-15, abs=0)
    assert 0 < 1 - expected < 1e-10


def test_subnormal_variances_are_divided_by_their_own_norm():
    """Norms were clamped to float32's smallest normal number (1.2e-38) before dividing: a point whose variance had
    become subnormal got ρ = c/1.2e-38 < 1 with itself. 12 ReLU layers at w_std = 0.25 on inputs of size 1e-11:
    K(x, x) = 1.44e-40 instead of 2.15e-40. Subnormals keep ~16 bits here (values ~1e-40 = 2^-132: 17 bits)."""
    x = torch.tensor([[1.8065e-10, 7.2912e-11, 1.6848e-11, 1.6972e-10],
                      [-2.6550e-11, -9.7605e-12, -8.9466e-11, 2.2425e-11],
                      [-1.5539e-11, -8.5142e-12, -1.3493e-11, -8.8083e-13]], dtype=torch.float64)
    arch = nk.mlp(11, 1, activation="relu", w_std=0.25, b_std=0.0)
    single, double = arch.kernel(x.float()).nngp, arch.kernel(x).nngp
    assert float(double[2, 2]) < torch.finfo(torch.float32).tiny  # the case: a subnormal diagonal entry
    torch.testing.assert_close(single.double(), double, rtol=2e-5, atol=0)


def test_layer_norm_of_subnormal_variances():
    """LayerNorm divided by √max(q, 1.2e-38) (inputs of size 1e-20 in float32: q ~ 1e-40, so K(x, x) came out 0.005
    instead of 1), and the flat rule's r1·r2 overflowed float32 once q itself was used (r ~ 1e22 for q ~ 1e-44)
    although K·r1·r2 is O(1). The Gram of such inputs is subnormal (~16 bits), so float64 agrees to 1e-4."""
    for arch, shape in ((nk.Serial(nk.Dense(4), nk.LayerNorm(), nk.Dense(1)), (4, 6)),
                        (nk.Serial(nk.Conv2d(4, 3), nk.LayerNorm(), nk.Flatten(), nk.Dense(1)), (3, 2, 3, 3))):
        x = 1e-20 * torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        single, double = arch.kernel(x).nngp, arch.kernel(x.double()).nngp
        torch.testing.assert_close(single.diagonal(), torch.ones(shape[0]), rtol=1e-6, atol=0)
        assert _relative(single, double) < 1e-4
    x = 1e-22 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(nk.Serial(nk.Dense(4), nk.LayerNorm(), nk.Dense(1)).kernel(x).ntk).all())
