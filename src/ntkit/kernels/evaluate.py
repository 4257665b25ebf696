"""Tiled evaluation of an architecture's kernel recursion over the N1×N2 grid.

The recursion is elementwise after one Gram product, so the grid is cut into tiles: memory stays at the outputs
plus a few tiles, each tile's temporaries stay small, and when x2 is x1 only the tiles on and above the diagonal
are computed (the rest is mirrored). A tile's whole recursion can be fused into one ``torch.compile``-d pass.
"""

from __future__ import annotations

import time
import warnings

import torch
from tqdm.auto import tqdm

from .._memory import check_fits
from .._threads import ThreadTuner
from .flat_plan import FUSE_MIN_ENTRIES, compile_pays, plan_flat
from .kernel import Kernel, KernelState
from .cache import carries_derivatives, coefficient_cache
from . import triton_flat, triton_support
from .near_parallel import NearParallelRefiner, kinked_layers, refinable
from .scratch import Scratch
from .spatial_plan import device_info

__all__ = ["evaluate_kernel", "evaluate_diagonal", "run_layers", "FUSE_MIN_ENTRIES"]

_PROGRESS_MIN_TILES = 64


def run_layers(layers, need_ntk: bool, width: int, gram, var1, var2, scratch=None, near_parallel=None):
    """The layer rules on one tile: (NNGP, NTK). See ``final_state``."""
    state = final_state(layers, need_ntk, width, gram, var1, var2, scratch, near_parallel)
    return state.nngp, state.ntk


def final_state(layers, need_ntk: bool, width: int, gram, var1, var2, scratch=None, near_parallel=None,
                self_pairs: bool = False):
    """The layer rules on one tile, their last state (with the rows' and columns' final variances). With a
    ``scratch`` pool they may overwrite ``gram`` (``KernelState.in_place``); rules append masks of pairs float32
    cannot resolve to ``near_parallel`` (``KernelState.near_parallel``); ``self_pairs``: a symmetric kernel's
    diagonal tile (``KernelState.self_pairs``)."""
    state = KernelState(nngp=gram, ntk=0.0 if need_ntk else None, var1=var1, var2=var2, width=width,
                        gaussian=False, scratch=scratch, in_place=scratch is not None, near_parallel=near_parallel,
                        self_pairs=self_pairs)
    for layer in layers:
        state = layer.kernel_rule(state, need_ntk)
    return state


def _step_function(arch, layers, need_ntk: bool, width: int, fuse: bool):
    """The per-tile function: eager, or compiled once per (architecture, get, width) and cached on it."""

    def eager(gram, var1, var2, scratch=None, near_parallel=None, self_pairs=False):
        """(NNGP, NTK, final variances of the rows (t1, 1) and of the columns (1, t2))."""
        state = final_state(layers, need_ntk, width, gram, var1, var2, scratch, near_parallel, self_pairs)
        return state.nngp, state.ntk, state.var1, state.var2

    if not fuse:
        return eager
    key = (need_ntk, width)
    compiled = arch._fused_steps.get(key)
    if not compiled:  # never compiled, or failed before (fused=True asks again)
        compiled = _one_graph_for_all_tile_shapes(torch.compile(eager, dynamic=True, fullgraph=True))
        arch._fused_steps[key] = compiled
    return compiled


def _one_graph_for_all_tile_shapes(compiled):
    """``compiled`` traced without duck sizing: by default a first square tile makes the graph assume t1 == t2,
    and the first edge tile compiles it again (two compiles of ~2.5 s each on a CPU instead of one). The setting is
    torch's private configuration, set only while the compiled function runs (and left alone if it is gone)."""
    try:
        from torch.fx.experimental import _config
        _config.use_duck_shape  # noqa: B018 (the setting exists in this torch)
        patch = _config.patch
    except (ImportError, AttributeError):
        return compiled

    def step(*args):
        with patch(use_duck_shape=False):
            return compiled(*args)

    return step


