"""The layerwise fast path's pieces: which modules it takes, how it contracts them, and why it leaves others."""

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical.layerwise import LayerDims, choose_form, find_rule
from ntkit.empirical.methods import LayerwiseMethod
from ntkit.empirical.model_function import ModelFunction
from ntkit.empirical.probe import probe_model


def test_rules_cover_the_known_modules_and_nothing_else():
    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    class SameForward(nn.Linear):
        pass

    known = [nn.Linear(2, 3), SameForward(2, 3), nn.Conv1d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv3d(1, 1, 1),
             nn.Embedding(4, 2), nn.LayerNorm(3), nn.GroupNorm(1, 2), nn.BatchNorm2d(2).eval(),
             nk.Dense(3).build(2)[0]]
    unknown = [OwnForward(2, 3), nn.ConvTranspose2d(1, 1, 1), nn.Embedding(4, 2, max_norm=1.0),
               nn.Embedding(4, 2, scale_grad_by_freq=True), nn.LayerNorm(3, elementwise_affine=False),
               nn.BatchNorm2d(2), nn.MultiheadAttention(4, 2), nn.Bilinear(2, 2, 1)]
    assert all(find_rule(m) is not None for m in known)
    assert all(find_rule(m) is None for m in unknown)


def _structure(model, x):
    return probe_model(ModelFunction(model, torch.float64, x.device), x)


def test_probe_sends_shared_hooked_and_foreign_parameters_to_the_jacobian_path():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.c = nn.Linear(3, 3)
            self.d = nn.Linear(3, 2)
            self.d.weight.requires_grad_(False)

        def forward(self, x):
            h = self.a(x) + self.b.bias  # b's bias read by the parent
            h = self.b(torch.tanh(h))
            return self.d(self.c(h) + self.c(h * 2))  # c called twice: still the fast path

    model = Model().double()
    model.a.register_forward_hook(lambda module, args, output: None)  # a hook of the user's own
    x = torch.randn(3, 3, dtype=torch.float64)
    structure = _structure(model, x)
    assert [layer.name for layer in structure.fast_layers] == ["c", "d"]
    assert structure.fallbacks == {"a": "the module has hooks of its own",
                                   "b": "its parameters are also used outside its own forward"}
    assert structure.rest_names == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert structure.fast_layers[1].roles == {"bias": "d.bias"}  # the frozen weight is not a parameter here
    assert len(structure.fast_layers[0].out_shapes) == 2
    assert structure.outputs == 2 and structure.activation_bytes > 0


def test_modules_the_forward_does_not_call_go_to_the_jacobian_path():
    """An unused head has no inputs to capture; its parameters still count (with a zero share), exactly."""
    from empirical_models import UnusedHead

    model = UnusedHead().double()
    structure = _structure(model, torch.randn(3, 4, dtype=torch.float64))
    assert [layer.name for layer in structure.fast_layers] == ["body"]
    assert structure.fallbacks == {"aux": "the model's forward did not call it",
                                   "aux_conv": "the model's forward did not call it"}
    assert structure.rest_names == ["aux.weight", "aux.bias", "aux_conv.weight", "aux_conv.bias"]


def test_cost_model_chooses_grams_for_dense_layers_and_gradients_for_images():
    net = nk.mlp(2, 64, 3).build(8, seed=0, dtype=torch.float64)
    x = torch.randn(4, 8, dtype=torch.float64)
    method = LayerwiseMethod(ModelFunction(net, torch.float64, x.device), _structure(net, x), "full", 256, 256)
    assert {form for _, form in method.forms.values()} == {"gram"}
    # A 3x3 convolution on 28x28 images: 784 positions, the position Gram (L² per pair) loses to the per-sample
    # gradient (C·K per pair); a Linear applied at 4 positions of a short sequence keeps its Gram.
    image = LayerDims(groups=1, positions=784, patch=289, channels=32)
    short = LayerDims(groups=1, positions=4, patch=65, channels=64)
    assert choose_form(image, 64, 64, 10, "full") == "grad"
    assert choose_form(short, 256, 256, 1, "trace") == "gram"
    # An embedding with a large vocabulary: the dense gradient (V·D per pair) loses to the index Gram.
    assert choose_form(LayerDims(1, 16, 1, 32), 128, 128, 1, "full", dense_patch=50_000) == "gram"


