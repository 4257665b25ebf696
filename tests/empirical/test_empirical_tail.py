"""The linear read-out tail (``ntkit.empirical.tail``): which layers it takes, and that its shared cotangents are the
batched backward pass's. Its kernels against brute force are in test_empirical_exactness.py (the zoo's
linear_tail, line_tail and inplace_tail models)."""

import pytest
import torch
from torch import nn

from empirical_models import DT, ZOO, zoo_case
from ntkit.empirical.capture import _all_cotangents, _cotangents, recorded_forward
from ntkit.empirical.layerwise import _weight_gradient, conv_patches
from ntkit.empirical.model_function import ModelFunction
from ntkit.empirical.probe import probe_model
from ntkit.empirical.tail import find_tail, tail_cotangents


class TutorialLikeCNN(nn.Module):
    """The torch.func tutorial's CNN, small: ReLU after the first two convolutions, none after the third."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.conv3 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        return self.fc(self.conv3(x).flatten(1))


class ScaledOutput(nn.Module):
    """The output is a product computed after the read-out, not the read-out itself: no tail."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x) * 2.0


def _capture(model, x):
    """The recorded calls and the output of one capture forward pass."""
    fn = ModelFunction(model, DT, x.device)
    return recorded_forward(fn, probe_model(fn, x).fast_layers, x)


@pytest.mark.parametrize("model, x, expected", [
    (TutorialLikeCNN(), torch.randn(3, 2, 8, 8), ["fc", "conv3"]),
    (ZOO["linear_tail"][0](), ZOO["linear_tail"][1](3, 0), ["head2", "head1", "conv3", "conv2"]),
    (ZOO["inplace_tail"][0](), ZOO["inplace_tail"][1](3, 0), ["head"]),  # the ReLU modified conv's output
    (ScaledOutput(), torch.randn(3, 4), None),
])
def test_the_tail_is_the_linear_read_out_and_stops_at_the_first_nonlinearity(model, x, expected):
    model, x = model.to(DT), x.to(DT)
    calls, f = _capture(model, x)
    found = find_tail(calls, f, x.shape[0])
    if expected is None:
        assert found is None
        return
    chain, u = found
    assert [call.layer.name for call in chain] == expected
    assert u is chain[-1].input  # the backward pass starts at the deepest tail layer's input


@pytest.mark.parametrize("name", ["linear_tail", "line_tail", "inplace_tail", "strided_cnn", "mlp"])
def test_shared_cotangents_equal_the_batched_backward_pass(name):
    """∂f_a/∂δ at every fast layer, with the tail's from one sample and the rest from its input u, equal those of
    the backward pass from f over the whole batch; the tail's are stride-0 views along the samples."""
    model, x, _ = zoo_case(name, n1=5)
    calls, f = _capture(model, x)
    n, outputs = f.shape
    seeds = torch.eye(outputs, dtype=DT)[:, None, :].expand(outputs, n, outputs)
    expected = _cotangents(f, seeds, [call.delta for call in calls])
    got = _all_cotangents(calls, f)
    chain = find_tail(calls, f, n)[0]
    for call, g, want in zip(calls, got, expected):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-14)
        assert (g.stride(0) == 0) == any(call is c for c in chain)


@pytest.mark.parametrize("outputs, shared", [(1, False), (100, True)])
def test_tails_are_shared_where_they_save_enough(outputs, shared, monkeypatch):
    """By default (``MIN_SAVED_FLOPS``) a tail is shared only where the batched backward pass through it costs
    more than the replay's overhead: a Linear(512, O) read-out of 256 samples costs 131,072·O multiply-adds."""
    from ntkit.empirical import capture
    from ntkit.empirical.tail import MIN_SAVED_FLOPS, batched_backward_flops

    monkeypatch.setattr(capture, "MIN_SAVED_FLOPS", MIN_SAVED_FLOPS)
    model = nn.Sequential(nn.Linear(8, 512), nn.Tanh(), nn.Linear(512, outputs)).to(DT)
    calls, f = _capture(model, torch.randn(256, 8, dtype=DT))
    chain = find_tail(calls, f, 256)[0]
    assert batched_backward_flops(chain, outputs) == 256 * 512 * outputs * outputs
    replayed = []
    monkeypatch.setattr(capture, "tail_cotangents", lambda *args: replayed.append(args) or tail_cotangents(*args))
    _all_cotangents(calls, f)
    assert bool(replayed) == shared


def test_a_replay_that_differs_from_the_forward_pass_is_not_used():
    """If replaying the tail on one sample does not give the model's first output row (here: the replay is handed
    another weight), the shared cotangents are refused and the caller runs the full backward pass."""
    model, x, _ = zoo_case("linear_tail")
    calls, f = _capture(model, x)
    chain, u = find_tail(calls, f, x.shape[0])
    assert tail_cotangents(chain, u, f) is not None
    chain[0].tensors["weight"] = chain[0].tensors["weight"] * 1.01
    assert tail_cotangents(chain, u, f) is None


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv1d(2, 3, 2, dilation=2)])
def test_weight_gradient_of_shared_cotangents_is_the_per_sample_product(conv):
    """The one-product path for cotangents shared by all samples (stride 0) equals the per-output loop on the same
    cotangents materialised."""
    conv = conv.to(DT)
    g = torch.Generator().manual_seed(0)
    spatial = len(conv.kernel_size)
    x = torch.randn(4, conv.in_channels, *([7] * spatial), generator=g, dtype=DT)
    positions = conv(x).shape[2:].numel()
    shared = torch.randn(1, 5, 1, conv.out_channels, positions, generator=g, dtype=DT).expand(4, -1, -1, -1, -1)
    patches = conv_patches(conv, x)
    torch.testing.assert_close(_weight_gradient(shared, patches), _weight_gradient(shared.contiguous(), patches),
                               rtol=1e-12, atol=1e-12)


def test_weight_gradient_of_shared_cotangents_at_positions_of_a_linear_layer():
    """The same for a Linear applied at L positions (as ``LinearRule`` passes it: one group, contiguous patches)."""
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(4, 1, 6, 3, generator=g, dtype=DT)  # (n, G, L, K)
    shared = torch.randn(1, 2, 1, 5, 6, generator=g, dtype=DT).expand(4, -1, -1, -1, -1)  # (n, O, G, C, L)
    torch.testing.assert_close(_weight_gradient(shared, patches), _weight_gradient(shared.contiguous(), patches),
                               rtol=1e-12, atol=1e-12)