def evaluate_kernel(arch, x1: torch.Tensor, x2: torch.Tensor | None, *, get: tuple[str, ...],
                    batch_size: int | None, fused: bool | None, progress: bool | None) -> Kernel:
    """Evaluate ``arch``'s NNGP/NTK on validated (N, d) inputs. See ``Serial.kernel`` for the arguments."""
    layers = arch.flatten()
    symmetric = x2 is None
    if symmetric:
        x2 = x1
    n1, n2, n0 = x1.shape[0], x2.shape[0], x1.shape[1]
    need_ntk = "ntk" in get
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused must be True, False or None; got {fused!r}")
    if fused and not arch.fusable:
        raise ValueError("fused=True needs every layer to have a closed-form kernel rule; "
                         f"{[repr(l) for l in layers if not l.fusable]} use quadrature (pass fused=None)")
    # fused=None: compile when it pays (kernels/flat_plan.py): eager until this architecture's eager seconds on
    # large grids reach the device's compile cost, then the compiled pass from that tile on.
    key = (need_ntk, n0)
    differentiable = carries_derivatives(x1) or carries_derivatives(x2)
    # CUDA, float32, Dense, the ReLU family and erf, nothing to differentiate: one hand-written Triton pass per
    # tile, compiled in about a second (kernels/triton_flat.py); torch.compile's tens of seconds are never waited for.
    use_triton = fused is not False and not differentiable and triton_flat.usable(x1.device, x1.dtype)
    table = triton_flat.program(layers, n0) if use_triton else None
    gpu_pass = table is not None
    auto = fused is None and arch.fusable and n1 * n2 >= FUSE_MIN_ENTRIES and not gpu_pass
    kind = x1.device.type
    spent_before = arch._eager_seconds.get(key, 0.0)
    auto = auto and arch._fused_steps.get(key) is not False  # False: compiling failed here before
    fuse = not gpu_pass and (bool(fused) or (auto and (key in arch._fused_steps or compile_pays(spent_before, kind))))
    # Eager tiles with nothing to differentiate run their rules in place, on buffers reused from tile to tile
    # (bitwise the same values; ~1.4x faster on a CPU, where memory traffic is most of a tile's cost), and their
    # fewer temporaries leave room for larger tiles.
    scratch = None if fuse or gpu_pass or differentiable else Scratch()
    costs = [layer.tile_cost if scratch is None or layer.in_place_tile_cost is None else layer.in_place_tile_cost
             for layer in layers]
    cost = triton_flat.TILE_COST if gpu_pass else max(costs)
    plan = plan_flat(cost, n1, n2, x1.element_size(), device_info(x1.device), fuse or gpu_pass, batch_size,
                     threads=torch.get_num_threads())
    tile = plan.tile
    step = _step_function(arch, layers, need_ntk, n0, fuse)
    check_fits((len(get) * n1 * n2 + plan.working) * x1.element_size(), x1.device,
               f"the ({n1}, {n2}) kernel(s) {get}", "Ask for one kernel (get='ntk'), or compute blocks of rows of x1 "
               "in turn.")
    out_nngp = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device) if "nngp" in get else None
    out_ntk = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device) if need_ntk else None
    # Σ⁽⁰⁾ = x·x'/n0 (DESIGN conventions); its diagonal by the same formula on both sides.
    sq1 = (x1 * x1).sum(1) / n0
    sq2 = sq1 if symmetric else (x2 * x2).sum(1) / n0
    tiles = [(i, j) for i in range(0, n1, tile) for j in range(i if symmetric else 0, n2, tile)]
    show = progress if progress is not None else len(tiles) >= _PROGRESS_MIN_TILES
    bar = tqdm(tiles, desc="kernel tiles", disable=None if show else True, leave=False)
    started = time.perf_counter()
    # busy CPUs: one thread may be faster (ntkit._threads); per-entry times compare across calls of one workload
    tuner = ThreadTuner(x1.device, len(tiles), workload=("flat", repr(arch), tuple(get), x1.dtype, tile))
    with coefficient_cache():  # per-block values (quadrature coefficients, variances) once per layer, not per tile
        # float32 pairs the rectified duals cannot resolve (ρ ≈ ±1) are recomputed in float64
        # (kernels/near_parallel.py); in-place CPU tiles learn which from their rectified rules, others test ρ.
        kinked = kinked_layers(layers) if refinable(x1, x2) else []
        refiner = None
        if kinked:
            refiner = NearParallelRefiner(lambda g, v1, v2: run_layers(layers, need_ntk, n0, g, v1, v2),
                                          x1, x2, symmetric)
        rules_report = kind == "cpu" and all(any(inner is layer for layer in layers) for inner in kinked)
        if gpu_pass:
            gpu_step = triton_flat.TritonSteps(table, need_ntk, x1.device, count_near_parallel=refiner is not None)
        unsymmetric = []  # diagonal tiles whose two halves were computed separately (see _symmetrize_diagonal_tiles)
        # On a CPU each tile is checked finite while it is in cache (one pass over the outputs in memory cost
        # ~3% at N = 4,000); a GPU checks the outputs once at the end rather than wait for a reduction per tile.
        tiles_finite = True if kind == "cpu" else None
        for i, j in bar:
            if auto and not fuse and compile_pays(spent_before + time.perf_counter() - started, kind):
                fuse = True
                step = _step_function(arch, layers, need_ntk, n0, True)
            if fuse:
                tuner.freeze()  # compiled code is specialised to the thread count: no switching
            tuner.start()
            rows, cols = slice(i, min(i + tile, n1)), slice(j, min(j + tile, n2))
            if scratch is None or fuse:
                gram = (x1[rows] @ x2[cols].T) / n0
            else:  # the same product into a reused buffer (fresh tile-sized allocations page-fault on a CPU)
                shape = (rows.stop - rows.start, cols.stop - cols.start)
                gram = torch.matmul(x1[rows], x2[cols].T, out=scratch.empty(shape, x1)).div_(n0)
            if symmetric and i == j:
                gram.diagonal().copy_(sq1[rows])  # exactly |x|²/n0, so a point's self-correlation is exactly 1
            masks = [] if refiner is not None and rules_report and scratch is not None and not fuse else None
            written = False  # the Triton kernel wrote the tile straight into the outputs
            try:
                if gpu_pass:
                    # straight into the outputs, unless only the NTK is wanted (the NNGP then needs a buffer)
                    into = (out_nngp[rows, cols], out_ntk[rows, cols] if need_ntk else None) if out_nngp is not None \
                        else (None, None)
                    nngp, ntk, final1, final2 = gpu_step(gram, sq1[rows, None], sq2[None, cols], symmetric and i == j,
                                                         *into)
                    written = into[0] is not None
                    if gpu_step.subnormal:  # variances below float32's normal range: the tile on torch's rules
                        nngp, ntk, final1, final2 = step(gram, sq1[rows, None], sq2[None, cols])
                        written = False
                elif fuse:
                    nngp, ntk, final1, final2 = step(gram, sq1[rows, None], sq2[None, cols])
                else:
                    nngp, ntk, final1, final2 = step(gram, sq1[rows, None], sq2[None, cols], scratch, masks,
                                                     symmetric and i == j)
            except Exception as err:  # no compiler here, an unsupported backend or GPU
                if gpu_pass:  # eager torch for this tile and the rest; not tried again in this process
                    triton_support.disable(err)
                    warnings.warn(f"ntkit: the Triton kernel failed ({type(err).__name__}: {err}); falling back to "
                                  "eager torch", RuntimeWarning, stacklevel=3)
                    gpu_pass = False
                else:  # torch.compile unavailable here (no compiler, unsupported backend)
                    if not fuse or fused:
                        raise
                    warnings.warn(f"ntkit: fused kernel evaluation failed ({type(err).__name__}: {err}); "
                                  "falling back to eager torch", RuntimeWarning, stacklevel=3)
                    fuse = auto = False
                    arch._fused_steps[(need_ntk, n0)] = False
                    step = _step_function(arch, layers, need_ntk, n0, False)
                nngp, ntk, final1, final2 = step(gram, sq1[rows, None], sq2[None, cols])
            exactly_symmetric = gpu_pass and not gpu_step.subnormal  # the kernel's diagonal tiles are (TritonSteps)
            if refiner is not None and not (gpu_pass and not gpu_step.near_parallel):
                exactly_symmetric = False
                buffer = None if masks is not None or scratch is None or fuse else scratch.empty(nngp.shape, nngp)
                refiner.refine(nngp, ntk if isinstance(ntk, torch.Tensor) else None, masks, rows, cols,
                               (final1, final2), buffer)
                if buffer is not None:
                    scratch.give(buffer)
            if tiles_finite:
                tiles_finite = _finite(nngp if out_nngp is not None else None, ntk if need_ntk else None)
            for out, value in ((out_nngp, nngp), (out_ntk, ntk)):
                if out is None:
                    continue
                if not written:
                    out[rows, cols] = value
                if symmetric and i != j:
                    out[cols, rows] = value.T
            if symmetric and i == j and not exactly_symmetric:
                unsymmetric.append(rows)
            if scratch is not None and not fuse:
                scratch.give(nngp, ntk)  # copied out: the next tile reuses their buffers
            tuner.stop((rows.stop - rows.start) * (cols.stop - cols.start))
        if refiner is not None:  # the recomputed pairs' points with themselves: float64 too
            refiner.refine_diagonal(out_nngp, out_ntk)
            if tiles_finite and refiner.refined:
                tiles_finite = _finite(*(out.diagonal() for out in (out_nngp, out_ntk) if out is not None))
    if auto and not fuse:
        arch._eager_seconds[key] = spent_before + time.perf_counter() - started
    _symmetrize_diagonal_tiles(out_nngp, out_ntk, unsymmetric)  # moves entries: no new values
    for name, out in (("NNGP", out_nngp), ("NTK", out_ntk)):
        _check_no_overflow(out, name, arch, known_finite=bool(tiles_finite))
    return Kernel(nngp=out_nngp, ntk=out_ntk)


