r"""Tiled evaluation of an architecture's kernel for (N, C, L) and (N, C, H, W) inputs.

Two passes (Novak et al. 2019 and neural-tangents carry the same two quantities):

1. **Self pass.** Every input x is paired with itself, (x, x), and run through the whole recursion in the same
   form as the pairs (NNGP only). Before each layer the per-position variances q(x, p) = K(x, x)[p, p] are read off
   that state and recorded on a tape. Pooling mixes positions, so q after a pooling layer needs the full
   self-covariance K(x, x)[p, p''] before it; this pass is what provides it, at the cost of N extra pairs.
2. **Pair pass.** The N1×N2 grid is cut into tiles of pairs sized to memory (few pairs at a time for a full
   32×32 covariance of 10⁶ numbers, thousands for a diagonal state); the tape replays the recorded variances of
   the tile's rows and columns before each layer, so activations and normalisations see exact q(x, p), q(x', p').
   When x2 is x1 only tiles on and above the diagonal are computed, and the rest is mirrored. The layers run in
   two stages (:mod:`ntkit.kernels.spatial_plan`): up to the first big shrink of the state on small sub-tiles,
   the rest once per group of them.

The state's form per layer (flat, diagonal or full; :mod:`ntkit.kernels.spatial`) comes from walking the layers
backwards from the flat readout (``Layer.input_form``): each state is kept only as full as the later layers need.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._memory import check_fits
from .._threads import ThreadTuner
from ..layers.base import Signature, apply_layer, output_forms, output_signatures
from .evaluate import _check_no_overflow
from .kernel import Kernel, KernelState
from .cache import coefficient_cache
from .near_parallel import SpatialPairs, kinked_layers, refinable
from .scratch import Scratch
from .spatial import diagonal, variance_layout
from .spatial_plan import device_info, plan_spatial

__all__ = ["evaluate_spatial", "evaluate_spatial_diagonal", "RecordingTape", "ReplayTape"]

_PROGRESS_MIN_TILES = 64


class RecordingTape:
    """Self pass: reads q(x, p) off a tile of self-pairs (t, 1, ...) before each layer that needs it and records
    it, with the full self-covariance K(x, x) for layers that need that too (self-attention)."""

    def __init__(self):
        self.values: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def supply(self, state: KernelState, full: bool = False) -> KernelState:
        own = diagonal(state.nngp, len(state.spatial)) if state.form == "full" else state.nngp
        v = own[:, 0].clone()  # the state is overwritten in place by the next rules
        cov = state.nngp[:, 0].clone() if full else None
        self.values.append((v, cov))
        return state.replace(var1=variance_layout(v, state.form, 1, aligned=True),
                             var2=variance_layout(v, state.form, 2, aligned=True),
                             self1=None if cov is None else cov[:, None], self2=None if cov is None else cov[:, None])


class ReplayTape:
    """Pair pass: before the k-th such layer, the recorded variances (and self-covariances) of the tile's rows
    (x1) and columns (x2)."""

    def __init__(self, records1: list, records2: list, rows: slice, cols: slice, step: int = 0):
        self.records1, self.records2, self.rows, self.cols = records1, records2, rows, cols
        self.step = step

    def supply(self, state: KernelState, full: bool = False) -> KernelState:
        (v1, cov1), (v2, cov2) = self.records1[self.step], self.records2[self.step]
        self.step += 1
        return state.replace(var1=variance_layout(v1[self.rows], state.form, 1),
                             var2=variance_layout(v2[self.cols], state.form, 2),
                             self1=None if cov1 is None else cov1[self.rows, None],
                             self2=None if cov2 is None else cov2[None, self.cols])


def _initial_state(x1: torch.Tensor, x2: torch.Tensor, aligned: bool, need_ntk: bool, tape,
                   scratch: Scratch, self_pairs: bool | None = None) -> KernelState:
    """The state before the first layer: the inputs themselves (their covariance is formed by the first layer's
    ``apply_layer``, or never, when a first Conv reads its patches directly). ``self_pairs`` (default: the aligned
    self pass): every pair is a point with itself (``KernelState.self_pairs``)."""
    return KernelState(nngp=None, ntk=0.0 if need_ntk else None, var1=None, var2=None, width=x1.shape[1],
                       gaussian=False, form="full", spatial=tuple(x1.shape[2:]), tape=tape,
                       inputs=(x1, x2, aligned), scratch=scratch,
                       self_pairs=aligned if self_pairs is None else self_pairs)


def _run(layers, forms, state: KernelState, need_ntk: bool) -> KernelState:
    for layer, form in zip(layers, forms):
        state = apply_layer(layer, state, need_ntk, form)
    return state


def _self_variances(layers, forms, x: torch.Tensor, chunk: int, scratch: Scratch) -> tuple[list[tuple], torch.Tensor]:
    """The tape of the self pass: for each layer that reads it, in visiting order, q(x, p) for every point
    (N, *S_layer), and K(x, x) (N, *S, *S) where the layer needs the full self-covariance (else None); and the
    pass's result, the NNGP's diagonal K(x, x) (N,)."""
    chunks: list[list[torch.Tensor]] = []
    selves = []
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        tape = RecordingTape()
        state = _run(layers, forms, _initial_state(part, part, True, False, tape, scratch), False)
        chunks.append(tape.values)
        selves.append(state.nngp[:, 0].clone())
    records = [(torch.cat([v for v, _ in steps]), None if steps[0][1] is None else torch.cat([c for _, c in steps]))
               for steps in zip(*chunks)]
    return records, torch.cat(selves)


def _mirror(t, form: str, dims: int):
    """The state of the pairs (x', x) from that of (x, x'): swap the pair axes and, for a full state, p and p'."""
    if form == "full":
        return t.permute(1, 0, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims))
    return t.transpose(0, 1)


