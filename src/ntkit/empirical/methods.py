"""The three block methods of ``empirical_ntk``: features of a chunk, contraction of two chunks, memory cost.

``LayerwiseMethod``   fast-path layers by their structured features (``layerwise.py``), every other parameter by
                      per-sample Jacobians (``jacobian.py``): exact for any model.
``JacobianMethod``    every parameter by per-sample Jacobians.
``VectorProductMethod`` no stored Jacobian: each block from vjp/jvp pairs (``vector_products.py``).
"""

from __future__ import annotations

import math

import torch

from .._memory import format_bytes
from .capture import capture_chunk, chooser_for
from .features import add_share, finish_block, new_block
from .jacobian import jacobian_features
from .layerwise import LinearRule, choose_form
from .memory import ChunkPlan, Cost, plan_chunks
from .model_function import ModelFunction
from .probe import ModelStructure
from .trees import batch_size
from .vector_products import vector_product_block

__all__ = ["LayerwiseMethod", "JacobianMethod", "VectorProductMethod", "reduce_full"]


def _outputs_per_pair(outputs: int, mode: str) -> int:
    return outputs * outputs if mode == "full" else (1 if mode == "trace" else outputs)


def reduce_full(full: torch.Tensor, mode: str) -> torch.Tensor:
    """A full (n1, n2, O, O) block reduced to the requested output mode."""
    if mode == "full":
        return full
    diagonal = torch.diagonal(full, dim1=2, dim2=3)
    return diagonal.sum(-1) if mode == "trace" else diagonal


class _Method:
    """What every method holds, and its chunk plan from its memory ``cost()`` (``memory.py``)."""

    name = ""
    working_set: int | None = None  # bytes of transient tensors per chunk that the planner aims for

    def __init__(self, fn: ModelFunction, structure: ModelStructure, mode: str):
        self.fn, self.structure, self.mode = fn, structure, mode
        self.outputs = structure.outputs
        self.itemsize = fn.dtype.itemsize

    def cost(self) -> Cost:
        raise NotImplementedError

    def plan(self, n1: int, n2: int, symmetric: bool, output_bytes: int, budget: int, batch_size: int | None,
             what: str) -> ChunkPlan:
        return plan_chunks(self.cost(), n1, n2, symmetric, output_bytes, budget, batch_size, what, self.working_set)


class _ContractingMethod(_Method):
    """Shared contraction: the sum of every feature pair's share, accumulated in one block."""

    def __init__(self, fn: ModelFunction, structure: ModelStructure, mode: str):
        super().__init__(fn, structure, mode)
        self.out_m = _outputs_per_pair(self.outputs, mode)

    def contract(self, feats1, feats2) -> torch.Tensor:
        n1, n2 = self._rows(feats1), self._rows(feats2)
        block = new_block(n1, n2, self.outputs, self.mode, self.fn.dtype, self.fn.device)
        for f1, f2 in zip(feats1, feats2):
            add_share(block, f1, f2, self.mode)
        return finish_block(block, self.mode)

    @staticmethod
    def _rows(feats) -> int:
        first = next(iter(vars(feats[0]).values()))
        return first.shape[0]

    def _count(self, names) -> int:
        return sum(self.fn.params[name].numel() for name in names)

    def _rest_costs(self, names) -> tuple[int, int]:
        """(per-sample transient, per-sample feature) bytes of the Jacobian path for ``names``."""
        count = self._count(names)
        if not count:
            return 0, 0
        jac = self.outputs * count * self.itemsize
        # vmap(jacrev): the forward's activations, one backward per output (batched), the gradients.
        return self.structure.activation_bytes * (1 + self.outputs) + 2 * jac, jac


