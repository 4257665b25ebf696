r"""Several inputs and several outputs: batches and model outputs as pytrees of tensors.

Inputs. ``x`` is one tensor (N, ...), and the model is called as ``model(x)``; or a tuple or list of tensors,
called as ``model(*x)``; or a dict of tensors, called as ``model(**x)``. Every tensor has the batch on axis 0, the
same N for all (a nested container is passed on as one argument, its tensors batched the same way). A sample is
the tree of the tensors' rows ``i``; slicing, vmapping and concatenating act on every tensor alike.

Outputs. The model's output, after ``output_fn`` when one is given, is one tensor or any pytree of tensors
(tuple, list, dict, namedtuple, nested). Its tensors are taken in ``torch.utils._pytree.tree_flatten`` order:
depth first, tuples and lists by position, dicts in insertion order (not sorted by key, unlike JAX), namedtuples
by field. ``None`` leaves are dropped (``nn.MultiheadAttention(need_weights=False)`` returns ``(out, None)``); any
other non-tensor leaf is refused. Each tensor (N, ...) is flattened per sample in row-major order to (N, O_i) and
the tensors are concatenated: f(x) = [f_1(x), f_2(x), ...] with O = O_1 + O_2 + ... outputs, the same convention
as neural-tangents' pytree outputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_leaves, tree_map

__all__ = ["is_input_tree", "batch_size", "take", "add_batch_axis", "call_arguments", "named_leaves", "describe",
           "flatten_outputs"]


def is_input_tree(x: Any) -> bool:
    """Several inputs: a dict, or a tuple/list holding at least one torch tensor. A list of numbers or of numpy
    arrays stays what it was before, one array of points."""
    if isinstance(x, dict):
        return True
    return isinstance(x, (tuple, list)) and any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(x))


def batch_size(x) -> int:
    """N: the leading size of the batch's tensors (validated equal by ``checks.model_inputs``)."""
    return tree_leaves(x)[0].shape[0]


def take(x, index):
    """The samples ``index`` (a slice, an int list or tensor) of every tensor of the batch."""
    return x[index] if isinstance(x, torch.Tensor) else tree_map(lambda t: t[index], x)


def add_batch_axis(sample):
    """A single sample (as vmap hands it over, batch axis removed) as a batch of one."""
    return tree_map(lambda t: t.unsqueeze(0), sample)


def call_arguments(x) -> tuple[tuple, dict]:
    """(args, kwargs) of the model call: model(x), model(*x) or model(**x)."""
    if isinstance(x, dict):
        return (), dict(x)
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    return (x,), {}


def named_leaves(x, name: str) -> list[tuple[str, Any]]:
    """[(name + path, leaf)]: "x1" for one tensor, "x1[0]", "x1['mask']" for the tensors of a tree."""
    if isinstance(x, torch.Tensor):
        return [(name, x)]
    return [(name + keystr(path), leaf) for path, leaf in tree_flatten_with_path(x)[0]]


def describe(x, name: str) -> str:
    """What the user passed, for error messages: "x1 (shape (5, 4), dtype torch.float32)", or the same for every
    tensor of a tree."""
    parts = [f"{leaf_name} (shape {tuple(leaf.shape)}, dtype {leaf.dtype})" for leaf_name, leaf in
             named_leaves(x, name)]
    return ", ".join(parts)


def _output_name(path) -> str:
    return f"output{keystr(path)}" if path else "output"


def flatten_outputs(out, n: int) -> torch.Tensor:
    """The model's output tree as (n, O), its tensors flattened per sample and concatenated in tree order."""
    if isinstance(out, torch.Tensor):
        leaves = [((), out)]
    else:
        leaves = [(path, leaf) for path, leaf in tree_flatten_with_path(out)[0] if leaf is not None]
    if not leaves:
        raise TypeError(f"the model returned no tensor ({type(out).__name__} without tensor leaves); it must return a "
                        "tensor of shape (N, ...) or a tuple/list/dict of them (use output_fn= to select one)")
    flat = []
    for path, leaf in leaves:
        what = f"the model's {_output_name(path)}"
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{what} is of type {type(leaf).__name__}, not a tensor; the model must return tensors of "
                            "shape (N, ...) (a tuple, list or dict of them is fine): drop the others with output_fn=")
        if leaf.ndim == 0 or leaf.shape[0] != n:
            raise ValueError(f"{what} must have the batch axis first: for a batch of {n} sample(s) it has shape "
                             f"{tuple(leaf.shape)} (select or rearrange outputs with output_fn=)")
        if not leaf.is_floating_point():
            raise TypeError(f"{what} must be floating point; got {leaf.dtype} (leave it out with output_fn=)")
        flat.append(leaf.reshape(n, math.prod(leaf.shape[1:])))
    return flat[0] if len(flat) == 1 else torch.cat(flat, 1)

