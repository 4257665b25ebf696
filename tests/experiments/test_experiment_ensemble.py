"""train_together: many nk.mlp networks trained side by side make exactly nk.train's updates.

Float64 networks, so the comparison is to rounding (1e-12): each network's outputs, final cost and trained
parameters after 30 steps of η = 1 equal those of nk.train run on a copy of it. The group size is forced small so
that several groups are trained.
"""

import copy

import pytest
import torch

import ntkit as nk
from ntkit.experiments import ensemble
from ntkit.experiments.ensemble import train_together


@pytest.mark.parametrize("group_bytes", [ensemble.GROUP_BYTES, 1])
def test_equals_nk_train_network_by_network(monkeypatch, group_bytes):
    monkeypatch.setattr(ensemble, "GROUP_BYTES", group_bytes)  # 1 byte: one network per group
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    x_test = torch.randn(7, 3, generator=g, dtype=torch.float64)
    arch = nk.mlp(3, 40, b_std=0.1)
    nets = [arch.build(3, seed=s, dtype=torch.float64) for s in range(4)]
    copies = [copy.deepcopy(net) for net in nets]
    outputs, costs = train_together(nets, x, y, steps=30, learning_rate=1.0, x_test=x_test)
    assert outputs.shape == (4, 7) and costs.shape == (4,)
    for net, ref, out, cost in zip(nets, copies, outputs, costs):
        result = nk.train(ref, x, y, steps=30, learning_rate=1.0, x_test=x_test, progress=False)
        torch.testing.assert_close(out, result.test_outputs[-1], rtol=0, atol=1e-12)
        torch.testing.assert_close(cost, result.losses[-1], rtol=0, atol=1e-12)
        for p, q in zip(net.parameters(), ref.parameters()):  # trained in place, as nk.train does
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)
    assert float(costs.max()) < float(0.5 * y.pow(2).mean())  # and they did train


def test_refuses_what_it_cannot_stack():
    x, y = torch.randn(3, 2), torch.randn(3)
    with pytest.raises(ValueError, match="at least one network"):
        train_together([], x, y, steps=1, learning_rate=1.0)
    with pytest.raises(TypeError, match="nn.Sequential"):
        train_together([torch.nn.Linear(2, 1)], x, y, steps=1, learning_rate=1.0)
    mixed = [nk.mlp(1, 8).build(2, seed=0), nk.mlp(1, 16).build(2, seed=0)]
    with pytest.raises(ValueError, match="same architecture"):
        train_together(mixed, x, y, steps=1, learning_rate=1.0)
    foreign = [torch.nn.Sequential(torch.nn.Linear(2, 1))]
    with pytest.raises(ValueError, match="not a DenseModule"):
        train_together(foreign, x, y, steps=1, learning_rate=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        train_together([nk.mlp(1, 8).build(2, seed=0)], x, y, steps=1, learning_rate=0.0)
