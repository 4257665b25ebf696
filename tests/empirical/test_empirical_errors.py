"""Bad inputs, models without a per-sample Jacobian, and the calling contexts (no_grad, dtypes, numpy, ids)."""

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import empirical_nngp, empirical_ntk
from empirical_models import DT, TokenModel, brute_force_ntk, mlp_inputs, mlp_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def net():
    return mlp_model()


# ----- arguments -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output="block"), ValueError, "output must be one of"),
    (dict(method="exact"), ValueError, "method must be one of"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(batch_size=2.5), TypeError, "batch_size must be a positive integer"),
    (dict(max_memory=-1), ValueError, "max_memory must be a positive"),
    (dict(max_memory="2GB"), TypeError, "max_memory must be a number of bytes"),
])
def test_bad_options_are_named(net, kwargs, error, match):
    with pytest.raises(error, match=match):
        empirical_ntk(net, mlp_inputs(3), **kwargs)


def test_bad_inputs_are_named(net):
    x = mlp_inputs(3)
    with pytest.raises(ValueError, match="x1 and x2 must have the same feature shape"):
        empirical_ntk(net, x, torch.randn(2, 4, dtype=DT))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value\(s\).*index \(1, 2\)"):
        empirical_ntk(net, bad)
    with pytest.raises(ValueError, match="x2 contains"):
        empirical_ntk(net, x, bad)
    with pytest.raises(ValueError, match="x1 is empty"):
        empirical_ntk(net, x[:0])
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        empirical_ntk(net, "points")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        empirical_ntk(lambda t: t, x)
    with pytest.raises(TypeError, match="give both as floats or both as integer ids"):
        empirical_ntk(net, x, torch.zeros(2, 5, dtype=torch.long))


def test_model_errors_are_clear(net):
    x = mlp_inputs(3)
    with pytest.raises(ValueError, match="DenseModule expects inputs with 5 features"):
        empirical_ntk(net, torch.randn(3, 4, dtype=DT))  # the model's own error, unchanged

    class ReturnsCount(nn.Module):  # a tuple of outputs is fine (test_empirical_pytrees.py); a number is not
        def forward(self, x):
            return x, x.shape[0]

    with pytest.raises(TypeError, match=r"the model's output\[1\] is of type int, not a tensor.*output_fn="):
        empirical_ntk(ReturnsCount(), x)

    class ReturnsNothing(nn.Module):
        def forward(self, x):
            return {"logits": None}

    with pytest.raises(TypeError, match="the model returned no tensor"):
        empirical_ntk(ReturnsNothing(), x)

    class DropsBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 2).double()

        def forward(self, x):
            return self.lin(x).sum(0)

    with pytest.raises(ValueError, match="batch axis first"):
        empirical_ntk(DropsBatch(), x)


@pytest.mark.parametrize("layer, match", [
    (nn.BatchNorm1d(4), "BatchNorm1d in training mode uses batch statistics"),
    (nn.Dropout(0.3), "Dropout in training mode is random"),
    (nn.BatchNorm1d(4, track_running_stats=False).eval(), "track_running_stats=False"),
])
def test_batch_coupled_or_random_layers_ask_for_eval(layer, match):
    model = nn.Sequential(nn.Linear(5, 4), layer, nn.Linear(4, 1)).double()
    for fn in (empirical_ntk, empirical_nngp):
        with pytest.raises(ValueError, match=match + r".*Call model\.eval\(\)"):
            fn(model, mlp_inputs(3))
    model.eval()
    if isinstance(layer, nn.BatchNorm1d) and not layer.track_running_stats:
        return
    x = mlp_inputs(3)
    torch.testing.assert_close(empirical_ntk(model, x), brute_force_ntk(model, x), rtol=1e-10, atol=1e-10)