class LayerwiseMethod(_ContractingMethod):
    """Fast-path layers by structured features (``layerwise.py``), other parameters by per-sample Jacobians."""

    name = "layerwise"
    working_set = 128 * 2 ** 20

    def __init__(self, fn, structure, mode, n1: int, n2: int):
        super().__init__(fn, structure, mode)
        # the capture's autograd or torch.func engine, per chunk, from what earlier calls on this model measured
        shapes = tuple((layer.name, tuple(layer.in_shapes), tuple(layer.out_shapes)) for layer in structure.fast_layers)
        self.engines = chooser_for(fn.model, (fn.device.type, fn.dtype, shapes), fn.device.type)
        self.forms = {}
        for layer in structure.fast_layers:
            if layer.rule.structured:
                dims = layer.rule.dims(layer.module, layer.in_shapes, layer.out_shapes, layer.roles)
                self.forms[layer.name] = (dims, choose_form(dims, n1, n2, self.outputs, mode,
                                                            layer.rule.dense_patch(layer.module)))

    def features(self, x) -> list:
        feats = []
        if self.structure.fast_layers:
            captured = capture_chunk(self.engines, self.fn, self.structure.fast_layers, x)
            for layer, (inputs, cotangents) in zip(self.structure.fast_layers, captured):
                form = self.forms.get(layer.name, (None, "grad"))[1]
                feats += layer.rule.features(layer.module, layer.roles, inputs, cotangents, form)
        return feats + jacobian_features(self.fn, self.structure.rest_names, x)

    def _layer_sizes(self):
        """Per fast layer: (feature elements per sample, transient elements per sample, pair elements, pair
        multiply-adds)."""
        o = self.outputs
        for layer in self.structure.fast_layers:
            if layer.name not in self.forms:  # affine norms: per-sample gradients of the (few) parameters
                count = self._count(layer.roles.values())
                yield o * count, 0, 0, self.out_m * count
                continue
            dims, form = self.forms[layer.name]
            g, pos, k, c = dims.groups, dims.positions, dims.patch, dims.channels
            dense_patch = layer.rule.dense_patch(layer.module) or k
            if pos == 1 and isinstance(layer.rule, LinearRule):
                yield k + o * c, 0, 1 + self.out_m, k + self.out_m * c
            elif form == "grad":
                yield o * g * c * dense_patch, g * pos * k, 0, self.out_m * g * c * dense_patch
            else:
                yield g * pos * (k + o * c), g * pos * k, g * pos * (pos + o * c), \
                    g * pos * (pos * (k + o * c) + self.out_m * c)

    def pair_flops(self) -> int:
        rest = self.out_m * self._count(self.structure.rest_names)
        return rest + sum(sizes[3] for sizes in self._layer_sizes())

    def cost(self) -> Cost:
        size = self.itemsize
        out_elems = sum(math.prod(s) for layer in self.structure.fast_layers for s in layer.out_shapes)
        transient = self.structure.activation_bytes + size * (2 + 2 * self.outputs) * out_elems
        # The torch.func capture engine (GPUs, and one trial chunk on CPUs) runs every backward op on the O·n batch:
        # its intermediates are O times the forward's (measured on the CNN of benchmarks/empirical_ntk.py: 136 MiB
        # per chunk of 14 against 100 MiB with the autograd engine, and against 93 MiB modelled without this term).
        # The budget counts them; the working-set limit on the chunk size does not (they pass quickly, and the
        # smaller chunks it would choose were 3-4% slower on that CNN).
        engine_peak = self.outputs * self.structure.activation_bytes
        feature, pair = 0, 0
        for layer_feature, layer_transient, layer_pair, _ in self._layer_sizes():
            feature += size * layer_feature
            transient += size * layer_transient
            pair = max(pair, size * layer_pair)
        rest_transient, rest_feature = self._rest_costs(self.structure.rest_names)
        block = 3 * self.out_m * size  # accumulator, a product, the public-layout copy
        return Cost(per_sample=transient + engine_peak + rest_transient, feature=feature + rest_feature,
                    per_pair=block + pair, fixed=self.fn.parameter_bytes(), working=transient + rest_transient)


class JacobianMethod(_ContractingMethod):
    """Every parameter by per-sample Jacobians, vmap(jacrev), contracted."""

    name = "jacobian"

    def features(self, x) -> list:
        return jacobian_features(self.fn, list(self.fn.params), x)

    def pair_flops(self) -> int:
        return self.out_m * self.fn.num_params

    def cost(self) -> Cost:
        transient, feature = self._rest_costs(list(self.fn.params))
        block = 3 * self.out_m * self.itemsize
        return Cost(per_sample=transient, feature=feature, per_pair=block, fixed=self.fn.parameter_bytes())


class VectorProductMethod(_Method):
    """Blocks from vjp/jvp pairs; the 'features' of a chunk are its inputs (a tensor or a pytree of them)."""

    name = "vector_products"

    def __init__(self, fn: ModelFunction, structure: ModelStructure, mode: str):
        super().__init__(fn, structure, mode)
        self.basis_batch: int | None = None  # None: all n2·O columns of a block at once

    def features(self, x):
        return x

    def contract(self, x1, x2) -> torch.Tensor:
        batch = self.basis_batch or batch_size(x2) * self.outputs
        return reduce_full(vector_product_block(self.fn, x1, x2, batch), self.mode)

    def column_bytes(self, rows: int) -> int:
        """Memory of one vmapped column: a parameter-sized cotangent and the jvp's forward over ``rows`` samples."""
        return self.fn.parameter_bytes() + rows * (self.structure.activation_bytes + self.outputs * self.itemsize)

    def cost(self) -> Cost:
        o, size = self.outputs, self.itemsize
        full_block = 3 * o * o * size
        # Per chunk: the vjp's saved forward of the columns' samples (c·act) and c·O columns of column_bytes(c).
        return Cost(per_sample=self.structure.activation_bytes + o * self.fn.parameter_bytes(),
                    feature=0, per_pair=o * self.structure.activation_bytes + full_block,
                    fixed=self.fn.parameter_bytes())

    def plan(self, n1, n2, symmetric, output_bytes, budget, batch_size, what) -> ChunkPlan:
        """Chunks with all of a block's columns vmapped at once; if even one sample does not fit that way (and no
        batch_size above 1 was asked for), one sample a chunk with as many columns at a time as fit."""
        try:
            return super().plan(n1, n2, symmetric, output_bytes, budget, batch_size, what)
        except MemoryError:
            if batch_size not in (None, 1):
                raise
        # held throughout: the result, the parameters, the vjp's forward of one sample
        held = output_bytes + self.fn.parameter_bytes() + self.structure.activation_bytes
        columns = max(budget - held, 0) // self.column_bytes(1)
        if columns < 1:
            need = held + self.column_bytes(1)  # one column: a parameter-sized cotangent, the jvp's forward
            raise MemoryError(f"{what} needs about {format_bytes(need)} even one sample and one column at a time "
                              f"(the result alone is {format_bytes(output_bytes)}), but the budget is "
                              f"{format_bytes(budget)}. Pass a larger max_memory if more is free, use fewer points, "
                              "or a smaller model.")
        self.basis_batch = int(columns)
        return ChunkPlan(1, False, held + columns * self.column_bytes(1))
