"""Memory budget: chunk planning, chunked results equal to whole ones, and refusals with the estimate."""

import re

import pytest
import torch
from torch import nn

import ntkit.empirical.api as api_module
import ntkit.empirical.methods as methods_module
from ntkit._memory import available_bytes
from ntkit.empirical import empirical_ntk
from ntkit.empirical.memory import DEFAULT_FRACTION, Cost, memory_budget, plan_chunks
from ntkit.empirical.features import feature_bytes
from ntkit.empirical.methods import LayerwiseMethod
from ntkit.empirical.model_function import ModelFunction
from ntkit.empirical.probe import probe_model
from empirical_models import brute_force_ntk, mlp_inputs, mlp_model, zoo_case

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
MiB = 2 ** 20


class FreeWeights(nn.Module):
    """Only bare parameters (no layer the fast path knows): a 1-hidden-layer net written by hand, 1336 weights
    (10.7 kB in float64), 3 outputs."""

    def __init__(self, d=5, width=167, outputs=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(d, width, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(width, outputs, generator=g, dtype=torch.float64) / width ** 0.5)

    def forward(self, x):
        return torch.tanh(x @ self.w1) @ self.w2


def _plans(monkeypatch):
    """Record the plans the methods make."""
    seen = []
    original = methods_module.plan_chunks

    def recording(*args, **kwargs):
        plan = original(*args, **kwargs)
        seen.append(plan)
        return plan

    monkeypatch.setattr(methods_module, "plan_chunks", recording)
    return seen


def test_default_budget_is_a_fraction_of_free_memory():
    budget = memory_budget(None, torch.device("cpu"))
    assert 0 < budget <= DEFAULT_FRACTION * available_bytes("cpu") * 1.05  # free memory moves a little
    assert memory_budget(123456, torch.device("cpu")) == 123456


def test_planner_fits_the_budget_and_caches_when_it_can():
    cost = Cost(per_sample=1000, feature=100, per_pair=10, fixed=500)
    plan = plan_chunks(cost, 1000, 1000, True, output_bytes=10_000, budget=300_000, batch_size=None, what="x")
    assert plan.estimate <= 300_000 and plan.cache  # 1000 x 100 B of features fit in half the room

    def need(c):
        return 10_000 + 500 + c * (1000 + 200) + c * c * 10 + 1000 * 100

    assert need(plan.chunk) <= 300_000 < need(plan.chunk + 1)  # the largest chunk that fits
    tight = plan_chunks(cost, 1000, 1000, True, output_bytes=10_000, budget=30_000, batch_size=None, what="x")
    assert not tight.cache and tight.chunk >= 1 and tight.estimate <= 30_000


def test_planner_refuses_with_the_estimate():
    cost = Cost(per_sample=3 * 2 ** 30, feature=0, per_pair=0)
    with pytest.raises(MemoryError, match=r"needs about 3\.00 GiB even one sample at a time .*budget is 1\.00 GiB"):
        plan_chunks(cost, 10, 10, True, output_bytes=100, budget=2 ** 30, batch_size=None, what="the thing")
    with pytest.raises(MemoryError, match="batch_size=8"):
        plan_chunks(Cost(per_sample=MiB, feature=0, per_pair=0), 10, 10, True, output_bytes=100, budget=4 * MiB,
                    batch_size=8, what="the thing")


def test_a_small_budget_chunks_and_gives_the_same_kernel(monkeypatch):
    net, x = mlp_model(), mlp_inputs(40)
    whole = empirical_ntk(net, x, method="jacobian")
    plans = _plans(monkeypatch)
    for method in ("layerwise", "jacobian"):
        chunked = empirical_ntk(net, x, method=method, max_memory=400_000)
        assert plans[-1].chunk < 40 and plans[-1].estimate <= 400_000
        torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)
    # 60 kB: no room to keep every chunk's features, so column features are recomputed per block.
    for x2 in (None, mlp_inputs(23, seed=1)):
        chunked = empirical_ntk(net, x, x2, output="trace", max_memory=60_000)
        assert not plans[-1].cache and plans[-1].chunk < 23
        reference = whole if x2 is None else empirical_ntk(net, x, x2, method="jacobian")
        torch.testing.assert_close(chunked, reference.diagonal(dim1=2, dim2=3).sum(-1), rtol=1e-10, atol=1e-10)


def test_the_result_alone_too_big_is_refused_in_gib():
    """20,000² x 10² float32 entries is 149 GiB: refused before anything large is allocated."""
    net = nn.Linear(5, 10)
    with pytest.raises(MemoryError, match=r"the result alone is 149\.01 GiB.*output='trace'"):
        empirical_ntk(net, torch.randn(20_000, 5))


