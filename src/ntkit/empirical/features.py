r"""Per-sample features of a chunk of inputs, and their contraction into a block of the empirical NTK.

The NTK splits over groups of parameters, Θ(x, x')_ab = Σ_groups Σ_{p ∈ group} ∂f_a(x)/∂θ_p ∂f_b(x')/∂θ_p,
and each group is represented by the cheapest feature that gives its share exactly:

``GradFeature``  J (n, O, D): the per-sample gradient of D parameters; share = J_a(x) · J_b(x').
``GramProduct``  a (n, K), g (n, O, C): a weight W applied once per sample, z = W a, so ∂f_a/∂W = g_a aᵀ with
                 g_a = ∂f_a/∂z, and share = (a · a') (g_a · g_b')  (Novak et al. 2022, "Fast finite width neural
                 tangent kernel", structured derivatives: never a P-sized Jacobian).
``PositionGram`` p (n, G, L, K), g (n, O, G, L, C): a weight shared by L positions in G groups (convolutions,
                 linear maps on sequences); ∂f_a/∂W_g = Σ_l g_a(l) p(l)ᵀ, so
                 share = Σ_g Σ_{l,l'} (p(l) · p'(l')) (g_a(l) · g_b'(l')).
``IndexGram``    ids (n, L), g (n, O, L, C): an embedding, the PositionGram of one-hot inputs:
                 p(l) · p'(l') = [id(l) = id'(l')].

A bias b applied with the weight is a weight on a constant input: callers append a constant column (the bias
scale) to a / p, which adds exactly s_b² (Σ_l g_a(l)) · (Σ_l g_b'(l')).

Blocks are accumulated in an internal layout per output mode (``new_block``), then ``finish_block`` returns
full (n1, n2, O, O), trace (n1, n2) or diagonal (n1, n2, O).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .trees import take

__all__ = ["GradFeature", "GramProduct", "PositionGram", "IndexGram", "new_block", "add_share", "finish_block",
           "output_products", "slice_features", "merge_features", "feature_bytes"]


@dataclass
class GradFeature:
    jac: torch.Tensor  # (n, O, D)


@dataclass
class GramProduct:
    inputs: torch.Tensor  # (n, K), scales and bias column included
    cotangents: torch.Tensor  # (n, O, C)


@dataclass
class PositionGram:
    patches: torch.Tensor  # (n, G, L, K)
    cotangents: torch.Tensor  # (n, O, G, L, C)


@dataclass
class IndexGram:
    ids: torch.Tensor  # (n, L) integer
    cotangents: torch.Tensor  # (n, O, L, C), zero where the id does not receive gradient (padding_idx)


def new_block(n1: int, n2: int, outputs: int, mode: str, dtype, device) -> torch.Tensor:
    """A zero accumulator: full (n1, O, n2, O), trace (n1, n2), diagonal (O, n1, n2)."""
    shape = {"full": (n1, outputs, n2, outputs), "trace": (n1, n2), "diagonal": (outputs, n1, n2)}[mode]
    return torch.zeros(shape, dtype=dtype, device=device)


def finish_block(block: torch.Tensor, mode: str) -> torch.Tensor:
    """The accumulator in the public layout: full (n1, n2, O, O), trace (n1, n2), diagonal (n1, n2, O)."""
    if mode == "full":
        return block.permute(0, 2, 1, 3)
    if mode == "diagonal":
        return block.permute(1, 2, 0)
    return block


def _output_major(u: torch.Tensor) -> bool:
    """True when (n, O, D) is stored output-major, as (O, n, D) (how batched backward passes return it)."""
    return not u.is_contiguous() and u.transpose(0, 1).is_contiguous()


def output_products(u1: torch.Tensor, u2: torch.Tensor, mode: str) -> torch.Tensor:
    """Σ_d u1[x, a, d] u2[y, b, d] for (a, b) as the mode needs, in the accumulator layout.

    full: (n1, O, n2, O), one (n1·O, D) x (D, n2·O) product; trace: Σ_a, one (n1, O·D) x (O·D, n2) product;
    diagonal: a = b, one batched product over the O outputs. Inputs stored output-major are used in place
    (full: the product is taken in (O·n) order and returned as a permuted view) rather than copied.
    """
    n1, outputs, depth = u1.shape
    n2 = u2.shape[0]
    if mode == "diagonal":
        return torch.bmm(u1.transpose(0, 1), u2.permute(1, 2, 0))
    if _output_major(u1) and _output_major(u2) and outputs > 1:
        a1, a2 = u1.transpose(0, 1).reshape(outputs * n1, depth), u2.transpose(0, 1).reshape(outputs * n2, depth)
        if mode == "full":
            return (a1 @ a2.T).view(outputs, n1, outputs, n2).permute(1, 0, 3, 2)
        return torch.bmm(a1.view(outputs, n1, depth), a2.view(outputs, n2, depth).transpose(1, 2)).sum(0)
    if mode == "full":
        return (u1.reshape(n1 * outputs, depth) @ u2.reshape(n2 * outputs, depth).T).view(n1, outputs, n2, outputs)
    return u1.reshape(n1, outputs * depth) @ u2.reshape(n2, outputs * depth).T


def _broadcast_pair_factor(factor: torch.Tensor, mode: str) -> torch.Tensor:
    """An (n1, n2) factor shaped to multiply the accumulator."""
    if mode == "full":
        return factor[:, None, :, None]
    if mode == "diagonal":
        return factor[None]
    return factor


def _add_gram_product(block, f1: GramProduct, f2: GramProduct, mode: str) -> None:
    input_gram = f1.inputs @ f2.inputs.T
    block.addcmul_(output_products(f1.cotangents, f2.cotangents, mode), _broadcast_pair_factor(input_gram, mode))


def _add_position_share(block, position_gram: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mode: str) -> None:
    """block += Σ_{g,l,m,c} E[g,x,l,y,m] g1[x,a,g,l,c] g2[y,b,g,m,c], E the (G, n1, L, n2, L) position Gram.

    Contracted in two steps, H = E·g2 over m (n1·n2·O·G·L²·C), then g1·H over (g, l, c) (n1·n2·O²·G·L·C),
    which is cheaper than forming all (g_a(l)·g_b'(m)) products (n1·n2·O²·G·L²·C) once O > 1.
    """
    h = torch.einsum("gxlym,ybgmc->xylbgc", position_gram, g2)
    if mode == "full":
        block.add_(torch.einsum("xaglc,xylbgc->xayb", g1, h))
    elif mode == "trace":
        block.add_(torch.einsum("xaglc,xylagc->xy", g1, h))
    else:
        block.add_(torch.einsum("xaglc,xylagc->axy", g1, h))


def _add_position_gram(block, f1: PositionGram, f2: PositionGram, mode: str) -> None:
    p1, p2 = f1.patches, f2.patches
    n1, groups, l1, k = p1.shape
    n2, _, l2, _ = p2.shape
    gram = torch.bmm(p1.permute(1, 0, 2, 3).reshape(groups, n1 * l1, k),
                     p2.permute(1, 3, 0, 2).reshape(groups, k, n2 * l2)).view(groups, n1, l1, n2, l2)
    _add_position_share(block, gram, f1.cotangents, f2.cotangents, mode)


def _add_index_gram(block, f1: IndexGram, f2: IndexGram, mode: str) -> None:
    gram = (f1.ids[:, :, None, None] == f2.ids[None, None, :, :]).to(f1.cotangents.dtype)  # (n1, L, n2, L)
    _add_position_share(block, gram[None], f1.cotangents[:, :, None], f2.cotangents[:, :, None], mode)


def add_share(block: torch.Tensor, f1, f2, mode: str) -> None:
    """Add the share of one parameter group, given its features on the two chunks, to the accumulator."""
    if isinstance(f1, GradFeature):
        block.add_(output_products(f1.jac, f2.jac, mode))
    elif isinstance(f1, GramProduct):
        _add_gram_product(block, f1, f2, mode)
    elif isinstance(f1, PositionGram):
        _add_position_gram(block, f1, f2, mode)
    elif isinstance(f1, IndexGram):
        _add_index_gram(block, f1, f2, mode)
    else:  # pragma: no cover - internal contract
        raise TypeError(f"unknown feature {type(f1).__name__}")


def slice_features(feats, rows: slice):
    """A sub-range of a chunk's samples: every tensor of every feature sliced on its sample axis. Features come as
    a list; anything else is the 'features' of vector products, the inputs themselves (a tensor or a tuple/dict of
    tensors: user inputs given as a list arrive as tuples, ``checks.model_inputs``)."""
    if not isinstance(feats, list):
        return take(feats, rows)
    return [type(f)(*(t[rows] for t in vars(f).values())) for f in feats]


def merge_features(parts: list[list]) -> list:
    """Several chunks' features joined along the samples, feature by feature."""
    return [type(group[0])(*(torch.cat(tensors, 0) for tensors in zip(*(vars(f).values() for f in group))))
            for group in zip(*parts)]


def feature_bytes(feature) -> int:
    """Bytes held by a feature (what a cache of features costs)."""
    return sum(t.numel() * t.element_size() for t in vars(feature).values())
