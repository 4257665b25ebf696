"""Every method and output mode against brute-force per-sample autograd Jacobians (float64, 1e-10).

The zoo (empirical_models.py) covers an nk.mlp built network (DenseModule scales), CNNs with stride, padding
(zeros, reflect, circular, 'same'), dilation and groups in 1, 2 and 3 dimensions, a residual block with
LayerNorm, an embedding model with padding_idx and a position-wise Linear and GroupNorm, a model with a free
nn.Parameter, a frozen layer and a custom layer, tied weights, eval-mode BatchNorm, layers called twice per
sample, layers the forward never calls, and a TransformerEncoderLayer.
"""

import pytest
import torch

import ntkit as nk
import ntkit.empirical.methods as methods_module
from ntkit.empirical import empirical_ntk
from empirical_models import ZOO, InPlace, brute_force_ntk, reduce_output, zoo_case

METHODS = ("auto", "layerwise", "jacobian", "vector_products")
OUTPUTS = ("full", "trace", "diagonal")
TOL = dict(rtol=1e-10, atol=1e-10)
# torch loads its forward-AD (jvp) decompositions through torch.jit.script, which warns on torch 2.13.
# The fused TransformerEncoderLayer kernel has no forward-mode derivative: vector products fall back to reverse
# mode, with a warning (tested on its own below).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:ntkit.empirical_ntk. forward-mode products failed:RuntimeWarning")]


@pytest.fixture(scope="module")
def references():
    """Per model: the model, x1 (4 samples), x2 (3 samples), brute-force full NTKs Θ(x1, x1) and Θ(x1, x2)."""
    return {name: _with_references(*zoo_case(name)) for name in ZOO}