def test_hidden_batch_coupling_is_detected():
    """A custom layer that normalises over the batch is not caught by type, but by f(x[:2]) != [f(x0), f(x1)]."""

    class BatchCentre(nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    model = nn.Sequential(nn.Linear(5, 4), BatchCentre(), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="depends on the other samples in the batch"):
        empirical_ntk(model, mlp_inputs(3))


def test_nonfinite_model_output_is_refused():
    model = nn.Sequential(nn.Linear(5, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(1e300)
    with pytest.raises(FloatingPointError):
        empirical_ntk(model, mlp_inputs(3) * 1e10)


# ----- contexts, dtypes, devices --------------------------------------------------------------------------------

def test_works_under_no_grad_and_inference_mode(net):
    x = mlp_inputs(4)
    reference = empirical_ntk(net, x)
    with torch.no_grad():
        torch.testing.assert_close(empirical_ntk(net, x), reference, rtol=0, atol=0)
    with torch.inference_mode():
        x_inference = mlp_inputs(4)
        torch.testing.assert_close(empirical_ntk(net, x_inference, method="jacobian"), reference, rtol=1e-12,
                                   atol=1e-12)
    assert all(p.grad is None for p in net.parameters())  # the model's .grad fields are never touched


def test_result_dtype_follows_the_inputs():
    net32 = nk.mlp(1, 8, 2).build(3, seed=0)  # float32 parameters
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k32 = empirical_ntk(net32, x.float())
    k64 = empirical_ntk(net32, x)  # float64 inputs: the same weights, computed in float64
    assert k32.dtype == torch.float32 and k64.dtype == torch.float64
    # float32 carries ~7 digits: the two agree to float32 rounding of O(10) entries.
    torch.testing.assert_close(k32.double(), k64, rtol=1e-5, atol=1e-5)
    net64 = nk.mlp(1, 8, 2).build(3, seed=0)
    net64.load_state_dict(net32.state_dict())
    torch.testing.assert_close(k64, brute_force_ntk(net64.double(), x), rtol=1e-10, atol=1e-10)


def test_numpy_inputs_and_integer_ids():
    net = mlp_model()
    x = mlp_inputs(3)
    torch.testing.assert_close(empirical_ntk(net, x.numpy()), empirical_ntk(net, x), rtol=0, atol=0)
    torch.manual_seed(0)
    tokens = TokenModel().double().eval()
    ids = np.array([[1, 2, 0, 3, 3], [4, 4, 4, 0, 0]])
    kernel = empirical_ntk(tokens, ids)  # integer inputs: the model's dtype
    assert kernel.dtype == torch.float64
    torch.testing.assert_close(kernel, brute_force_ntk(tokens, torch.from_numpy(ids)), rtol=1e-10, atol=1e-10)


def test_model_on_another_device_is_refused():
    if not torch.cuda.is_available():
        net = mlp_model()
        net.to("meta")
        with pytest.raises(ValueError, match="is on meta but the inputs are on cpu"):
            empirical_ntk(net, mlp_inputs(2))
        return
    with pytest.raises(ValueError, match="is on cpu but the inputs are on cuda"):
        empirical_ntk(mlp_model(), mlp_inputs(2).cuda())


def test_no_trainable_parameters_gives_zeros():
    net = mlp_model().requires_grad_(False)
    kernel = empirical_ntk(net, mlp_inputs(3), output="diagonal")
    assert kernel.shape == (3, 3, 3) and not kernel.any()


def test_frozen_parameters_are_excluded():
    """Freezing the first layer removes exactly its share: Θ = Θ_rest when its parameters are frozen."""
    net = mlp_model()
    x = mlp_inputs(4)
    full = empirical_ntk(net, x)
    net[0].requires_grad_(False)
    frozen = empirical_ntk(net, x)
    torch.testing.assert_close(frozen, brute_force_ntk(net, x), rtol=1e-10, atol=1e-10)
    assert bool((full.diagonal(dim1=0, dim2=1) > frozen.diagonal(dim1=0, dim2=1)).any())


def test_progress_bar_does_not_change_the_result(capsys):
    net, x = mlp_model(), mlp_inputs(6)
    with_bar = empirical_ntk(net, x, batch_size=2, progress=True)
    torch.testing.assert_close(with_bar, empirical_ntk(net, x, batch_size=2, progress=False), rtol=0, atol=0)
    assert "empirical NTK (layerwise)" in capsys.readouterr().err


class _TF32Like(nn.Module):
    """Stands in for TF32 convolutions: while reduced precision is allowed (cuDNN's default), its output carries a
    rounding-sized relative error (2⁻¹¹, TF32's) that depends on the batch size, as different cuDNN algorithms
    for different batch sizes give; in full precision it is the identity."""

    def forward(self, x):
        if torch.backends.cudnn.allow_tf32 or torch.get_float32_matmul_precision() != "highest":
            return x * (1.0 + 2.0 ** -11 * (x.shape[0] > 1))
        return x


def test_reduced_precision_rounding_is_not_batch_coupling():
    """An eval-mode ResNet-like model (conv, BatchNorm with running statistics, a residual add) whose convolutions
    round like TF32: the probe compares in full precision, so it is accepted; the user's settings are restored."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.round = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), _TF32Like()

        def forward(self, x):
            return x + torch.relu(self.bn(self.round(self.conv(x))))

    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.randn(3, 3, 4, 4)
    assert torch.backends.cudnn.allow_tf32  # torch's default: the stand-in rounds outside the probe
    with torch.no_grad():
        assert not torch.equal(model(x)[:1], model(x[:1]))
    k = empirical_ntk(model, x)
    assert k.shape == (3, 3, 2, 2) and torch.isfinite(k).all()
    assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"


def test_real_batch_coupling_is_still_refused_and_the_error_says_what_was_compared():
    class BatchCentre(nn.Module):  # normalises over the batch: not caught by type
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    model = nn.Sequential(nn.Conv2d(3, 3, 3), BatchCentre(), nn.Flatten(), nn.Linear(12, 1))
    with pytest.raises(ValueError, match=r"of its outputs and intermediates .*compared in float32 with TF32 and "
                                         r"reduced-precision reductions off; tolerance 1000 ulps"):
        empirical_ntk(model, torch.randn(3, 3, 4, 4))


def test_half_precision_outputs_get_a_tolerance_of_their_own_ulps():
    """bfloat16 rounds every output to 8 bits: batched and single outputs 2 of its ulps apart are rounding, not
    coupling; 0.3 apart is coupling. (float32's 1000 ulps would refuse the former: 2·2⁻⁷ ≫ 1.2e-4.)"""
    from ntkit.empirical.probe import _check_independent

    single = torch.tensor([[1.0], [2.0]], dtype=torch.bfloat16)
    eps = torch.finfo(torch.bfloat16).eps
    close = single * (1 + 2 * eps)
    _check_independent(lambda _: single[1:], torch.zeros(2, 1), close, single[:1], 0.0)
    with pytest.raises(ValueError, match="compared in bfloat16 .* tolerance 16 ulps"):
        _check_independent(lambda _: single[1:], torch.zeros(2, 1), single + 0.3, single[:1], 0.0)


def test_rounding_of_large_intermediates_is_not_taken_for_batch_coupling():
    """A sin network on inputs of size 1e4 rounds its pre-activations at ~1e4·ε and sin passes that absolute error
    on to outputs of size 1: the tolerance follows the largest intermediate (this float64 model was refused at 1000
    ulps of its outputs, 16 of 20 seeds), while a batch-centring layer after the same sin is still refused."""
    import ntkit as nk

    net = nk.mlp(1, 4, activation="sin", b_std=0.0).build(in_features=4, seed=0, dtype=torch.float64)
    x = 1e4 * torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = empirical_ntk(net, x)
    assert torch.isfinite(k).all()

    class BatchCentre(nn.Module):
        def forward(self, z):
            return z - z.mean(0, keepdim=True)

    with pytest.raises(ValueError, match="depends on the other samples"):
        empirical_ntk(nn.Sequential(net, BatchCentre()), x)


# ----- torch's errors on the probe, restated in the user's terms ------------------------------------------------

def _plain_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def test_wrong_feature_count_names_x1_its_shape_and_in_features():
    """torch says "shapes cannot be multiplied (1x4 and 3x8)", the 1x4 being the probe's batch, not the user's."""
    for fn in (empirical_ntk, empirical_nngp):
        with pytest.raises(ValueError, match=r"x1 \(shape \(5, 4\), dtype torch.float32\) does not fit the model: "
                                             r"module '0' \(Linear\(in_features=3, out_features=8, bias=True\)\) "
                                             r"expects 3 input features .*\(in_features=3\) but receives 4") as info:
            fn(_plain_mlp(), torch.randn(5, 4))
        assert "1x4 and 3x8" in str(info.value.__cause__)  # torch's own error, chained


def test_wrong_channels_or_layout_to_a_conv_are_named():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    with pytest.raises(ValueError, match=r"x1 \(shape \(2, 5, 6, 6\).*module '0' \(Conv2d\(3, 4.*expects 3 input "
                                         r"channels on axis 1 \(in_channels=3\) but receives 5"):
        empirical_ntk(cnn, torch.randn(2, 5, 6, 6))
    with pytest.raises(ValueError, match=r"x1 \(shape \(2, 108\).*expects inputs laid out as \(N, C, H, W\) but "
                                         r"receives a 2-D tensor"):
        empirical_ntk(cnn, torch.randn(2, 108))
    # a later layer: the Linear after Flatten gets 5·5·4 = 100 features from 7x7 images instead of 64
    with pytest.raises(ValueError, match=r"x1 \(shape \(2, 3, 7, 7\).*module '2' .*in_features=64\) but receives "
                                         r"100"):
        empirical_ntk(cnn, torch.randn(2, 3, 7, 7))


def test_integer_inputs_to_a_float_model_are_refused_clearly():
    ids = torch.randint(0, 3, (5, 3), generator=torch.Generator().manual_seed(0))
    for fn in (empirical_ntk, empirical_nngp):
        with pytest.raises(TypeError, match=r"x1 has integer dtype torch.int64 \(shape \(5, 3\)\), but the model "
                                            r"computes with floats in module '0'.*x1.float\(\).*nn.Embedding"):
            fn(_plain_mlp(), ids)

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 1), nn.Linear(3, 1)

        def forward(self, a, b):
            return self.a(a) + self.b(b)

    with pytest.raises(TypeError, match=r"x1\[1\] has integer dtype torch.int64 \(shape \(5, 3\)\).*module 'b'"):
        empirical_ntk(Branches(), (torch.randn(5, 2), ids))


def test_embedding_models_keep_integer_ids_and_name_bad_ones():
    torch.manual_seed(0)
    tokens = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(12, 2))
    ids = torch.randint(0, 7, (4, 3), generator=torch.Generator().manual_seed(0))
    assert empirical_ntk(tokens, ids).shape == (4, 4, 2, 2)  # ids are what it takes
    bad = ids.clone()
    bad[0, 1] = 9
    with pytest.raises(ValueError, match=r"x1 \(shape \(4, 3\), dtype torch.int64\) does not fit the model: module "
                                         r"'0' \(Embedding\(7, 4\)\) takes ids in \[0, 7\) \(num_embeddings=7\) but "
                                         r"receives ids from \d to 9"):
        empirical_ntk(tokens, bad)
    with pytest.raises(TypeError, match=r"module '0' \(Embedding\(7, 4\)\) takes integer ids in \[0, 7\) but "
                                        r"receives torch.float32 values"):
        empirical_ntk(tokens, ids.float())


def test_a_cuda_request_on_a_cpu_only_torch_says_so(monkeypatch):
    """A model that moves a tensor to CUDA: on a CPU-only build torch raises a bare AssertionError ("Torch not
    compiled with CUDA enabled"). On a CUDA build, Tensor.cuda is made to raise that same error, so the test runs
    ntkit's handling of it everywhere."""
    class ToCuda(nn.Module):
        def forward(self, x):
            return x.cuda()

    if torch.backends.cuda.is_built():
        def no_cuda(self, *args, **kwargs):
            raise AssertionError("Torch not compiled with CUDA enabled")
        monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    model = nn.Sequential(nn.Linear(3, 2), ToCuda())
    with pytest.raises(RuntimeError, match=r"this build of torch \(.*\) has no CUDA support, but the model asked for "
                                           r"a CUDA tensor in module '1' \(ToCuda\(\)\) while running on x1 \(shape "
                                           r"\(5, 3\).*install a CUDA build of torch") as info:
        empirical_ntk(model, torch.randn(5, 3))
    assert isinstance(info.value.__cause__, AssertionError)


def test_other_torch_errors_keep_their_type_and_gain_the_users_shape():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return torch.cat([self.lin(x), torch.zeros(2, 2)], 1)  # wrong batch size for the probe's 1 sample

    with pytest.raises(RuntimeError, match=r"the model failed on x1 \(shape \(5, 3\), dtype torch.float32\), in the "
                                           r"model's own forward \(Broken\): Sizes of tensors must match.*ntkit first "
                                           r"runs the model on the first sample\(s\) of x1") as info:
        empirical_ntk(Broken(), torch.randn(5, 3))
    assert type(info.value) is RuntimeError and "Sizes of tensors must match" in str(info.value.__cause__)


# ----- inference mode with dtype casts ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["auto", "layerwise", "jacobian", "vector_products"])
def test_inference_mode_with_dtype_casts(method):
    """float64 inputs to a float32 model and float32 inputs to a float64 model cast the parameters; under
    torch.inference_mode() those casts (and the inputs) were inference tensors, which autograd refused to save."""
    net32 = nk.mlp(1, 8, 2).build(3, seed=0)
    net64 = nk.mlp(1, 8, 2).build(3, seed=0, dtype=torch.float64)
    x64 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases = [(net32, x64), (net64, x64.float())]
    references = [empirical_ntk(net, x, method=method) for net, x in cases]
    with torch.inference_mode():
        kernels = [empirical_ntk(net, x.clone(), method=method) for net, x in cases]
        with_x2 = empirical_ntk(net32, x64.clone(), x64[:2].clone(), method=method, output="diagonal")
        built_inside = nk.mlp(1, 8, 2).build(3, seed=0)  # its parameters are inference tensors
        inside = empirical_ntk(built_inside, x64.clone(), method=method)
        nngp = empirical_nngp(net32, x64.clone())
    for kernel, reference in zip(kernels + [inside], references + [references[0]]):
        assert kernel.dtype == reference.dtype
        torch.testing.assert_close(kernel, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_x2, references[0][:, :2].diagonal(dim1=2, dim2=3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nngp, empirical_nngp(net32, x64), rtol=0, atol=0)


def test_the_probes_largest_intermediate_is_the_same_kept_on_the_device():
    """On GPUs the probe keeps each op's |max| on the device (no wait per op) and reads it once: the same value
    as the host's float comparison, infinities and NaN ignored alike (checked here through the device branch)."""
    from ntkit.empirical.probe import _UsageWatcher

    values = [torch.tensor(3.0), torch.tensor(float("inf")), torch.tensor(float("nan")),
              torch.tensor(5.0, dtype=torch.float16), torch.tensor(-1.0).abs(), torch.tensor(4.0, dtype=torch.float64)]
    host, device = _UsageWatcher({}, []), _UsageWatcher({}, [])
    for value in values:
        host._note_largest(value, on_host=True)
        device._note_largest(value, on_host=False)
    assert host.largest == device.largest == 5.0
    nan_first = _UsageWatcher({}, [])
    nan_first._note_largest(torch.tensor(float("nan")), on_host=False)
    assert nan_first.largest == 0.0
