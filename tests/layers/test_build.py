"""``arch.build``: the finite network in NTK or standard parameterisation, seeded reproducibly."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.layers import DenseModule


def test_build_gives_the_described_network():
    net = nk.mlp(2, 32, out_features=3, activation="gelu").build(5, seed=0)
    assert isinstance(net, torch.nn.Sequential) and len(net) == 5
    assert [type(m).__name__ for m in net] == ["DenseModule", "GELU", "DenseModule", "GELU", "DenseModule"]
    assert net(torch.randn(7, 5)).shape == (7, 3)


def test_seed_reproducible_and_distinct():
    arch = nk.mlp(1, 16)
    a, b, c = arch.build(4, seed=1), arch.build(4, seed=1), arch.build(4, seed=2)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_seed_gives_the_same_weights_in_float64():
    a, b = nk.mlp(1, 16).build(4, seed=3), nk.mlp(1, 16).build(4, seed=3, dtype=torch.float64)
    assert b[0].weight.dtype == torch.float64
    torch.testing.assert_close(a[0].weight.double(), b[0].weight, rtol=1e-7, atol=0)  # float32 rounding


def test_ntk_parameterisation_scales():
    """z = (w_std/√n) W a + b_std b with W, b ~ N(0, 1)."""
    net = nk.Dense(2000, w_std=1.5, b_std=0.3).build(400, seed=0)
    layer = net[0]
    assert isinstance(layer, DenseModule)
    assert layer.weight_scale == pytest.approx(1.5 / math.sqrt(400)) and layer.bias_scale == 0.3
    # 800,000 N(0,1) draws: the sample std has SE 1/√(2·8e5) ≈ 8e-4; 5 SE tolerance.
    assert layer.weight.std().item() == pytest.approx(1.0, abs=4e-3)
    a = torch.randn(3, 400)
    expected = 1.5 / 20 * a @ layer.weight.T + 0.3 * layer.bias
    torch.testing.assert_close(layer(a), expected, rtol=1e-5, atol=1e-5)


def test_standard_parameterisation_scales():
    """W ~ N(0, w_std²/n), b ~ N(0, b_std²), z = W a + b."""
    layer = nk.Dense(2000, w_std=1.5, b_std=0.3, parameterization="standard").build(400, seed=0)[0]
    assert layer.weight_scale == 1.0 and layer.bias_scale == 1.0
    assert layer.weight.std().item() == pytest.approx(1.5 / 20, rel=4e-3)  # 5 SE as above
    # 2000 bias draws: relative SE of the std ≈ 1/√4000 ≈ 1.6%; 5 SE.
    assert layer.bias.std().item() == pytest.approx(0.3, rel=0.08)


def test_build_respects_dtype_and_device():
    net = nk.mlp(1, 8).build(3, seed=0, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in net.parameters())


def test_unseeded_build_uses_the_global_generator():
    torch.manual_seed(5)
    a = nk.mlp(1, 8).build(3)
    torch.manual_seed(5)
    b = nk.mlp(1, 8).build(3)
    assert torch.equal(a[0].weight, b[0].weight)


def test_quadrature_activation_builds_an_elementwise_module():
    act = nk.Activation(lambda u: u ** 3, name="cube")
    net = nk.Serial(nk.Dense(4), act, nk.Dense(1)).build(2, seed=0)
    u = torch.randn(5, 2)
    torch.testing.assert_close(net[1](u), u ** 3)
    assert "cube" in repr(net)
