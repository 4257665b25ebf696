"""Brute-force reference and the model zoo of the empirical-NTK tests.

``brute_force_ntk`` uses nothing from ntkit.empirical nor torch.func: one ``torch.autograd.grad`` per sample and
per output gives the per-sample Jacobian row J(x)_a = ∂f_a(x)/∂θ, and Θ(x, x')_ab = J(x)_a · J(x')_b. Agreement
with it is evidence, not a tautology.
"""

import torch
from torch import nn

import ntkit as nk

DT = torch.float64


def jacobian_rows(model, x):
    """(N, O, P) per-sample Jacobian of ``model`` over its trainable parameters, by plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1]).reshape(-1)
        per_output = []
        for a in range(out.shape[0]):
            grads = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
            per_output.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                         for g, p in zip(grads, params)]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows)


def brute_force_ntk(model, x1, x2=None, output="full"):
    j1 = jacobian_rows(model, x1)
    j2 = j1 if x2 is None else jacobian_rows(model, x2)
    full = torch.einsum("xap,ybp->xyab", j1, j2)
    return reduce_output(full, output)


def reduce_output(full, output):
    if output == "full":
        return full
    diagonal = torch.diagonal(full, dim1=2, dim2=3)
    return diagonal.sum(-1) if output == "trace" else diagonal


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ----- the models ----------------------------------------------------------------------------------------------

def mlp_model():
    """nk.mlp built in the NTK parameterisation (DenseModule with weight/bias scales), 3 outputs."""
    return nk.mlp(2, 12, out_features=3, activation="erf", w_std=1.3, b_std=0.4).build(5, seed=1, dtype=DT)


def mlp_inputs(n, seed=0):
    return torch.randn(n, 5, generator=seeded(seed), dtype=DT)


class StridedCNN(nn.Module):
    """Conv2d with stride and padding, then stride 1 with padding, then a Linear read-out."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=1, padding=2)
        self.head = nn.Linear(5 * 6 * 6, 2)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(1))


class GroupedCNN(nn.Module):
    """Grouped, dilated and strided Conv2d; a Conv1d with padding='same' and reflect padding; a Conv3d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.depthwise = nn.Conv2d(6, 6, 2, stride=(2, 1), groups=6, bias=False)
        self.line = nn.Conv1d(6, 3, 4, padding="same", padding_mode="reflect")
        self.volume = nn.Conv3d(1, 2, (2, 2, 1), stride=(1, 2, 1), padding=(1, 0, 0), padding_mode="circular")
        self.head = nn.Linear(2 * 4 * 3 * 4, 2)

    def forward(self, x):  # x (N, 4, 6, 5)
        h = torch.tanh(self.conv(x))  # (N, 6, 6, 5)
        h = torch.sin(self.depthwise(h))  # (N, 6, 3, 4)
        h = torch.tanh(self.line(h.flatten(2)))  # (N, 3, 12)
        h = self.volume(h.reshape(-1, 1, 3, 3, 4))  # (N, 2, 4, 1, 4)
        return self.head(torch.cat([h, h.square(), h + 1], 3).flatten(1))


class ResidualLayerNorm(nn.Module):
    """x -> x + W2 σ(W1 LayerNorm(x)), then LayerNorm and a Linear read-out (a pre-norm residual block)."""

    def __init__(self, d=6):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.inner = nn.Linear(d, 10)
        self.outer = nn.Linear(10, d)
        self.final = nn.LayerNorm(d, elementwise_affine=True, bias=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = x + self.outer(torch.nn.functional.gelu(self.inner(self.norm(x))))
        return self.head(self.final(h))


class TokenModel(nn.Module):
    """Embedding (with padding_idx) of a token sequence, a Linear applied at every position, GroupNorm over
    channels, mean over positions: exercises position Grams and index Grams."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = nn.Linear(dim, 6)
        self.norm = nn.GroupNorm(2, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, ids):  # (N, L)
        h = torch.tanh(self.mix(self.embed(ids)))  # (N, L, 6)
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h.mean(1))


class FreeParameter(nn.Module):
    """A bare nn.Parameter used in forward, a frozen layer, and a layer with a custom forward."""

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x) + self.weight.sum()

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.custom = self.Scaled(8, 2)

    def forward(self, x):
        h = torch.tanh(self.first(x)) * self.gain
        return self.custom(torch.sin(self.frozen(h)))