class _Grid:
    """The N1×N2 outputs and the walk over groups and their sub-tiles (see ``ntkit.kernels.spatial_plan``)."""

    def __init__(self, arch, x1, x2, get, plan, records1, records2, scratch, symmetric):
        self.layers = arch.flatten()
        self.x1, self.x2, self.plan, self.scratch, self.symmetric = x1, x2, plan, scratch, symmetric
        self.records1, self.records2 = records1, records2
        self.need_ntk = "ntk" in get
        self.out = {name: torch.empty(len(x1), len(x2), dtype=x1.dtype, device=x1.device) for name in get}
        self.near_parallel: SpatialPairs | None = None  # set by evaluate_spatial for float32 rectified nets
        # Busy CPUs: one thread may be faster (ntkit._threads); timed on the sub-tiles, the bulk of the work.
        per_group = -(-plan.group[0] // plan.sub_tile[0]) * -(-plan.group[1] // plan.sub_tile[1])
        self.tuner = ThreadTuner(x1.device, len(self.groups()) * per_group,
                                 workload=("spatial", repr(arch), tuple(get), x1.dtype, tuple(x1.shape[1:]), plan))

    def groups(self):
        (rows, cols), n1, n2 = self.plan.group, len(self.x1), len(self.x2)
        return [(slice(i, min(i + rows, n1)), slice(j, min(j + cols, n2))) for i in range(0, n1, rows)
                for j in range(0, n2, cols) if not self.symmetric or j + cols > i]

    def _one_self_pair(self, rows: slice, cols: slice) -> bool:
        """Whether the tile is one point with itself (its full-form states then have ρ ≈ 1 at p = p')."""
        return self.symmetric and rows == cols and rows.stop - rows.start == 1

    def _prefix(self, rows: slice, cols: slice) -> tuple[KernelState, int]:
        tape = ReplayTape(self.records1, self.records2, rows, cols)
        split = self.plan.split
        state = _initial_state(self.x1[rows], self.x2[cols], False, self.need_ntk, tape, self.scratch,
                               self_pairs=self._one_self_pair(rows, cols))
        self.tuner.start()
        state = _run(self.layers[:split], self.plan.forms[:split], state, self.need_ntk)
        self.tuner.stop((rows.stop - rows.start) * (cols.stop - cols.start))
        return state, tape.step

    def compute(self, rows: slice, cols: slice) -> None:
        """One group: its sub-tiles through the prefix, gathered, then the rest of the layers once."""
        plan = self.plan
        if plan.split == len(self.layers):
            state, _ = self._prefix(rows, cols)
            return self._write(rows, cols, state)
        sub_rows, sub_cols = plan.sub_tile
        square = self.symmetric and rows == cols
        nngp = ntk = template = None
        mirrored, steps = [], 0
        for i in range(rows.start, rows.stop, sub_rows):
            for j in range(cols.start, cols.stop, sub_cols):
                r, c = slice(i, min(i + sub_rows, rows.stop)), slice(j, min(j + sub_cols, cols.stop))
                if square and c.stop <= r.start:  # below the diagonal: the mirror of a sub-tile above it
                    mirrored.append((r, c))
                    continue
                state, steps = self._prefix(r, c)
                if template is None:
                    template = state
                    shape = (rows.stop - rows.start, cols.stop - cols.start, *state.nngp.shape[2:])
                    nngp = self.scratch.empty(shape, state.nngp)
                    ntk = self.scratch.empty(shape, state.nngp) if isinstance(state.ntk, torch.Tensor) \
                        else state.ntk
                local = (slice(r.start - rows.start, r.stop - rows.start), slice(c.start - cols.start,
                                                                                  c.stop - cols.start))
                nngp[local] = state.nngp
                if isinstance(state.ntk, torch.Tensor):
                    ntk[local] = state.ntk
                self.scratch.give(state.nngp, state.ntk)
        dims = len(template.spatial)
        for r, c in mirrored:
            local = (slice(r.start - rows.start, r.stop - rows.start), slice(c.start - cols.start, c.stop - cols.start))
            source = (local[1], local[0])
            nngp[local] = _mirror(nngp[source], template.form, dims)
            if isinstance(ntk, torch.Tensor):
                ntk[local] = _mirror(ntk[source], template.form, dims)
        tape = ReplayTape(self.records1, self.records2, rows, cols, step=steps)
        state = template.replace(nngp=nngp, ntk=ntk, tape=tape, owned=True,
                                 self_pairs=self._one_self_pair(rows, cols))
        split = plan.split
        self._write(rows, cols, _run(self.layers[split:], plan.forms[split:], state, self.need_ntk))

    def _write(self, rows: slice, cols: slice, state: KernelState) -> None:
        # With x2 = x1 the lower triangle is filled from the upper one at the end (_symmetrize_mirrored).
        if self.near_parallel is not None:
            self.near_parallel.note(rows, cols, state.nngp)
        for name, value in (("nngp", state.nngp), ("ntk", state.ntk)):
            if name in self.out:
                self.out[name][rows, cols] = value


def evaluate_spatial(arch, x1: torch.Tensor, x2: torch.Tensor | None, *, get: tuple[str, ...],
                     batch_size: int | None, progress: bool | None) -> Kernel:
    """Evaluate ``arch``'s NNGP/NTK on validated (N, C, *S) inputs. See ``Serial.kernel`` for the arguments."""
    symmetric = x2 is None
    if symmetric:
        x2 = x1
    n1, n2 = x1.shape[0], x2.shape[0]
    layers, forms, plan = _plan(arch, x1, n1, n2, batch_size)
    check_fits(len(get) * n1 * n2 * x1.element_size() + plan.working_bytes, x1.device,
               f"the ({n1}, {n2}) kernel(s) {get} of {tuple(x1.shape[1:])} inputs ({plan.input_form} spatial "
               f"covariances, groups of {plan.group[0]}x{plan.group[1]} pairs)",
               "Ask for one kernel (get='ntk'), a smaller batch_size, or compute blocks of rows of x1 in turn.")
    scratch = Scratch()
    chunk = plan.sub_tile[0] * plan.sub_tile[1]
    records1, self1 = _self_variances(layers, forms, x1, chunk, scratch)
    records2, self2 = (records1, self1) if symmetric else _self_variances(layers, forms, x2, chunk, scratch)
    grid = _Grid(arch, x1, x2, get, plan, records1, records2, scratch, symmetric)
    if refinable(x1, x2) and kinked_layers(layers):  # float32 near-duplicate images (kernels/near_parallel.py)
        grid.near_parallel = SpatialPairs(arch, x1, x2, symmetric, tuple(get), self1, self2)
    groups = grid.groups()
    show = progress if progress is not None else len(groups) >= _PROGRESS_MIN_TILES
    with coefficient_cache():  # quadrature activations: each block of points' coefficients once
        for rows, cols in tqdm(groups, desc="kernel tiles", disable=None if show else True, leave=False):
            grid.compute(rows, cols)
    nngp, ntk = grid.out.get("nngp"), grid.out.get("ntk")
    if symmetric:
        _symmetrize_mirrored(nngp, ntk)
    if grid.near_parallel is not None:
        grid.near_parallel.finish(grid.out)
    for name, value in (("NNGP", nngp), ("NTK", ntk)):
        _check_no_overflow(value, name, arch)
    return Kernel(nngp=nngp, ntk=ntk)


def evaluate_spatial_diagonal(arch, x: torch.Tensor, *, get: tuple[str, ...], progress: bool | None) -> Kernel:
    """k(x_i, x_i) for every point of validated (N, C, *S) inputs: the self pass with the NTK carried along, in
    chunks of the pair pass's sub-tile size. See ``Serial.kernel_diagonal``."""
    n = x.shape[0]
    layers, forms, plan = _plan(arch, x, n, n, None)
    check_fits(len(get) * n * x.element_size() + plan.working_bytes, x.device,
               f"the diagonal of the kernel(s) {get} of {tuple(x.shape[1:])} inputs", "Pass fewer points at once.")
    scratch, need_ntk = Scratch(), "ntk" in get
    out = {name: torch.empty(n, dtype=x.dtype, device=x.device) for name in get}
    chunk = plan.sub_tile[0] * plan.sub_tile[1]
    starts = range(0, n, chunk)
    show = progress if progress is not None else len(starts) >= _PROGRESS_MIN_TILES
    for start in tqdm(starts, desc="kernel diagonal", disable=None if show else True, leave=False):
        part = x[start:start + chunk]
        state = _run(layers, forms, _initial_state(part, part, True, need_ntk, RecordingTape(), scratch), need_ntk)
        for name in get:
            out[name][start:start + len(part)] = getattr(state, name)[:, 0]
        scratch.give(state.nngp, state.ntk)
    for name in get:
        _check_no_overflow(out[name], name.upper(), arch)
    return Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))


