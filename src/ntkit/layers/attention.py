r"""Self-attention over sequences in the scaling whose infinite-width limit is exact (Hron et al. 2020).

"Infinite attention: NNGP and NTK for deep attention networks" (Hron, Bahri, Sohl-Dickstein & Novak 2020,
arXiv 2006.10540) show that standard attention, logits q·k/√d, has no closed-form limit (the logits stay random
and the softmax's expectation is an integral with no closed form). With logits scaled by 1/d instead and the
query weights tied to the key weights, the logits converge to a deterministic function of the input — the
covariance of its positions — and the layer's limit is exact (neural-tangents' ``GlobalSelfAttention`` with
``linear_scaling=True``, without positional embeddings). For one sequence x of shape (C, L):

    keys k_h(x) = x W_K,h (C → d_key, per head),   logits G_h(x)[i, j] = qk_std · k_h(x)_i · k_h(x)_j / (C · d_key)
    A_h(x) = softmax_j G_h(x),   out(x) = ov_std / √(C · heads · d_val) · concat_h(A_h(x) · x W_V,h) W_O + b_std b

With W_K, W_V, W_O, b ~ N(0, 1) and C, d_key, heads·d_val → ∞, G(x)[i, j] → qk_std · K(x, x)[i, j] and

    A(x) = softmax_j(qk_std · K(x, x)[i, j])                           (deterministic attention weights)
    Σ'(x, x') = ov_std² · A(x) K(x, x') A(x')ᵀ + b_std²
    Θ'(x, x') = ov_std² · A(x) Θ(x, x') A(x')ᵀ + b_std² + 2 ov_std² · A(x) K(x, x') A(x')ᵀ

(the last term: the value and output weights; the key weights' share vanishes like 1/d_key, and so does the
gradient that flows through the logits). What it means for the finite module: its attention is a softmax of the
keys' average self-similarity, sharper with qk_std, and it approaches the limit as the key width, the channels and
heads·value width grow, at rate ~1/√width like every other layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_nonnegative_float, check_positive_int
from ..kernels.kernel import KernelState
from ..kernels.spatial import diagonal
from .base import Layer, Signature

__all__ = ["SelfAttention", "SelfAttentionModule"]


class SelfAttentionModule(nn.Module):
    """Tied-query, 1/d-scaled multi-head self-attention on (N, C, L) sequences (see the module docstring)."""

    def __init__(self, key_weight, value_weight, out_weight, bias, qk_std: float, ov_std: float, b_std: float):
        super().__init__()
        self.key_weight = nn.Parameter(key_weight)      # (C, heads, d_key)
        self.value_weight = nn.Parameter(value_weight)  # (C, heads, d_val)
        self.out_weight = nn.Parameter(out_weight)      # (heads · d_val, C_out)
        self.bias = nn.Parameter(bias)                  # (C_out,)
        self.qk_std, self.ov_std, self.b_std = float(qk_std), float(ov_std), float(b_std)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        channels, heads, d_key = self.key_weight.shape
        if a.ndim != 3 or a.shape[1] != channels:
            raise ValueError(f"SelfAttentionModule expects (N, {channels}, L) sequences; got {tuple(a.shape)}")
        x = a.transpose(1, 2)                                           # (N, L, C)
        keys = torch.einsum("nlc,chd->nhld", x, self.key_weight)
        logits = keys @ keys.transpose(-1, -2) * (self.qk_std / (channels * d_key))
        values = torch.einsum("nlc,chv->nhlv", x, self.value_weight)
        mixed = torch.softmax(logits, -1) @ values                      # (N, heads, L, d_val)
        mixed = mixed.transpose(1, 2).reshape(a.shape[0], a.shape[2], -1)
        scale = self.ov_std / math.sqrt(mixed.shape[-1] * channels)
        return (mixed @ self.out_weight * scale + self.bias * self.b_std).transpose(1, 2)


class SelfAttention(Layer):
    """Global self-attention for (N, C, L) sequences with an exact infinite-width limit (Hron et al. 2020).

    Args:
        out_channels: output channels (the limit does not depend on them).
        heads, key_channels, value_channels: heads and per-head widths of keys (= queries, tied) and values;
            the limit is that of all of them large.
        qk_std: scale of the logits (their limit is qk_std · K(x, x)); ov_std: of the value-output product;
        b_std: of the output bias. NTK parameterisation (all weights N(0, 1), scales in the forward pass).
    """

    tile_cost = 4
    needs_self_covariance = True

    def __init__(self, out_channels: int, heads: int = 8, key_channels: int = 64, value_channels: int = 64,
                 qk_std: float = 1.0, ov_std: float = 1.0, b_std: float = 0.0):
        self.out_channels = check_positive_int(out_channels, "SelfAttention: out_channels")
        self.heads = check_positive_int(heads, "SelfAttention: heads")
        self.key_channels = check_positive_int(key_channels, "SelfAttention: key_channels")
        self.value_channels = check_positive_int(value_channels, "SelfAttention: value_channels")
        self.qk_std = check_nonnegative_float(qk_std, "SelfAttention: qk_std")
        self.ov_std = check_nonnegative_float(ov_std, "SelfAttention: ov_std")
        self.b_std = check_nonnegative_float(b_std, "SelfAttention: b_std")

    def __repr__(self) -> str:
        return (f"SelfAttention({self.out_channels}, heads={self.heads}, qk_std={self.qk_std:g}, "
                f"ov_std={self.ov_std:g}, b_std={self.b_std:g})")

    def infer(self, signature: Signature, where: str) -> Signature:
        if len(signature.spatial) != 1:
            raise ValueError(f"{where} attends over the positions of (N, C, L) sequences but receives shape "
                             f"{signature.shape} per sample")
        return Signature(self.out_channels, signature.spatial, gaussian=True)

    def input_form(self, out_form: str) -> str:
        return "full"

    def build_module(self, in_shape, generator, dtype, device):
        channels = in_shape[0]

        def draw(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

        module = SelfAttentionModule(draw(channels, self.heads, self.key_channels),
                                     draw(channels, self.heads, self.value_channels),
                                     draw(self.heads * self.value_channels, self.out_channels),
                                     draw(self.out_channels), self.qk_std, self.ov_std, self.b_std)
        return module, (self.out_channels, *in_shape[1:])

    def spatial_rule(self, state: KernelState, need_ntk: bool, out_form: str) -> KernelState:
        weights1 = torch.softmax(self.qk_std * state.self1, -1)  # (t1, 1, L, L): A(x)
        weights2 = torch.softmax(self.qk_std * state.self2, -1)  # (1, t2, L, L) (or (t, 1, L, L) in the self pass)

        def weigh(t):
            return weights1 @ t @ weights2.transpose(-1, -2)

        ov2, b2 = self.ov_std ** 2, self.b_std ** 2
        mixed = weigh(state.nngp)
        nngp = mixed * ov2 + b2
        ntk = None
        if need_ntk:
            ntk = mixed * (2.0 * ov2) + b2
            if isinstance(state.ntk, torch.Tensor):
                ntk = ntk + weigh(state.ntk) * ov2
        form = "full"
        if out_form == "diagonal":
            nngp, form = diagonal(nngp, 1).contiguous(), "diagonal"
            ntk = None if ntk is None else diagonal(ntk, 1).contiguous()
        return state.replace(nngp=nngp, ntk=ntk, form=form, width=self.out_channels, gaussian=True)
