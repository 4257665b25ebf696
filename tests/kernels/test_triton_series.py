"""The Triton Horner kernel of Mehler's series (``kernels/triton_series.py``), in Triton's CPU interpreter."""

import pytest
import torch

import ntkit as nk
from ntkit.kernels import quadrature, triton_series, triton_support


@pytest.fixture
def interpreted(monkeypatch):
    """The kernel on CPU tensors (interpreted), counting its calls."""
    monkeypatch.setattr(triton_support, "INTERPRET", True)
    monkeypatch.setattr(triton_support, "_disabled", None)
    calls = []
    original = triton_series._launch
    monkeypatch.setattr(triton_series, "_launch", lambda *a: calls.append(a[0].shape[0]) or original(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("terms", [1, 8, 13, 40])
def test_horner_matches_the_torch_loop(dtype, terms, interpreted):
    g = torch.Generator().manual_seed(terms)
    first = torch.randn(terms, 37, 1, generator=g, dtype=torch.float64).to(dtype)
    second = torch.randn(terms, 1, 150, generator=g, dtype=torch.float64).to(dtype)
    r = torch.rand(37, 150, generator=g, dtype=torch.float64).to(dtype)
    got = quadrature._horner(first, second, r)
    assert interpreted == [terms]
    exact = sum(r.double() ** m * first[m].double() * second[m].double() for m in range(terms))
    # Horner's rounding: a few ulps of the sum of |terms| (each step one multiply-add)
    scale = sum(first[m].double().abs() * second[m].double().abs() for m in range(terms))
    assert float(((got.double() - exact).abs() / scale).max()) < 4 * terms * torch.finfo(dtype).eps


def test_other_shapes_and_autograd_keep_the_torch_loop(interpreted):
    r = torch.rand(5, 6)
    assert triton_series.horner(torch.randn(3, 5, 6), torch.randn(3, 1, 6), r) is None  # not a rank-one term
    assert triton_series.horner(torch.randn(3, 5, 1, 2), torch.randn(3, 1, 6, 2), torch.rand(5, 6, 2)) is None
    assert triton_series.horner(torch.randn(3, 5, 1).half(), torch.randn(3, 1, 6).half(), r.half()) is None
    leaf = torch.randn(3, 5, 1, requires_grad=True)
    assert triton_series.horner(leaf, torch.randn(3, 1, 6), r) is None
    assert not interpreted


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus"])
def test_quadrature_kernels_unchanged(activation, interpreted, monkeypatch):
    """tanh/sigmoid/softplus MLP kernels through the kernel equal the torch loop's: to 1e-10 in float64 (the
    issue's bar for quadrature changes; measured 2-3e-16) and to float32 rounding in float32 (1-2e-7)."""
    arch = nk.mlp(3, 1, activation=activation, b_std=0.1)
    x1 = torch.randn(30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x2 = torch.randn(20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = [arch.kernel(x1, x2), arch.kernel(x1.float(), x2.float())]
    assert len(interpreted) >= 2 * 3  # every layer's series, in both dtypes
    monkeypatch.setattr(triton_series, "horner", lambda *a: None)
    loop = [arch.kernel(x1, x2), arch.kernel(x1.float(), x2.float())]
    for got, want, tolerance in zip(fast, loop, (1e-10, 1e-6)):
        for kernel in ("nngp", "ntk"):
            a, b = getattr(got, kernel).double(), getattr(want, kernel).double()
            assert float((a - b).abs().max() / b.abs().max()) < tolerance


def test_a_failing_kernel_falls_back_with_one_warning(interpreted, monkeypatch):
    def broken(fn):
        raise RuntimeError("no sm_90 assembler")

    monkeypatch.setattr(triton_support, "build", broken)
    first, second, r = torch.randn(4, 5, 1), torch.randn(4, 1, 6), torch.rand(5, 6)
    with pytest.warns(RuntimeWarning, match="series kernel failed .*no sm_90 assembler"):
        got = quadrature._horner(first, second, r)
    assert triton_support.disabled() is not None
    expected = sum(r ** m * first[m] * second[m] for m in range(4))
    torch.testing.assert_close(got, expected)