def _with_references(model, x1, x2):
    return model, x1, x2, brute_force_ntk(model, x1), brute_force_ntk(model, x1, x2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_method_and_output_matches_brute_force(references, name, method):
    model, x1, x2, ref11, ref12 = references[name]
    for output in OUTPUTS:
        symmetric = empirical_ntk(model, x1, output=output, method=method)
        cross = empirical_ntk(model, x1, x2, output=output, method=method)
        torch.testing.assert_close(symmetric, reduce_output(ref11, output), **TOL)
        torch.testing.assert_close(cross, reduce_output(ref12, output), **TOL)
        assert symmetric.dtype == torch.float64


@pytest.mark.parametrize("engine", ["autograd", "functorch"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_both_capture_engines_match_brute_force(references, name, engine, monkeypatch):
    """The layerwise capture by autograd (is_grads_batched) and by torch.func (vjp vmapped over the outputs) give
    the same kernels; where torch.func cannot run a model the call falls back to autograd, and the zoo's plain
    networks must not need that (so the torch.func engine is really exercised)."""
    from ntkit.empirical import capture

    used = []
    original = capture.capture_layers
    monkeypatch.setattr(capture.EngineChooser, "next", lambda self: "autograd" if self.failed else engine)
    monkeypatch.setattr(capture, "capture_layers", lambda *a, **k: used.append(a[3] if len(a) > 3 else
                                                                                  k.get("engine")) or original(*a, **k))
    model, x1, x2, ref11, ref12 = references[name]
    for output in OUTPUTS:
        torch.testing.assert_close(empirical_ntk(model, x1, x2, output=output, method="layerwise"),
                                   reduce_output(ref12, output), **TOL)
    torch.testing.assert_close(empirical_ntk(model, x1, method="layerwise"), ref11, **TOL)
    if name in ("mlp", "strided_cnn", "grouped_cnn", "residual_layernorm", "batchnorm_eval", "shared_layers"):
        assert used and set(used) == {engine}, used  # every chunk ran the engine asked for, without falling back


@pytest.mark.parametrize("name", sorted(ZOO))
def test_x2_none_equals_x2_is_x1_and_is_exactly_symmetric(references, name):
    model, x1, _, _, _ = references[name]
    symmetric = empirical_ntk(model, x1)
    torch.testing.assert_close(symmetric, empirical_ntk(model, x1, x1.clone()), **TOL)
    # Θ(x, x')_ab = Θ(x', x)_ba holds bit for bit: mirrored blocks are copies, diagonal blocks symmetrised.
    assert torch.equal(symmetric, symmetric.permute(1, 0, 3, 2))


@pytest.mark.parametrize("form", ["gram", "grad"])
@pytest.mark.parametrize("name", ["strided_cnn", "grouped_cnn", "tokens", "shared_layers"])
def test_both_contraction_forms_of_weight_sharing_layers(references, name, form, monkeypatch):
    """Conv, position-wise Linear and Embedding layers have two exact contractions (position Gram or per-sample
    gradient); the cost model picks one, so force each in turn."""
    monkeypatch.setattr(methods_module, "choose_form", lambda *args, **kwargs: form)
    model, x1, x2, ref11, ref12 = references[name]
    for output in OUTPUTS:
        torch.testing.assert_close(empirical_ntk(model, x1, x2, output=output, method="layerwise"),
                                   reduce_output(ref12, output), **TOL)
    torch.testing.assert_close(empirical_ntk(model, x1, method="layerwise"), ref11, **TOL)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("method", ["layerwise", "jacobian", "vector_products"])
def test_chunked_blocks_equal_the_whole(references, method, batch_size):
    """Blocks of 1-3 samples (ragged last block, mirrored blocks below the diagonal) give the same kernel."""
    model, x1, x2, ref11, ref12 = references["strided_cnn"]
    torch.testing.assert_close(empirical_ntk(model, x1, method=method, batch_size=batch_size), ref11, **TOL)
    torch.testing.assert_close(empirical_ntk(model, x1, x2, output="trace", method=method, batch_size=batch_size),
                               reduce_output(ref12, "trace"), **TOL)


def test_methods_agree_on_a_larger_mlp():
    """All methods agree with each other on 70 points, which the planner splits into several symmetric blocks
    (the finer tiling for x2=None kicks in above 64 points)."""
    net = nk.mlp(2, 64, out_features=4, b_std=0.2).build(10, seed=3, dtype=torch.float64)
    x = torch.randn(70, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    reference = empirical_ntk(net, x, method="jacobian")
    for method in ("layerwise", "vector_products"):
        torch.testing.assert_close(empirical_ntk(net, x, method=method), reference, **TOL)
    for output in ("trace", "diagonal"):
        torch.testing.assert_close(empirical_ntk(net, x, output=output), reduce_output(reference, output), **TOL)


def test_standard_parameterization_and_zero_scales():
    """nn.Linear-like scales of 1 (standard parameterisation) and a zero bias scale (b_std = 0)."""
    for arch in (nk.mlp(1, 9, 2, parameterization="standard", b_std=0.5), nk.mlp(2, 9, 2, b_std=0.0)):
        net = arch.build(3, seed=0, dtype=torch.float64)
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        torch.testing.assert_close(empirical_ntk(net, x), brute_force_ntk(net, x), **TOL)


def test_outputs_of_any_shape_are_flattened():
    """A model returning (N, 2, 3) has O = 6, ordered as reshape(N, -1)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Unflatten(1, (2, 3))).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    kernel = empirical_ntk(model, x)
    assert kernel.shape == (3, 3, 6, 6)
    torch.testing.assert_close(kernel, brute_force_ntk(model, x), **TOL)


def test_sequence_first_layer_goes_to_the_jacobian_path():
    """A Linear applied to a (L, N, D) tensor does not have the batch on axis 0: the probe sees it and the
    result stays exact."""

    class SequenceFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(3, 5)
            self.head = torch.nn.Linear(5, 2)

        def forward(self, x):  # x (N, L, 3)
            h = torch.tanh(self.inner(x.transpose(0, 1)))  # (L, N, 5)
            return self.head(h.mean(0))

    torch.manual_seed(0)
    model = SequenceFirst().double()
    x = torch.randn(4, 3, 3, dtype=torch.float64)  # L = N would hide the problem; L = 3, N = 4
    torch.testing.assert_close(empirical_ntk(model, x), brute_force_ntk(model, x), **TOL)
    from ntkit.empirical.model_function import ModelFunction
    from ntkit.empirical.probe import probe_model

    structure = probe_model(ModelFunction(model, torch.float64, x.device), x)
    assert "inner" in structure.fallbacks and [layer.name for layer in structure.fast_layers] == ["head"]


def test_inplace_operations_after_a_fast_layer():
    """Cotangents are taken at a separate zero leaf, so an in-place ReLU on a layer's output does not corrupt
    them; an input modified in place after its layer read it is detected (version counter) and re-captured. The
    in-place model cannot be differentiated by ordinary autograd (self.b's saved input changed), so its
    reference is the brute-force NTK of the same function written out of place."""
    torch.manual_seed(1)
    model = InPlace(inplace=True).double()
    twin = InPlace(inplace=False).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(model, x, method="layerwise"), brute_force_ntk(twin, x), **TOL)


class _WritesIntoNewTensor(torch.nn.Module):
    """In-place writes of batched values into a fresh tensor: valid autograd, but torch.func.vmap refuses it.
    ``gain`` is a bare parameter, so even the layerwise path needs per-sample Jacobians."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 2.0, 4))

    def forward(self, x):
        h = torch.tanh(self.a(x)) * self.gain
        out = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        out[:, 0] = h[:, 0] * h[:, 1]
        out[:, 1] = h[:, 2] + h[:, 3]
        return out


@pytest.mark.parametrize("method", ["layerwise", "jacobian"])
def test_models_vmap_cannot_batch_fall_back_to_loops(method):
    torch.manual_seed(2)
    model = _WritesIntoNewTensor().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="cannot be vmapped"):
        kernel = empirical_ntk(model, x, method=method)
    torch.testing.assert_close(kernel, brute_force_ntk(model, x), **TOL)


def test_vector_products_fall_back_to_reverse_mode():
    """The fused attention kernel of TransformerEncoderLayer has no forward-mode (nor double-backward) formula:
    the block comes from vjps of both sides, still exact."""
    model, x1, x2, _, ref12 = _with_references(*zoo_case("transformer", 3, 2))
    with pytest.warns(RuntimeWarning, match="forward-mode products failed.*reverse-mode products of both sides"):
        kernel = empirical_ntk(model, x1, x2, method="vector_products", output="diagonal")
    torch.testing.assert_close(kernel, reduce_output(ref12, "diagonal"), **TOL)


def test_vector_products_fall_back_to_one_product_at_a_time(monkeypatch):
    """Forward-mode products of that model do batch; make vmap fail to exercise the unbatched loop."""
    import ntkit.empirical.vector_products as vector_products

    def failing_vmap(*args, **kwargs):
        def refuse(*a, **k):
            raise RuntimeError("vmap: not batchable (simulated)")

        return refuse

    monkeypatch.setattr(vector_products, "vmap", failing_vmap)
    model, x1, x2, _, ref12 = _with_references(*zoo_case("grouped_cnn", 3, 2))
    with pytest.warns(RuntimeWarning, match="simulated.*cannot be vmapped, so one product at a time"):
        kernel = empirical_ntk(model, x1, x2, method="vector_products")
    torch.testing.assert_close(kernel, ref12, **TOL)