class TiedWeights(nn.Module):
    """An embedding whose weight is reused as the output projection, and a Linear whose weight its parent reads."""

    def __init__(self, vocab=6, dim=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        h = torch.tanh(self.proj(self.embed(ids))).mean(1) + self.proj.weight.sum(0)
        return self.out(h)


class BatchNormEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


class SharedLayers(nn.Module):
    """A Conv1d and a Linear each called twice per sample, on different numbers of positions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x (N, 2, 6)
        h1 = torch.tanh(self.conv(x))  # (N, 3, 6)
        h2 = torch.tanh(self.conv(x[:, :, ::2]))  # (N, 3, 3)
        a = self.lin(h1.transpose(1, 2)).mean(1)  # 6 positions
        b = self.lin(h2.mean(2))  # 1 position
        return self.head(torch.tanh(a) * b)


class UnusedHead(nn.Module):
    """A Linear and a Conv1d that the forward never calls (an auxiliary head left out): their share is zero."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 5)
        self.aux_conv = nn.Conv1d(1, 2, 3)

    def forward(self, x):
        return self.body(torch.tanh(x))


class LinearTail(nn.Module):
    """A linear read-out tail (``ntkit.empirical.tail``): after the last nonlinearity a grouped Conv2d, a Conv2d
    and two Linears with a flatten between them; their cotangents are the same for every sample."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, groups=2)
        self.conv3 = nn.Conv2d(4, 3, 2, bias=False)
        self.head1 = nn.Linear(27, 5)
        self.head2 = nn.Linear(5, 3)

    def forward(self, x):  # x (N, 2, 6, 6)
        h = self.conv3(self.conv2(torch.tanh(self.conv1(x))))  # (N, 3, 3, 3)
        return self.head2(self.head1(h.flatten(1)))


class LineTail(nn.Module):
    """A Conv1d with stride and padding in the linear tail (its patches are not an im2col view)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 3, 3)
        self.conv2 = nn.Conv1d(3, 4, 2, stride=2, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, x):  # x (N, 2, 8)
        return self.head(self.conv2(torch.sin(self.conv1(x))).flatten(1))


class InPlaceTail(nn.Module):
    """ReLU(inplace=True) on a convolution's output before the flatten and Linear read-out: the tail is the Linear
    alone, although its input is a view of the convolution's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):  # x (N, 2, 4, 4)
        return self.head(self.relu(self.conv(x)).flatten(1))


def transformer_model():
    """A batch-first TransformerEncoderLayer (multi-head attention reads its out_proj's weight directly, so the
    probe sends it to the Jacobian path; the feed-forward Linears and LayerNorms take the fast path)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    return nn.Sequential(layer, nn.Flatten(), nn.Linear(3 * 8, 2)).to(DT).eval()


def _eval(model):
    model = model.to(DT)
    # Non-trivial running statistics and affine parameters, so the normalisation is really exercised.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.linspace(-0.3, 0.4, module.num_features))
                module.running_var.copy_(torch.linspace(0.5, 2.0, module.num_features))
                module.weight.copy_(torch.linspace(0.7, 1.3, module.num_features))
                module.bias.copy_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def _build(cls):
    torch.manual_seed(0)
    return _eval(cls())


def _ids(n, seed, length=5, vocab=7):
    return torch.randint(0, vocab, (n, length), generator=seeded(seed))


class InPlace(nn.Module):
    """ReLU(inplace=True) on a fast layer's output, and (``inplace=True``) a residual ``h += y`` that modifies the
    input of ``self.b`` after ``self.b`` has read it. With ``inplace=False`` the same function, out of place."""

    def __init__(self, inplace, outputs=2):
        super().__init__()
        self.inplace = inplace
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, outputs)

    def forward(self, x):
        h = self.relu(self.a(x)) * 1.5
        y = self.b(h)
        if self.inplace:
            h += y
        else:
            h = h + y
        return self.head(h)


# name -> (model factory, input factory(n, seed))
ZOO = {
    "mlp": (mlp_model, mlp_inputs),
    "strided_cnn": (lambda: _build(StridedCNN), lambda n, s: torch.randn(n, 3, 8, 8, generator=seeded(s), dtype=DT)),
    "grouped_cnn": (lambda: _build(GroupedCNN), lambda n, s: torch.randn(n, 4, 6, 5, generator=seeded(s), dtype=DT)),
    "residual_layernorm": (lambda: _build(ResidualLayerNorm),
                           lambda n, s: torch.randn(n, 6, generator=seeded(s), dtype=DT)),
    "tokens": (lambda: _build(TokenModel), lambda n, s: _ids(n, s)),
    "free_parameter": (lambda: _build(FreeParameter), lambda n, s: torch.randn(n, 4, generator=seeded(s), dtype=DT)),
    "tied_weights": (lambda: _build(TiedWeights), lambda n, s: _ids(n, s, vocab=6)),
    "batchnorm_eval": (lambda: _build(BatchNormEval),
                       lambda n, s: torch.randn(n, 2, 4, 4, generator=seeded(s), dtype=DT)),
    "shared_layers": (lambda: _build(SharedLayers), lambda n, s: torch.randn(n, 2, 6, generator=seeded(s), dtype=DT)),
    "unused_head": (lambda: _build(UnusedHead), lambda n, s: torch.randn(n, 4, generator=seeded(s), dtype=DT)),
    "linear_tail": (lambda: _build(LinearTail), lambda n, s: torch.randn(n, 2, 6, 6, generator=seeded(s), dtype=DT)),
    "line_tail": (lambda: _build(LineTail), lambda n, s: torch.randn(n, 2, 8, generator=seeded(s), dtype=DT)),
    "inplace_tail": (lambda: _build(InPlaceTail), lambda n, s: torch.randn(n, 2, 4, 4, generator=seeded(s), dtype=DT)),
    "transformer": (transformer_model, lambda n, s: torch.randn(n, 3, 8, generator=seeded(s), dtype=DT)),
}


def zoo_case(name, n1=4, n2=3):
    """(model, x1 of n1 samples drawn with seed 0, x2 of n2 samples drawn with seed 1) for a zoo entry."""
    make_model, make_inputs = ZOO[name]
    return make_model(), make_inputs(n1, 0), make_inputs(n2, 1)