def test_data_dependent_calls_are_refused_clearly():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            for _ in range(int(x.shape[0] > 2) + 1):  # more calls for bigger batches
                x = self.lin(x)
            return x

    model = Loop().double()
    with pytest.raises(RuntimeError, match="ran 2 time\\(s\\) on this batch but 1 time\\(s\\) when probed"):
        from ntkit.empirical import empirical_ntk

        empirical_ntk(model, torch.randn(4, 2, dtype=torch.float64), method="layerwise")


def test_the_capture_engine_is_chosen_by_timing_on_cpus_and_fixed_on_gpus():
    """CPU: each engine timed on two chunks, alternating from the preferred one (autograd), then the faster per
    sample; CUDA: torch.func throughout (no timing, which would wait for the device); an engine that raised is not
    used again."""
    from ntkit.empirical.capture import EngineChooser, preferred_engine

    assert preferred_engine("cpu") == "autograd" and preferred_engine("cuda") == "functorch"
    cpu = EngineChooser("cpu")
    trials = []
    for seconds in (5.0, 9.0, 2.0, 1.0):  # each engine's first run includes its one-time set-up
        trials.append(cpu.next())
        cpu.record(trials[-1], seconds)
    assert trials == ["autograd", "functorch", "autograd", "functorch"]
    assert cpu.next() == "functorch"
    cpu.record("functorch", 3.0)  # the best time per engine counts
    assert cpu.next() == "functorch"
    cpu.fail("functorch")
    assert cpu.next() == "autograd"
    gpu = EngineChooser("cuda")
    for _ in range(3):
        assert gpu.next() == "functorch"
        gpu.record("functorch", 1.0)
    gpu.fail("functorch")
    assert gpu.next() == "autograd"


def test_later_calls_on_a_model_reuse_the_engine_timings():
    """Calls on the same model and key share the timings: once both engines were timed twice, a new call's first
    chunk runs the faster one; another key starts afresh; the memory goes with the model."""
    import gc

    from ntkit.empirical.capture import _MEASURED, chooser_for

    model = nn.Linear(2, 2)
    for seconds in (2.0, 1.0):  # one call of two chunks, then another
        first = chooser_for(model, ("cpu", 1), "cpu")
        first.record(first.next(), 2 * seconds)  # autograd
        first.record(first.next(), seconds)  # functorch
    assert chooser_for(model, ("cpu", 1), "cpu").next() == "functorch"
    assert chooser_for(model, ("cpu", 2), "cpu").next() == "autograd"
    chooser_for(model, ("cpu", 1), "cpu").fail("functorch")
    assert chooser_for(model, ("cpu", 1), "cpu").next() == "autograd"
    before = len(_MEASURED)
    del model, first
    gc.collect()
    assert len(_MEASURED) == before - 1


def test_a_model_torch_func_cannot_capture_falls_back_to_autograd(monkeypatch):
    """An input modified in place after its layer read it: the torch.func engine refuses (version counter), the
    call continues with the autograd engine, which copies the inputs, and the kernel is right."""
    from empirical_models import InPlace, brute_force_ntk
    from ntkit.empirical import capture

    torch.manual_seed(0)
    model, twin = InPlace(True, outputs=3).double(), InPlace(False, outputs=3).double()
    twin.load_state_dict(model.state_dict())
    failed = []
    monkeypatch.setattr(capture.EngineChooser, "next", lambda self: "autograd" if self.failed else "functorch")
    original = capture.EngineChooser.fail
    monkeypatch.setattr(capture.EngineChooser, "fail", lambda self, engine: failed.append(engine) or
                        original(self, engine))
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(nk.empirical_ntk(model, x, method="layerwise"), brute_force_ntk(twin, x),
                               rtol=1e-10, atol=1e-10)
    assert failed == ["functorch"]