def _plan(arch, x: torch.Tensor, n1: int, n2: int, batch_size: int | None):
    """(layers, forms, plan) of ``arch`` on an n1×n2 grid of inputs shaped like ``x``."""
    layers = arch.flatten()
    forms = output_forms(layers, "flat")
    input_form = layers[0].input_form(forms[0])
    signatures = output_signatures(layers, Signature(x.shape[1], tuple(x.shape[2:])))
    plan = plan_spatial(layers, signatures, forms, input_form, tuple(x.shape[2:]), n1, n2, x.element_size(),
                        device_info(x.device), batch_size)
    return layers, forms, plan


def _symmetrize_mirrored(nngp, ntk, block: int = 1024) -> None:
    """Only groups with entries on or above the diagonal were computed (some straddle it and wrote a little of the
    lower triangle too): fill the lower triangle from the upper one, so the matrix is exactly symmetric, a block of
    rows at a time (no N×N temporaries: N = 50,000 on a GPU is 10 GB per kernel)."""
    for out in (nngp, ntk):
        if out is None:
            continue
        n = out.shape[0]
        for i in range(0, n, block):
            end = min(i + block, n)
            square = out[i:end, i:end]
            upper = torch.triu(square, 1)
            square.copy_(upper + upper.T + torch.diag_embed(square.diagonal()))
            out[end:, i:end] = out[i:end, end:].T