def test_jacobian_refused_where_the_layerwise_path_fits():
    """A 1.03M-parameter MLP with 10 outputs: one sample's Jacobian is 10 x 4.1 MB in float32, over a 40 MB
    budget before any working memory; the layerwise features (sizes of widths, not of parameters) fit easily."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))
    x = torch.randn(6, 16)
    with pytest.raises(MemoryError, match=r"even one sample at a time .*budget is 38\.15 MiB"):
        empirical_ntk(net, x, method="jacobian", max_memory=40_000_000)
    kernel = empirical_ntk(net, x, method="layerwise", max_memory=40_000_000)
    assert kernel.shape == (6, 6, 10, 10) and torch.isfinite(kernel).all()


def test_vector_products_fall_back_to_fewer_columns(monkeypatch):
    """When even one sample with all of its O = 3 columns does not fit (about 54 kB with a 10.7 kB parameter
    vector per column), vector products vmap fewer columns at a time."""
    model = FreeWeights()
    x = mlp_inputs(5)
    reference = brute_force_ntk(model, x)
    seen = []
    original = api_module.VectorProductMethod.contract

    def spy(self, x1, x2):
        seen.append(self.basis_batch)
        return original(self, x1, x2)

    monkeypatch.setattr(api_module.VectorProductMethod, "contract", spy)
    kernel = empirical_ntk(model, x, method="vector_products", max_memory=35_000)
    torch.testing.assert_close(kernel, reference, rtol=1e-10, atol=1e-10)
    assert seen and all(b is not None and 1 <= b < 3 for b in seen)
    with pytest.raises(MemoryError, match="even one sample and one column at a time"):
        empirical_ntk(model, x, method="vector_products", max_memory=5_000)


def test_auto_switches_to_vector_products_when_jacobians_do_not_fit(monkeypatch):
    """One sample's Jacobian path needs ~150 kB (two 32 kB Jacobian rows of 3 outputs, vmap(jacrev) working
    memory), vector products ~54 kB: a 60 kB budget takes the second."""
    model, x = FreeWeights(), mlp_inputs(5)
    chosen = []
    original = api_module._choose_method

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        chosen.append(result[0].name)
        return result

    monkeypatch.setattr(api_module, "_choose_method", spy)
    empirical_ntk(model, x)
    empirical_ntk(model, x, max_memory=60_000)
    assert chosen == ["jacobian", "vector_products"]


def test_refusal_message_names_the_method_and_shape():
    with pytest.raises(MemoryError) as info:
        empirical_ntk(mlp_model(), mlp_inputs(3), max_memory=1000)
    message = str(info.value)
    assert "the empirical NTK (3x3, output='full', method='layerwise')" in message
    assert re.search(r"needs about \d+\.\d\d (KiB|MiB)", message)


@pytest.mark.parametrize("name", ["mlp", "strided_cnn", "tokens", "residual_layernorm", "free_parameter"])
def test_the_feature_estimate_is_what_the_features_hold(name):
    """The planner's per-sample feature bytes equal the bytes the layerwise features really hold (views of
    output-major gradients count their storage once)."""
    model, x, _ = zoo_case(name)
    fn = ModelFunction(model, torch.float64, x.device)
    method = LayerwiseMethod(fn, probe_model(fn, x), "full", 4, 4)
    held = sum(feature_bytes(f) for f in method.features(x))
    assert held == 4 * method.cost().feature


def test_the_budget_counts_the_batched_backward_and_the_working_set_limit_does_not():
    """The torch.func capture engine runs every backward op on the O·n batch: the layerwise cost counts O times the
    forward's activations per sample against the budget, while the working-set limit on the chunk size sees the
    rest only (``Cost.working``)."""
    model, x, _ = zoo_case("strided_cnn")
    fn = ModelFunction(model, torch.float64, x.device)
    structure = probe_model(fn, x)
    cost = LayerwiseMethod(fn, structure, "full", 4, 4).cost()
    assert cost.per_sample - cost.working == structure.outputs * structure.activation_bytes > 0
    wide = Cost(per_sample=10 * 2 ** 20, feature=0, per_pair=0, working=2 ** 20)
    plan = plan_chunks(wide, 1000, 1000, True, 0, 2 ** 40, None, "k", working_set=64 * 2 ** 20)
    assert plan.chunk == 64  # 64 MiB of working set / 1 MiB, not / 10 MiB
    tight = plan_chunks(wide, 1000, 1000, True, 0, 100 * 2 ** 20, None, "k", working_set=64 * 2 ** 20)
    assert tight.chunk <= 100 // 10  # the budget still counts all 10 MiB per sample