def evaluate_diagonal(arch, x: torch.Tensor, *, get: tuple[str, ...]) -> Kernel:
    """k(x_i, x_i) for every row of validated (N, d) inputs: the layer rules on the N self-pairs, O(N)."""
    n0 = x.shape[1]
    check_fits((len(get) + max(layer.tile_cost for layer in arch.flatten()) + 4) * x.shape[0] * x.element_size(),
               x.device, f"the diagonal of the kernel(s) {get}", "Pass fewer points at once.")
    sq = (x * x).sum(1) / n0
    nngp, ntk = run_layers(arch.flatten(), "ntk" in get, n0, sq, sq, sq)
    out = {name: value for name, value in (("nngp", nngp), ("ntk", ntk)) if name in get}
    for name, value in out.items():
        _check_no_overflow(value, name.upper(), arch)
    return Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))


def _finite(*tensors) -> bool:
    """Whether every entry of these tensors (None and Python numbers skipped) is finite: min and max are finite
    exactly when every entry is (NaN propagates through both), one fused reduction each."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            low, high = torch.aminmax(t)
            if not bool(torch.isfinite(low) & torch.isfinite(high)):
                return False
    return True


def _check_no_overflow(out: torch.Tensor | None, name: str, arch, known_finite: bool = False) -> None:
    """Refuse a kernel that left the dtype's range instead of returning inf or NaN.

    The inputs are checked finite before any work, so a non-finite entry comes from overflow (the kernels grow like
    w_std^(2L) and with |x|²/n0, and inf − inf or 0·inf then turns into NaN further down the recursion) or from an
    activation that returns NaN at a finite pre-activation (``nk.Activation(torch.sqrt)``): the latter is looked
    for first, on this failure path only, and named."""
    if known_finite or out is None or _finite(out):  # ~30x cheaper than materialising isfinite's N1×N2 mask
        return
    count = int((~torch.isfinite(out)).sum())
    culprit = _activation_returning_nan(arch, out.dtype, out.device)
    if culprit is not None:
        raise ValueError(f"the infinite-width {name} of {arch!r} has {count} NaN/inf entries, not from overflow: "
                         f"{culprit}")
    raise FloatingPointError(
        f"the infinite-width {name} of {arch!r} overflowed {out.dtype} ({count} non-finite entries): the kernel "
        "grows like w_std^(2·layers) and with |x|²/n0. Use smaller w_std / b_std, fewer layers, standardised "
        "inputs, or float64 inputs.")


def _activation_returning_nan(arch, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why an activation of ``arch`` makes its kernel NaN, or None: σ or σ' evaluated at finite pre-activations
    (0 and ±10^k, k = −8 … 8 in steps of 0.1: quadrature visits √q·z for nodes z up to ~±15 and any variance q)
    returns NaN there."""
    from ..layers.activations import Activation  # here: ntkit.layers imports this module's package

    magnitudes = torch.logspace(-8, 8, 161, dtype=torch.float64)
    probe = torch.cat([torch.zeros(1, dtype=torch.float64), magnitudes, -magnitudes]).to(dtype=dtype, device=device)
    for position, layer in enumerate(arch.flatten()):
        if not isinstance(layer, Activation):
            continue
        for what, fn in (("returned", layer.fn), ("has a derivative that returned", layer.derivative)):
            try:
                values = fn(probe.clone())
            except Exception:  # σ cannot even be probed so: leave the diagnosis to the overflow message
                continue
            if isinstance(values, torch.Tensor) and values.shape == probe.shape and bool(torch.isnan(values).any()):
                bad = probe[torch.isnan(values)]
                u = float(bad[bad.abs().argmin()])
                return (f"the activation {layer!r} (layer {position} of the flattened architecture) {what} NaN for the "
                        f"finite pre-activation u = {u:g}. The kernel rule averages σ over Gaussian pre-activations, "
                        "which take every real value: σ must be finite on the whole real line (e.g. "
                        "torch.sqrt(u.abs()) rather than torch.sqrt(u); clamp u before a log).")
    return None


def _symmetrize_diagonal_tiles(out_nngp, out_ntk, tiles: list[slice]) -> None:
    """Make these diagonal tiles exactly symmetric: their two halves were computed separately and can differ in
    the last bit (a Gram product's summation order need not be symmetric, nor a rule's arithmetic in its two
    points, e.g. GELU's). Most tiles already are (CPU BLAS Grams and the ReLU family's rules: measured), and one
    comparison is much cheaper than the symmetrising passes (N = 4,000 ReLU kernel, paired: 196 -> 188 ms)."""
    for out in (out_nngp, out_ntk):
        if out is None:
            continue
        for rows in tiles:
            block = out[rows, rows]
            if torch.equal(block, block.T):
                continue
            upper = torch.triu(block, 1)
            block.copy_(upper + upper.T + torch.diag_embed(block.diagonal()))
