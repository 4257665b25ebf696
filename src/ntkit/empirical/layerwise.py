r"""Layer rules of the layerwise fast path: which modules it knows, and their features from inputs and cotangents.

For a module applied to a batch, the capture pass (``capture.py``) records each call's input and the output
cotangents g_a = ∂f_a/∂z (z the module's output, one per output a of the model). A rule turns them into the
features of ``features.py``:

* ``nn.Linear`` and ntkit's ``DenseModule`` (z = s W a + s_b b): ``GramProduct`` of [s·a, s_b] and g when the
  layer is applied once per sample; with leading positions (sequences) a ``PositionGram`` or, when cheaper, the
  per-sample weight gradient Σ_l g(l) [s·a(l), s_b]ᵀ as a ``GradFeature``.
* ``nn.Conv1d/2d/3d`` (stride, padding of any mode, dilation, groups): the input patches (im2col) as positions;
  usually the per-sample gradient Σ_l g(l) p(l)ᵀ (n·O·L·C·K to form) beats the position Gram (n²·L²), and the
  choice is made from both costs (``choose_form``). The gradient is formed from the patches or by a grouped
  backward-weight convolution, whichever ``convolutions.weight_gradient_form`` expects to be faster.
* ``nn.Embedding`` (no max_norm / scale_grad_by_freq): an ``IndexGram`` of the ids, or the per-sample gradient
  scattered into (V, D) when that is cheaper; ``padding_idx`` receives no gradient.
* affine parameters of ``nn.LayerNorm``, ``nn.GroupNorm`` and eval-mode ``nn.BatchNorm1d/2d/3d``
  (z = x̂ ⊙ w + b): per-sample gradients Σ_l g(l) ⊙ x̂(l) and Σ_l g(l), which are small.

A module is only handled here if its class's ``forward`` is the library's own (subclasses that override
``forward`` are not), it has no hooks of its own, and ``probe.py`` saw its parameters used by its own forward
only. Everything else goes through the Jacobian path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.dense import DenseModule
from .convolutions import conv_patches, direct_weight_gradient, weight_gradient_form
from .features import GradFeature, GramProduct, IndexGram, PositionGram

__all__ = ["LayerRule", "LayerDims", "find_rule", "choose_form", "RULES"]


@dataclass(frozen=True)
class LayerDims:
    """Sizes that set the cost of a weight-sharing layer: G groups, L positions per sample (all calls), K patch
    length (bias column included), C output channels per group."""

    groups: int
    positions: int
    patch: int
    channels: int


def choose_form(dims: LayerDims, n1: int, n2: int, outputs: int, mode: str, dense_patch: int | None = None) -> str:
    """"gram" (position Gram) or "grad" (per-sample gradient), whichever costs fewer multiply-adds overall.

    grad:  form (n1 + n2)·O·G·L·C·K, contract n1·n2·O_m·G·C·K   (O_m = O² for full, O otherwise)
    gram:  n1·n2·G·L²·K + n1·n2·O·G·L²·C + n1·n2·O_m·G·L·C
    ``dense_patch`` is the per-sample gradient's patch length when it differs from the Gram's (embeddings: V).
    """
    g, pos, k, c = dims.groups, dims.positions, dims.patch, dims.channels
    out_m = outputs * outputs if mode == "full" else outputs
    k_dense = k if dense_patch is None else dense_patch
    form_cost = (n1 + n2) * outputs * g * pos * c * (k if dense_patch is None else 1)  # scatter: no K factor
    grad_cost = form_cost + n1 * n2 * out_m * g * c * k_dense
    gram_cost = n1 * n2 * g * pos * pos * (k + outputs * c) + n1 * n2 * out_m * g * pos * c
    return "grad" if grad_cost < gram_cost else "gram"


def _cotangent_positions(g: torch.Tensor, trailing: int) -> torch.Tensor:
    """(n, O, *lead, *trailing) -> (n, O, L, prod(trailing)) with L = prod(lead)."""
    n, outputs = g.shape[:2]
    return g.reshape(n, outputs, -1, math.prod(g.shape[g.ndim - trailing:]))


def _augment(patches: torch.Tensor, weight_scale: float | None, bias_scale: float | None) -> torch.Tensor:
    """[s·p, s_b] along the last axis; ``None`` drops a part whose parameter is not trainable."""
    parts = []
    if weight_scale is not None:
        parts.append(patches if weight_scale == 1.0 else patches * weight_scale)
    if bias_scale is not None:
        parts.append(patches.new_full((*patches.shape[:-1], 1), bias_scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _weight_gradient(cotangents: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradient Σ_l g(l) p(l)ᵀ as (n, O, G·C·K), from cotangents (n, O, G, C, L) and patches
    (n, G, L, K): per output, one batched (C, L) x (L, K) product per sample and group.

    The loop over outputs reads cotangents in the output-major order the batched backward pass produced and
    writes an output-major result (returned as a transposed view), so neither is copied.
    """
    n, outputs, groups, channels, positions = cotangents.shape
    patch = patches.shape[-1]
    if cotangents.stride(0) == 0 and groups == 1:  # the same cotangents for every sample (``tail.py``)
        # One (O·C, L) x (L, n·K) product; the patches' (n, L, K) im2col view is (L, n·K) without a copy.
        shared = cotangents[0, :, 0].reshape(outputs * channels, positions)
        jac = shared @ patches[:, 0].permute(1, 0, 2).reshape(positions, n * patch)
        return jac.view(outputs, channels, n, patch).permute(2, 0, 1, 3).reshape(n, outputs, channels * patch)
    jac = torch.empty(outputs, n, groups, channels, patch, dtype=cotangents.dtype, device=cotangents.device)
    for a in range(outputs):
        if groups == 1:
            torch.bmm(cotangents[:, a, 0], patches[:, 0], out=jac[a, :, 0])
        else:
            jac[a] = torch.einsum("xgcl,xglk->xgck", cotangents[:, a], patches)
    return jac.view(outputs, n, -1).transpose(0, 1)


