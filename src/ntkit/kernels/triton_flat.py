"""A flat kernel's whole recursion in one hand-written Triton pass per tile, for CUDA devices.

Why. On a GPU an eager tile costs one launch and one read and write of the tile per elementwise operation, about
ten per layer; ``torch.compile`` fuses them but its first call takes 29-47 s on an H200 (issue 11). Triton ships
with CUDA builds of torch and compiles this one kernel in about a second, once per process and depth (then from
its disk cache): every (Dense, ReLU-family) recursion runs in it, reading the Gram tile once and writing the NNGP
and NTK once.

What. The layers are encoded as a small table of operations (``program``), interpreted per tile by one kernel:

    Dense:      c ← w² c + b²,   Θ ← w² Θ + A c_new + B c_old + C   (A = 1, B = C = 0 in NTK parameterisation;
                                                                  A = 0, B = fan-in, C = 1 in the standard one)
    rectified:  ρ = c / (√q1 √q2),  θ = arccos ρ,  K̇ = (a² + b²)/2 − (a − b)²/(2π) θ,
                c ← √q1 √q2 (ρ K̇ + (a − b)²/(2π) sin θ),  Θ ← Θ K̇   (Cho & Saul 2009; ``dual.rectified``)
    erf:        D = √((1 + 2q1)(1 + 2q2) − 4c²),  c ← (2/π) arctan(2c / D),  Θ ← Θ (4/π) / D
                (Williams 1997; D formed as ``dual.erf`` forms it, without q² intermediates)

with the rows' and columns' variances q carried alongside by the same rules at ρ = 1. ``Identity`` is skipped (its
rule changes nothing); any other layer keeps the architecture on the torch engines. arccos is Cephes' acosf
(Moshier 1989: arcsin's degree-5 polynomial on |x| ≤ ½, the half-angle reduction beyond), within 1.25 ulp of the
exact value on [−1, 1] in float32, and arctan Cephes' atanf (a degree-4 polynomial in x² after reducing |x| below
tan(π/8)), so the kernel needs nothing beyond Triton's core language, and the CPU test
suite runs the same source through Triton's interpreter (``triton_support.INTERPRET``). Correlations within 4 ulps
of ±1 snap to ±1 as in ``dual.correlation``; pairs within ``NEAR_PARALLEL`` of ±1 at a rectified layer (off a
diagonal tile's diagonal) are counted, so that the engine refines them in float64 only when there are any.
Values agree with the eager engine to float32 rounding (the compiler fuses multiply-adds), not bitwise. Diagonal
tiles of a symmetric kernel come out exactly symmetric (one triangle of the Gram is read), and tiles are written
straight into the engine's outputs.
"""

from __future__ import annotations

import math

import torch

from . import triton_support
from .dual import NEAR_PARALLEL
from .triton_support import tl, triton

__all__ = ["program", "TritonSteps", "usable", "TILE_COST"]