def _sum_calls(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


class LayerRule:
    """Base class: ``module_types`` whose own ``forward`` is used; ``roles`` names their parameter attributes."""

    module_types: tuple[type, ...] = ()
    roles: tuple[str, ...] = ("weight", "bias")
    structured = True  # False: only GradFeatures, no form choice

    def accepts(self, module: nn.Module) -> bool:
        return True

    def dims(self, module, in_shapes, out_shapes, roles) -> LayerDims | None:
        return None

    def dense_patch(self, module) -> int | None:
        return None

    def scales(self, module, roles) -> tuple[float | None, float | None]:
        """(weight scale, bias scale) of z = s·W a + s_b·b; None for a part whose parameter is not trainable."""
        return (1.0 if "weight" in roles else None), (1.0 if "bias" in roles else None)

    def features(self, module, roles, inputs, cotangents, form: str) -> list:
        raise NotImplementedError


class LinearRule(LayerRule):
    module_types = (nn.Linear, DenseModule)

    def scales(self, module, roles):
        weight, bias = super().scales(module, roles)
        if isinstance(module, DenseModule):  # ntkit's NTK parameterisation: z = (w_std/√n) W a + b_std b
            weight = None if weight is None else module.weight_scale
            bias = None if bias is None else module.bias_scale
        return weight, bias

    def dims(self, module, in_shapes, out_shapes, roles):
        positions = sum(math.prod(shape[:-1]) for shape in in_shapes)
        patch = module.in_features * ("weight" in roles) + ("bias" in roles)
        return LayerDims(1, positions, patch, module.out_features)

    def features(self, module, roles, inputs, cotangents, form):
        weight_scale, bias_scale = self.scales(module, roles)
        patches = [a.reshape(a.shape[0], -1, a.shape[-1]) for a in inputs]  # (n, L, K) per call
        cots = [_cotangent_positions(g, 1) for g in cotangents]  # (n, O, L, C) per call
        if len(patches) == 1 and patches[0].shape[1] == 1:  # applied once per sample: a Gram product
            return [GramProduct(_augment(patches[0][:, 0], weight_scale, bias_scale), cots[0][:, :, 0])]
        if form == "gram":
            augmented = _cat([_augment(p, weight_scale, bias_scale) for p in patches], 1)
            return [PositionGram(augmented[:, None], _cat(cots, 2)[:, :, None])]
        feats = []
        if weight_scale is not None:
            jac = _sum_calls([_weight_gradient(g.transpose(2, 3)[:, :, None], p[:, None])
                              for p, g in zip(patches, cots)])
            feats.append(GradFeature(jac if weight_scale == 1.0 else jac * weight_scale))
        if bias_scale is not None:
            feats.append(GradFeature(_sum_calls([g.sum(2) for g in cots]) * bias_scale))
        return feats


class ConvRule(LayerRule):
    module_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def dims(self, module, in_shapes, out_shapes, roles):
        positions = sum(math.prod(shape[1:]) for shape in out_shapes)
        patch = (module.in_channels // module.groups) * math.prod(module.kernel_size) * ("weight" in roles)
        patch += "bias" in roles
        return LayerDims(module.groups, positions, patch, module.out_channels // module.groups)

    def features(self, module, roles, inputs, cotangents, form):
        groups = module.groups
        # cotangents (n, O, C_out, *S) -> (n, O, G, C_out/G, L)
        cots = [g.reshape(*g.shape[:2], groups, g.shape[2] // groups, -1) for g in cotangents]
        if form == "gram":
            scales = self.scales(module, roles)
            patches = _cat([_augment(conv_patches(module, a), *scales) for a in inputs], 2)
            return [PositionGram(patches, _cat([g.transpose(3, 4) for g in cots], 3))]
        feats = []
        if "weight" in roles:
            grads = []
            for a, g, full in zip(inputs, cots, cotangents):
                # Cotangents shared by every sample (``tail.py``) take _weight_gradient's one product.
                if g.stride(0) != 0 and weight_gradient_form(a.device.type, a.dtype, module, g.shape[-1]) == "direct":
                    grads.append(direct_weight_gradient(module, a, full))
                else:
                    grads.append(_weight_gradient(g, conv_patches(module, a)))
            feats.append(GradFeature(_sum_calls(grads)))
        if "bias" in roles:
            feats.append(GradFeature(_sum_calls([g.sum(-1).reshape(g.shape[0], g.shape[1], -1) for g in cots])))
        return feats


class EmbeddingRule(LayerRule):
    module_types = (nn.Embedding,)
    roles = ("weight",)

    def accepts(self, module):
        # max_norm renormalises the weight in place during forward; scale_grad_by_freq rescales gradients by
        # in-batch counts. Both change what "the gradient" is, so the Jacobian path handles them.
        return module.max_norm is None and not module.scale_grad_by_freq

    def dims(self, module, in_shapes, out_shapes, roles):
        positions = sum(math.prod(shape) for shape in in_shapes)
        return LayerDims(1, positions, 1, module.embedding_dim)

    def dense_patch(self, module):
        return module.num_embeddings

    def features(self, module, roles, inputs, cotangents, form):
        ids = _cat([a.reshape(a.shape[0], -1) for a in inputs], 1)
        cots = _cat([_cotangent_positions(g, 1) for g in cotangents], 2)
        if module.padding_idx is not None:
            cots = cots * (ids != module.padding_idx)[:, None, :, None]
        if form == "gram":
            return [IndexGram(ids, cots)]
        n, outputs, positions, dim = cots.shape
        jac = cots.new_zeros(n, outputs, module.num_embeddings, dim)
        jac.scatter_add_(2, ids[:, None, :, None].expand(n, outputs, positions, dim), cots)
        return [GradFeature(jac.reshape(n, outputs, -1))]


class _AffineNormRule(LayerRule):
    """z = x̂ ⊙ w + b with x̂ the normalised input: ∂f_a/∂w = Σ_l g_a(l) ⊙ x̂(l), ∂f_a/∂b = Σ_l g_a(l)."""

    structured = False

    def normalized(self, module, a: torch.Tensor) -> torch.Tensor:
        """x̂ of the batch, reshaped with its parameters' axis last: (n, L, D)."""
        raise NotImplementedError

    def cotangent_positions(self, module, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, module, roles, inputs, cotangents, form):
        total = None
        for a, g in zip(inputs, cotangents):
            cots = self.cotangent_positions(module, g)  # (n, O, L, D)
            parts = []
            if "weight" in roles:
                parts.append(torch.einsum("xald,xld->xad", cots, self.normalized(module, a)))
            if "bias" in roles:
                parts.append(cots.sum(2))
            jac = torch.cat(parts, -1)
            total = jac if total is None else total + jac
        return [GradFeature(total)]


class LayerNormRule(_AffineNormRule):
    module_types = (nn.LayerNorm,)

    def accepts(self, module):
        return module.elementwise_affine

    def normalized(self, module, a):
        size = math.prod(module.normalized_shape)
        return F.layer_norm(a, module.normalized_shape, None, None, module.eps).reshape(a.shape[0], -1, size)

    def cotangent_positions(self, module, g):
        return _cotangent_positions(g, len(module.normalized_shape))


def _channels_last(t: torch.Tensor, first: int) -> torch.Tensor:
    """(..., C, *S) with C at axis ``first`` -> (..., L, C), L = prod(S)."""
    t = t.reshape(*t.shape[:first + 1], -1)
    return t.transpose(-1, -2)


class _ChannelNormRule(_AffineNormRule):
    """Norms with one parameter per channel, the channels on axis 1 of the input: (n, C, *S)."""

    def cotangent_positions(self, module, g):
        return _channels_last(g, 2)


class GroupNormRule(_ChannelNormRule):
    module_types = (nn.GroupNorm,)

    def accepts(self, module):
        return module.affine

    def normalized(self, module, a):
        return _channels_last(F.group_norm(a, module.num_groups, None, None, module.eps), 1)


class BatchNormEvalRule(_ChannelNormRule):
    """Eval-mode BatchNorm: x̂ = (x − running_mean) / √(running_var + eps) per channel."""

    module_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def accepts(self, module):
        return module.affine and not module.training and module.running_mean is not None

    def normalized(self, module, a):
        shape = (1, -1) + (1,) * (a.ndim - 2)
        mean = module.running_mean.to(a.dtype).view(shape)
        std = torch.sqrt(module.running_var.to(a.dtype) + module.eps).view(shape)
        return _channels_last((a - mean) / std, 1)


RULES: tuple[LayerRule, ...] = (LinearRule(), ConvRule(), EmbeddingRule(), LayerNormRule(), GroupNormRule(),
                                BatchNormEvalRule())


def find_rule(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``, if its class (or a base whose ``forward`` it keeps) is known and it accepts it."""
    for rule in RULES:
        for base in rule.module_types:
            if isinstance(module, base) and type(module).forward is base.forward:
                return rule if rule.accepts(module) else None
    return None