# Tile-sized tensors alive per tile: the Gram tile (kept: a tile whose variances leave float32's normal range is
# recomputed from it by torch's rules), the NNGP and the NTK.
TILE_COST = 3
# Operation codes of the program table; each row is (code, six parameters): 7 numbers, as the kernel reads them.
_DENSE, _RECTIFIED, _ERF = 0.0, 1.0, 2.0
# Blocks of 8 × 128 entries on 4 warps: 128 contiguous columns make full 512-byte rows for each load and store,
# and 8 entries per thread keep the kernel at 95 registers (compiled for sm_90 here: 32 × 128 took 255 and spilled,
# 16 × 128 took 168), so that five blocks share an SM and hide the memory latency (123 and four blocks in the
# variant with erf's branch, ``HAS_ERF``).
_BLOCK_M, _BLOCK_N, _WARPS = 8, 128, 4


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton pass runs here: float32 tiles (float64 stays on torch) where Triton kernels run
    (``triton_support.usable``)."""
    return dtype == torch.float32 and triton_support.usable(device)


def program(layers, width: int) -> torch.Tensor | None:
    """The layers as a (n, 7) float64 table of operations, or None when a layer has no Triton rule.

    ``width``: the input's features (the first Dense's fan-in, used by the standard parameterisation)."""
    from ..layers.activations import Erf, Identity, _Rectified  # here: ntkit.layers imports this package
    from ..layers.dense import Dense

    rows = []
    for layer in layers:
        if type(layer) is Identity:
            continue
        if isinstance(layer, Dense) and type(layer).kernel_rule is Dense.kernel_rule:  # not a subclass's own rule
            w2, b2 = layer.w_std ** 2, layer.b_std ** 2
            if layer.parameterization == "ntk":
                rows.append((_DENSE, w2, b2, 1.0, 0.0, 0.0, 0.0))
            else:  # Θ ← fan-in · c_old + 1 + w² Θ (layers/dense.py)
                rows.append((_DENSE, w2, b2, 0.0, float(width), 1.0, 0.0))
            width = layer.out_features
        elif isinstance(layer, _Rectified) and type(layer).kernel_rule is _Rectified.kernel_rule:
            a, b = layer.slopes
            rows.append((_RECTIFIED, (a - b) ** 2 / (2.0 * math.pi), (a * a + b * b) / 2.0, 0.0, 0.0, 0.0, 0.0))
        elif isinstance(layer, Erf) and type(layer).kernel_rule is Erf.kernel_rule and type(layer).dual is Erf.dual:
            rows.append((_ERF, 2.0 / math.pi, 4.0 / math.pi, 0.0, 0.0, 0.0, 0.0))
        else:
            return None
    if not rows:
        return None
    return torch.tensor(rows, dtype=torch.float64)


class TritonSteps:
    """The per-tile step of ``evaluate_kernel`` for one architecture's ``program``: (gram, var1, var2, diagonal,
    nngp_out, ntk_out) → (NNGP, NTK or None, final variances of the rows (t1, 1) and of the columns (1, t2)).

    ``diagonal``: the tile is on a symmetric kernel's diagonal. Its Gram is then read from the upper triangle on
    both sides, and every rule is symmetric in its two points (√q1·√q2 is one product), so the tile comes out
    exactly symmetric without a symmetrising pass, and its own diagonal pairs are not counted as near-parallel.
    ``nngp_out``/``ntk_out``: (t1, t2) views with unit column stride (the engine's output blocks) to write into,
    or None for fresh buffers.

    After each call, read back once per tile (few on a GPU): ``near_parallel``, the tile's count of pairs within
    ``NEAR_PARALLEL`` of ρ = ±1 at a rectified layer (0 unless ``count_near_parallel``), and ``subnormal``, its
    count of rows and columns whose variance at a rectified layer is positive but below ``SUBNORMAL_SCALE``: the
    GPU's division and square root flush subnormal numbers to zero, so such a tile is recomputed by torch."""

    def __init__(self, table: torch.Tensor, need_ntk: bool, device: torch.device, count_near_parallel: bool):
        self.table = table.to(device=device, dtype=torch.float32).contiguous()
        # erf's branch is compiled only into the variant that runs it: it takes 123 registers per thread where the
        # ReLU family's take 95 (sm_90; tests/kernels/test_triton_compile.py), four blocks per SM instead of five
        self.has_erf = bool((table[:, 0] == _ERF).any())
        self.need_ntk = need_ntk
        self.count = count_near_parallel
        self.near_parallel = self.subnormal = 0
        self._counters = torch.zeros(2, dtype=torch.int32, device=device)

    def __call__(self, gram: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, diagonal: bool = False,
                 nngp_out: torch.Tensor | None = None, ntk_out: torch.Tensor | None = None):
        t1, t2 = gram.shape
        gram = gram.contiguous()
        nngp = _destination(nngp_out, gram)
        ntk = _destination(ntk_out, gram) if self.need_ntk else nngp  # unused without the NTK: any pointer will do
        if ntk.stride(0) != nngp.stride(0):
            raise ValueError("the NNGP and NTK destinations must have the same row stride")
        final1 = torch.empty(t1, dtype=gram.dtype, device=gram.device)
        final2 = torch.empty(t2, dtype=gram.dtype, device=gram.device)
        self._counters.zero_()
        grid = (triton.cdiv(t1, _BLOCK_M), triton.cdiv(t2, _BLOCK_N))
        triton_support.build(_flat_recursion)[grid](
            gram, nngp, ntk, var1.reshape(-1).contiguous(), var2.reshape(-1).contiguous(), final1, final2,
            self.table, self._counters, t1, t2, gram.stride(0), nngp.stride(0), int(diagonal),
            N_OPS=self.table.shape[0], NEED_NTK=self.need_ntk, COUNT=self.count, HAS_ERF=self.has_erf, SNAP=_SNAP,
            NEAR=1.0 - NEAR_PARALLEL,
            TINY=SUBNORMAL_SCALE, WIDE=triton_support.wide_offsets(t1, t2, gram.stride(0), nngp.stride(0)),
            BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=_WARPS)
        self.near_parallel, self.subnormal = (int(v) for v in self._counters.tolist())
        return nngp, (ntk if self.need_ntk else None), final1[:, None], final2[None, :]


def _destination(out: torch.Tensor | None, gram: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty_like(gram)
    if out.shape != gram.shape or out.stride(1) != 1 or out.dtype != gram.dtype or out.device != gram.device:
        raise ValueError(f"an output block must be a {tuple(gram.shape)} {gram.dtype} view with unit column stride "
                         f"on {gram.device}; got {tuple(out.shape)}, strides {out.stride()}, {out.dtype}")
    return out


_SNAP = 1.0 - 4.0 * torch.finfo(torch.float32).eps  # ρ beyond 4 ulps of ±1 is ±1 (dual.correlation)
# Variances below this (2⁻¹⁰³ ≈ 1e-31) make covariances of their pairs subnormal: see TritonSteps.
SUBNORMAL_SCALE = torch.finfo(torch.float32).tiny / torch.finfo(torch.float32).eps


def _arctan_rule(t):
    """arctan t (Cephes atanf, Moshier 1989): |t| is reduced below tan(π/8) by π/2 − arctan(1/|t|) beyond
    tan(3π/8) and by π/4 + arctan((|t| − 1)/(|t| + 1)) between, then a degree-4 polynomial in t²."""
    size = tl.abs(t)
    big = size > 2.414213562373095
    mid = size > 0.4142135623730950
    reduced = tl.where(big, -tl.div_rn(1.0, tl.where(big, size, 1.0)),
                       tl.where(mid, tl.div_rn(size - 1.0, size + 1.0), size))
    z = reduced * reduced
    arctan = ((((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1)
              * z * reduced + reduced + tl.where(big, 1.57079632679490, tl.where(mid, 0.785398163397448, 0.0)))
    return tl.where(t < 0.0, -arctan, arctan)


# A device function of the kernel below (jitted as Triton's own library functions are: interpretable when Triton
# was imported with TRITON_INTERPRET=1).
_arctan = None if triton is None else triton.jit(_arctan_rule)


def _flat_recursion(gram_ptr, nngp_ptr, ntk_ptr, var1_ptr, var2_ptr, final1_ptr, final2_ptr, table_ptr,
                    counter_ptr, t1, t2, gram_stride, out_stride, diagonal,
                    N_OPS: tl.constexpr, NEED_NTK: tl.constexpr, COUNT: tl.constexpr, HAS_ERF: tl.constexpr,
                    SNAP: tl.constexpr,
                    NEAR: tl.constexpr, TINY: tl.constexpr, WIDE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) block of a tile: the program table applied to its Gram entries (module docstring)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:  # offsets past 2³¹ (wide_offsets)
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    row_in = rows < t1
    col_in = cols < t2
    inside = row_in[:, None] & col_in[None, :]
    if diagonal != 0:  # the upper triangle on both sides: a symmetric Gram (a GEMM's need not be, bitwise)
        upper = rows[:, None] <= cols[None, :]
        offsets = tl.where(upper, rows[:, None] * gram_stride + cols[None, :],
                           cols[None, :] * gram_stride + rows[:, None])
    else:
        offsets = rows[:, None] * gram_stride + cols[None, :]
    c = tl.load(gram_ptr + offsets, mask=inside, other=0.0)
    q1 = tl.load(var1_ptr + rows, mask=row_in, other=0.0)
    q2 = tl.load(var2_ptr + cols, mask=col_in, other=0.0)
    ntk = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    near = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    small = tl.zeros((BLOCK_M,), dtype=tl.int32)  # variances below TINY seen (only zero or not is read)
    for op in range(N_OPS):
        base = table_ptr + op * 7
        code = tl.load(base)
        p1 = tl.load(base + 1)
        p2 = tl.load(base + 2)
        if code == 0.0:  # Dense: p1 = w², p2 = b², then the NTK's A, B, C
            c_new = p1 * c + p2
            if NEED_NTK:
                ntk = p1 * ntk + tl.load(base + 3) * c_new + tl.load(base + 4) * c + tl.load(base + 5)
            c = c_new
            q1 = p1 * q1 + p2
            q2 = p1 * q2 + p2
        elif code == 1.0:  # rectified: p1 = (a − b)²/(2π), p2 = (a² + b²)/2
            small += ((q1 > 0.0) & (q1 < TINY) & row_in).to(tl.int32)
            small += tl.sum(((q2 > 0.0) & (q2 < TINY) & col_in).to(tl.int32), axis=0)
            r1 = tl.sqrt_rn(q1)
            r2 = tl.sqrt_rn(q2)
            norm = r1[:, None] * r2[None, :]  # √q1·√q2 as dual.correlation forms it: the same for (x, x'), (x', x)
            # a zero variance has c = 0 (Cauchy–Schwarz), and ρ = 0 there (dual.correlation)
            rho = tl.div_rn(c, tl.where(norm > 0.0, norm, 1.0))
            rho = tl.minimum(tl.maximum(rho, -1.0), 1.0)
            if COUNT:
                flagged = tl.abs(rho) > NEAR
                if diagonal != 0:
                    flagged = flagged & (rows[:, None] != cols[None, :])
                near += (flagged & inside).to(tl.int32)
            rho = tl.where(rho > SNAP, 1.0, tl.where(rho < -SNAP, -1.0, rho))
            # θ = arccos ρ (Cephes acosf): arcsin s = s + s z P(z) with z = s² on |s| ≤ ½, and
            # arccos |ρ| = 2 arcsin √((1 − |ρ|)/2) beyond ½.
            size = tl.abs(rho)
            far = size > 0.5
            z = tl.where(far, 0.5 * (1.0 - size), rho * rho)
            s = tl.where(far, tl.sqrt_rn(z), size)
            poly = (((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z
                    + 7.4953002686e-2) * z + 1.6666752422e-1
            arcsin = s + s * z * poly
            theta = tl.where(far, tl.where(rho < 0.0, 3.14159265358979 - 2.0 * arcsin, 2.0 * arcsin),
                             1.57079632679490 - tl.where(rho < 0.0, -arcsin, arcsin))
            sin_theta = tl.sqrt_rn(tl.maximum(1.0 - rho * rho, 0.0))
            kdot = p2 - p1 * theta
            c = (rho * kdot + p1 * sin_theta) * norm  # at ρ = 1: p2·(r1·r2)
            if NEED_NTK:
                ntk = ntk * kdot
            q1 = p2 * (r1 * r1)  # what c becomes at ρ = 1, in the same order: a point's ρ with itself stays 1
            q2 = p2 * (r2 * r2)
        elif HAS_ERF:  # erf: p1 = 2/π, p2 = 4/π. c is clamped to b = √q1·√q2 (snapped within 4 ulps, dual._bounded),
            # D = √m · √((1 + 2(q1 + q2))/m + 4(b − |c|)/m · (b + |c|)) with m = max(1, b) (dual._scaled_root).
            small += ((q1 > 0.0) & (q1 < TINY) & row_in).to(tl.int32)  # b would flush to 0 on a GPU
            small += tl.sum(((q2 > 0.0) & (q2 < TINY) & col_in).to(tl.int32), axis=0)
            r1 = tl.sqrt_rn(q1)
            r2 = tl.sqrt_rn(q2)
            bound = r1[:, None] * r2[None, :]
            c = tl.where(tl.abs(c) > bound * SNAP, tl.where(c < 0.0, -bound, bound),
                         tl.minimum(tl.maximum(c, -bound), bound))
            size = tl.abs(c)
            m = tl.maximum(bound, 1.0)
            d = tl.sqrt_rn(m) * tl.sqrt_rn(tl.div_rn(1.0 + 2.0 * (q1[:, None] + q2[None, :]), m)
                                           + tl.div_rn(4.0 * (bound - size), m) * (bound + size))
            if NEED_NTK:
                ntk = ntk * tl.div_rn(p2, d)
            c = p1 * _arctan(tl.div_rn(2.0 * c, d))
            # the rows' and columns' variances: the same rule at c = q (c snaps to b = √q·√q, so b − |c| = 0)
            b1 = r1 * r1
            b2 = r2 * r2
            m1 = tl.maximum(b1, 1.0)
            m2 = tl.maximum(b2, 1.0)
            d1 = tl.sqrt_rn(m1) * tl.sqrt_rn(tl.div_rn(1.0 + 2.0 * (q1 + q1), m1) + tl.div_rn(4.0 * (b1 - b1), m1)
                                             * (b1 + b1))
            d2 = tl.sqrt_rn(m2) * tl.sqrt_rn(tl.div_rn(1.0 + 2.0 * (q2 + q2), m2) + tl.div_rn(4.0 * (b2 - b2), m2)
                                             * (b2 + b2))
            q1 = p1 * _arctan(tl.div_rn(2.0 * b1, d1))
            q2 = p1 * _arctan(tl.div_rn(2.0 * b2, d2))
    destination = rows[:, None] * out_stride + cols[None, :]
    tl.store(nngp_ptr + destination, c, mask=inside)
    if NEED_NTK:
        tl.store(ntk_ptr + destination, ntk, mask=inside)
    tl.store(final1_ptr + rows, q1, mask=row_in & (pid_n == 0))
    tl.store(final2_ptr + cols, q2, mask=col_in & (pid_m == 0))
    if COUNT:
        tl.atomic_add(counter_ptr, tl.sum(tl.sum(near, axis=1), axis=0))
    tl.atomic_add(counter_ptr + 1, tl.sum(small, axis=0))
