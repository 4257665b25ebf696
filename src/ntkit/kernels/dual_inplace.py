"""In-place versions of the closed-form duals (``kernels.dual``) for the engines' eager tiles.

On a CPU memory traffic, not arithmetic, is most of an eager tile's cost: each out-of-place op writes a fresh
tile-sized buffer (and a fresh buffer page-faults). Where nothing is differentiated the engines mark their tiles
``in_place`` (``KernelState.in_place``) and lend a scratch pool (``kernels.scratch``); these rules then overwrite
their input and reuse a few buffers. The flat tiles' rules (``rectified_tile_``, ``erf_tile_``) perform the same
IEEE operations in the same order as their twins in ``kernels.dual`` (only commuted products and sums), so the
values are bitwise the same (``tests/kernels/test_flat_in_place.py``); ``rectified_``, for the convolutional
engine's states, agrees with ``dual.rectified`` to rounding (it fuses 1 − ρ² into one ``addcmul``). On a CPU cheap
reductions decide which of the rare passes (the clamp to [−1, 1], the snaps to ±1) a tile needs at all; other
devices run them, rather than make the host wait.
"""

from __future__ import annotations

import math

import torch

from .dual import _TWO_PI, NEAR_PARALLEL, _root, smallest_subnormal

Tensor = torch.Tensor

__all__ = ["rectified_", "rectified_tile_", "erf_tile_", "gelu_tile_", "sin_tile_", "cos_tile_"]


def _extremes(rho: Tensor, self_pairs: bool, edge: float) -> tuple[float, float]:
    """(min, max) of ``rho``, read back (CPU). With ``self_pairs`` (``KernelState.self_pairs``: viewed as
    (B, P, P), ``rho`` pairs a position of a point with itself on the diagonal of its last two axes) and every such
    entry above ``edge``, those entries are set to 1, which the snap would have given them, and read as 0, inside
    both snap thresholds: then only other entries can call for a snap or a near-parallel mask. A diagonal tile (one
    self-pair per row) or a point with itself (a 1024×1024 diagonal in a 32×32 image's state) no longer triggers
    the masked passes over the whole state by itself. Same values either way."""
    positions = _positions(rho) if self_pairs else 0
    if positions:
        diagonal = rho.view(-1, positions, positions).diagonal(dim1=1, dim2=2)
        if bool(diagonal.min() > edge):  # NaN compares False: the plain path
            diagonal.zero_()
            low, high = torch.aminmax(rho)
            diagonal.fill_(1.0)
            return float(low), float(high)
    low, high = torch.aminmax(rho)
    return float(low), float(high)


def _positions(state: Tensor) -> int:
    """P for a contiguous state of pairs viewed as (B, P, P) with a point's self-pairs on the diagonals (a flat
    tile (P, P), or a convolutional engine's full-form state (t1, t2, *S, *S)); 0 where it cannot be viewed so."""
    if not state.is_contiguous() or state.ndim < 2 or not state.numel() or (
            state.ndim == 2 and state.shape[0] != state.shape[1]):
        return 0
    positions = math.isqrt(state.numel() // (1 if state.ndim == 2 else state.shape[0] * state.shape[1]))
    return positions if state.numel() % (positions * positions) == 0 and positions > 0 else 0


def rectified_(c: Tensor, q1: Tensor, q2: Tensor, a: float, b: float, derivative: bool = True, scratch=None,
               self_pairs: bool = False):
    """``rectified`` for large spatial states, overwriting ``c`` and returning it as K: a dozen in-place passes and
    two buffers from the engine's ``scratch`` pool (:mod:`ntkit.kernels.scratch`) instead of twice as many
    allocating passes (memory traffic, not arithmetic, is the cost of a 10⁶-entry covariance).

    Correlations within 4 ulps of ±1 are snapped to ±1: two summation orders of the same covariance differ in the
    last bits, and arccos turns that into √ε at ρ = 1 (1e-4 relative in float32), so a position paired with itself
    would not get the exact K(x, x)[p, p] it has at ρ = 1. (Scaling every ρ by 1 + 4ε would snap for free, but
    biases every entry by 4ε: measured 1e-6 relative error on Myrtle-5 in float32 instead of 1e-7.)

    ``self_pairs``: a full-form state whose every pair is a point with itself (see ``_extremes``)."""
    from .scratch import empty

    tiny = smallest_subnormal(c.dtype)
    root1, root2 = torch.sqrt(q1), torch.sqrt(q2)
    # No clamp to [−1, 1]: the snaps below set every ρ beyond ±edge, so every ρ beyond ±1, to ±1 (NaN stays).
    rho = c.div_(torch.clamp(root1, min=tiny)).div_(torch.clamp(root2, min=tiny))
    edge = 1.0 - 4.0 * torch.finfo(c.dtype).eps
    # On a CPU one reduction says which snaps any entry needs: a pair of different images usually has none, a point
    # with itself only the one at +1 (Myrtle-5, one pair: the four compare-and-fill passes were 19 ms of 61). A
    # GPU runs both rather than wait for the reduction. Same values either way.
    low, high = (-1.0, 1.0) if rho.device.type != "cpu" else _extremes(rho, self_pairs, edge)
    if high > edge:
        rho.masked_fill_(rho > edge, 1.0)
    if low < -edge:
        rho.masked_fill_(rho < -edge, -1.0)  # and −1 (x against −x; see correlation)
    mix = (a - b) ** 2 / _TWO_PI
    even = (a * a + b * b) / 2.0
    kdot = torch.arccos(rho, out=empty(scratch, rho.shape, rho)).mul_(-mix).add_(even)
    one = torch.ones((), dtype=rho.dtype, device=rho.device)
    sin_theta = torch.addcmul(one, rho, rho, value=-1.0, out=empty(scratch, rho.shape, rho)).sqrt_()
    k = rho.mul_(kdot).add_(sin_theta, alpha=mix).mul_(root1).mul_(root2)  # ρ·K̇ + mix·sin θ, in c's storage
    if scratch is not None:
        scratch.give(sin_theta, None if derivative else kdot)
    return k, (kdot if derivative else None)


def rectified_tile_(c: Tensor, q1: Tensor, q2: Tensor, a: float, b: float, derivative: bool = True,
                    scratch=None, avoid_sync: bool | None = None, near_parallel: list | None = None,
                    self_pairs: bool = False):
    """``rectified`` on a flat tile, overwriting ``c`` with K: bitwise the same values as ``rectified`` (the same
    IEEE operations in the same order, no fused multiply-adds), in three scratch buffers instead of ~20 fresh
    tile-sized allocations. The eager flat engine runs it where nothing needs derivatives: on a CPU, memory traffic
    is most of the tile's cost (N = 4,000 ReLU MLP: ~1.4x faster; benchmarks/analytic_kernel.py).

    On a CPU, two cheap reductions decide whether the zero-norm clamp and the snap to ±1 are needed at all; on a
    GPU (``avoid_sync``, default: any device but the CPU) both always run, since reading a reduction back would
    make the host wait for the device. The values are the same either way.

    ``near_parallel``: a list to which, when the same reduction shows a correlation within ``NEAR_PARALLEL`` of ±1
    (CPU only), the mask of such entries is appended: there float32 cannot resolve θ (kernels.near_parallel).

    ``self_pairs``: entry (i, i) pairs a point with itself (a symmetric kernel's diagonal tile), so a tile without
    other near-parallel pairs skips the snaps and reports no mask (``_extremes``; a point with itself is never
    recomputed: ``NearParallelRefiner.refine``). Same values."""
    from .scratch import empty

    if avoid_sync is None:
        avoid_sync = c.device.type != "cpu"

    finfo = torch.finfo(c.dtype)
    mix = (a - b) ** 2 / _TWO_PI
    even = (a * a + b * b) / 2.0
    root1, root2 = torch.sqrt(q1), torch.sqrt(q2)
    norm = torch.mul(root1, root2, out=empty(scratch, c.shape, c))  # √q1·√q2, as correlation() forms it
    # Rounding is monotone: only when the smallest roots' product is 0 can an entry of norm be 0 (correlation()).
    if avoid_sync or not root1.numel() or not root2.numel() or bool(root1.min() * root2.min() == 0):
        rho = c.div_(torch.clamp(norm, min=smallest_subnormal(c.dtype)))
    else:
        rho = c.div_(norm)
    # correlation()'s clamp to [-1, 1] and snap to ±1 within 4 ulps, entry for entry, in one read of the tile
    # when nothing needs either (off-diagonal tiles without duplicates or negated points, the common case).
    edge = 1.0 - 4.0 * finfo.eps
    low, high = (-1.0, 1.0) if avoid_sync else _extremes(rho, self_pairs, edge)
    if near_parallel is not None and not avoid_sync and (high > 1.0 - NEAR_PARALLEL or low < NEAR_PARALLEL - 1.0):
        near_parallel.append(rho.abs() > 1.0 - NEAR_PARALLEL)  # rare: duplicates, and a diagonal tile's diagonal
    if avoid_sync or high > edge:  # float(): NaN compares False, as bool(tensor > edge) did
        rho.masked_fill_(rho > edge, 1.0)
    if avoid_sync or low < -edge:
        rho.masked_fill_(rho < -edge, -1.0)
    kdot = torch.arccos(rho, out=empty(scratch, c.shape, c)).mul_(-mix).add_(even)  # even − mix·θ
    # √(1 − ρ²) as dual's √clamp(1 − ρ², 0) in two passes fewer: 1 + (−1)·ρ² rounds as 1 − ρ² does (the product
    # by −1 is exact), and |ρ| <= 1 makes 1 − ρ² >= 0 (rounding is monotone), so the clamp changes nothing.
    one = torch.ones((), dtype=c.dtype, device=c.device)
    sin_theta = torch.mul(rho, rho, out=empty(scratch, c.shape, c))
    sin_theta = torch.add(one, sin_theta, alpha=-1.0, out=sin_theta).sqrt_()
    k = rho.mul_(kdot).add_(sin_theta.mul_(mix)).mul_(norm)  # norm·(mix·sin θ + K̇·ρ)
    if scratch is not None:
        scratch.give(norm, sin_theta, None if derivative else kdot)
    return k, (kdot if derivative else None)


def erf_tile_(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True, scratch=None,
              avoid_sync: bool | None = None, self_pairs: bool = False):
    """``erf`` on a flat tile, overwriting ``c`` with K: bitwise the same values (the same IEEE operations in the
    same order: products and sums only commuted, ``(4/π)/D`` as torch evaluates it, 1/D·(4/π)), in at most five
    scratch buffers instead of ~25 fresh tile-sized allocations. For the flat engine's eager tiles, where nothing
    needs derivatives. On a CPU two host-side facts save passes over the tile, with the same values:

    - ``_bounded``'s clamp and snap touch only the entries that snap, and a tile whose every slack b − |c| is far
      from 0 needs neither (``_snap_few``: one reduction instead of four passes); with ``self_pairs`` (a symmetric
      kernel's diagonal tile) the diagonal is snapped on its own first.
    - Where every b = √q1·√q2 is at most 1 (the largest roots' product says so), ``_scaled_root``'s m = max(1, b)
      is 1 everywhere, and the divisions by m and the product by √m change nothing: D = √(base + 4(b − |c|)(b + |c|))
      in six passes fewer. The factor 4 rides on the sum (``add(..., alpha=4)``): 4·x is exact, so
      1 + 2(q1 + q2) + 4·(s·t) rounds as 1 + 2(q1 + q2) + (4s)·t does (a product that differs on underflow is below
      half an ulp of the sum, which is >= 1).

    ``avoid_sync`` (default: any device but the CPU) runs every pass instead, since reading a reduction back would
    make the host wait for the device; the values are the same.
    """
    from .scratch import empty

    cpu = c.device.type == "cpu" if avoid_sync is None else not avoid_sync
    bound, size, slack, largest, _ = _bounded_tile_(c, q1, q2, scratch, cpu, self_pairs)
    one = torch.ones((), dtype=c.dtype, device=c.device)
    base = torch.add(q1, q2, out=empty(scratch, c.shape, c))
    base = torch.add(one, base, alpha=2.0, out=base)  # 1 + 2(q1 + q2) (2·x is exact)
    d, spare = _scaled_root_(base, slack, bound, size, largest, 4.0, scratch)  # D
    k = c.mul_(2.0).atan2_(d).mul_(2.0 / math.pi)  # K in c's storage, as the engine's in-place rules return it
    kdot = d.reciprocal_().mul_(4.0 / math.pi) if derivative else None
    if scratch is not None:
        scratch.give(*spare, None if derivative else d)
    return k, kdot


def gelu_tile_(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True, scratch=None,
               avoid_sync: bool | None = None, self_pairs: bool = False):
    """``gelu`` on a flat tile, overwriting ``c`` with K: bitwise the same values (the same IEEE operations in the
    same order, products and sums only commuted), in at most five scratch buffers instead of ~35 fresh tile-sized
    allocations, with erf's two CPU shortcuts (``erf_tile_``: the snap decided by one reduction, and √S without
    m = max(1, b) where every b <= 1). For the flat engine's eager tiles, where nothing needs derivatives."""
    from .scratch import empty

    cpu = c.device.type == "cpu" if avoid_sync is None else not avoid_sync
    bound, size, slack, largest, _ = _bounded_tile_(c, q1, q2, scratch, cpu, self_pairs)
    base = torch.add(1.0 + q1, q2, out=empty(scratch, c.shape, c))  # 1 + q1 + q2
    root, (t, atan, r, *spare) = _scaled_root_(base, slack, bound, size, largest, 1.0, scratch)  # √S
    t = torch.div(c, root, out=t)
    atan = torch.arctan(t, out=atan)
    inv1, inv2 = 1.0 / (1.0 + q1), 1.0 / (1.0 + q2)
    # K = c/4 + (r √S + (c/(1+q1)) (t/(1+q2)) + c·arctan t) / 2π, r = (q1/(1+q1)) (q2/(1+q2))
    r = torch.mul(q1 * inv1, q2 * inv2, out=r).mul_(root)
    left = torch.mul(c, inv1, out=spare.pop() if spare else empty(scratch, c.shape, c))
    right = torch.mul(t, inv2, out=root)
    r.add_(left.mul_(right)).add_(torch.mul(c, atan, out=left)).div_(_TWO_PI)
    k = c.mul_(0.25).add_(r)
    kdot = None
    if derivative:  # K̇ = 1/4 + (arctan t + t·((3 + q1 + q2 + t²)/(1+q1))/(1+q2)) / 2π
        kdot = torch.add(3.0 + q1, q2, out=r).add_(torch.mul(t, t, out=right)).mul_(inv1).mul_(inv2)
        kdot = kdot.mul_(t).add_(atan).div_(_TWO_PI).add_(0.25)
    if scratch is not None:
        scratch.give(t, atan, left, right, *spare, None if derivative else r)
    return k, kdot


def sin_tile_(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True, scratch=None,
              avoid_sync: bool | None = None, self_pairs: bool = False):
    """``sin`` on a tile: K = e^{-h} sinh c, K̇ = e^{-h} cosh c (``_hyperbolic_pair_``), bitwise ``dual.sin``."""
    sinh, cosh = _hyperbolic_pair_(c, q1, q2, scratch, avoid_sync, self_pairs)
    return _with_derivative(sinh, cosh, derivative, scratch)


def cos_tile_(c: Tensor, q1: Tensor, q2: Tensor, derivative: bool = True, scratch=None,
              avoid_sync: bool | None = None, self_pairs: bool = False):
    """``cos`` on a tile: K = e^{-h} cosh c, K̇ = e^{-h} sinh c (``_hyperbolic_pair_``), bitwise ``dual.cos``."""
    sinh, cosh = _hyperbolic_pair_(c, q1, q2, scratch, avoid_sync, self_pairs)
    return _with_derivative(cosh, sinh, derivative, scratch)


def _with_derivative(k: Tensor, kdot: Tensor, derivative: bool, scratch):
    """(K, K̇), or (K, None) with K̇'s buffer given back to ``scratch``."""
    if not derivative and scratch is not None:
        scratch.give(kdot)
    return k, (kdot if derivative else None)


def _hyperbolic_pair_(c: Tensor, q1: Tensor, q2: Tensor, scratch, avoid_sync: bool | None, self_pairs: bool):
    """``dual._hyperbolic_pair`` on a tile in six scratch buffers (``c`` is given back to the pool): bitwise the
    same values. On a CPU one reduction of |c| says whether one of its two branches (|c| <= 1 by expm1, else by
    the two exponentials) serves every entry, and the other is not computed."""
    from .scratch import empty

    cpu = c.device.type == "cpu" if avoid_sync is None else not avoid_sync
    bound, size, slack, _, (root1, root2) = _bounded_tile_(c, q1, q2, scratch, cpu, self_pairs)
    near = torch.sub(root1, root2, out=bound).pow_(2).mul_(0.5).add_(slack).neg_().exp_()  # e^{|c| − h}
    far = torch.add(root1, root2, out=empty(scratch, c.shape, c)).pow_(2).mul_(0.5)
    far = torch.sub(slack, far, out=far).exp_()  # e^{−|c| − h}
    low, high = (float(v) for v in torch.aminmax(size)) if cpu else (0.0, math.inf)
    spare = [c, size, far]  # buffers free at the end (c's storage too: K is not written into it)
    small = None
    if not low > 1.0:  # some |c| <= 1 (or NaN): ½ e^{-(q1+q2)/2} (expm1(c) − expm1(−c)), c clamped to [−1, 1]
        inner = torch.clamp(c, -1.0, 1.0, out=slack)
        minus = torch.neg(inner, out=empty(scratch, c.shape, c)).expm1_()
        small = torch.add(q1, q2, out=empty(scratch, c.shape, c)).mul_(-0.5).exp_().mul_(0.5)
        small.mul_(inner.expm1_().sub_(minus))
        spare.append(inner)
        free = minus
    else:
        free = slack
    if high <= 1.0:  # every |c| <= 1
        sinh = small
        spare.append(free)
    else:  # ½ (near − far) with c's sign where |c| > 1
        sinh = torch.sub(near, far, out=free).mul_(0.5).copysign_(c)
        if small is not None:
            sinh = torch.where(size <= 1.0, small, sinh, out=sinh)
            spare.append(small)
    cosh = near.add_(far).mul_(0.5)
    if scratch is not None:
        scratch.give(*spare)
    return sinh, cosh


def _bounded_tile_(c: Tensor, q1: Tensor, q2: Tensor, scratch, cpu: bool, self_pairs: bool):
    """``dual._bounded`` on a tile, clamping and snapping ``c`` in place: (b, |c|, b − |c|, B, (√q1, √q2)), the
    first three tile-sized from ``scratch``, and on a CPU B = the largest roots' product (>= every b: rounding is
    monotone), else inf."""
    from .scratch import empty

    root1, root2 = _root(q1), _root(q2)
    bound = torch.mul(root1, root2, out=empty(scratch, c.shape, c))
    size = torch.abs(c, out=empty(scratch, c.shape, c))
    slack = empty(scratch, c.shape, c)
    if cpu:
        largest = float(root1.max() * root2.max()) if root1.numel() and root2.numel() else 0.0
        _snap_few(c, size, torch.sub(bound, size, out=slack), bound, largest, self_pairs)
        return bound, size, slack, largest, (root1, root2)
    snap = size > torch.mul(bound, 1.0 - 4.0 * torch.finfo(c.dtype).eps, out=slack)
    c.copy_(torch.where(snap, torch.copysign(bound, c), torch.maximum(torch.minimum(c, bound), -bound)))
    del snap
    torch.sub(bound, torch.abs(c, out=size), out=slack)
    return bound, size, slack, math.inf, (root1, root2)


def _scaled_root_(base: Tensor, slack: Tensor, bound: Tensor, size: Tensor, largest: float, factor: float,
                  scratch) -> tuple[Tensor, list[Tensor]]:
    """``dual._scaled_root(base, factor·slack, bound, size)`` over its arguments' storage (``factor`` a power of 2):
    (the root, the tile buffers it left free). Where ``largest`` (>= every b) is at most 1, m = max(1, b) is 1:
    √(base + factor·(slack·(b + |c|))), where factor·x is exact and a product that rounds differently on underflow
    is below half an ulp of base >= 1."""
    from .scratch import empty

    if largest <= 1.0:  # NaN compares False
        return base.add_(slack.mul_(size.add_(bound)), alpha=factor).sqrt_(), [bound, size, slack]
    m = torch.clamp(bound, min=1.0, out=empty(scratch, base.shape, base))
    if factor != 1.0:
        slack.mul_(factor)
    base.div_(m).add_(slack.div_(m).mul_(size.add_(bound))).sqrt_()
    return m.sqrt_().mul_(base), [bound, size, slack, base]


def _snap_few(c: Tensor, size: Tensor, slack: Tensor, bound: Tensor, largest: float, self_pairs: bool) -> None:
    """``dual._bounded``'s clamp and snap on a CPU tile, in place: c, |c| and the slack b − |c| given with b.

    An entry snaps when |c| > w = fl(b(1 − 4ε)); the others have |c| <= w <= b, which the clamp leaves as they are
    (NaN too), so only snapped entries change. A snapped entry has b − |c| < b − w < 4.5εb (normal b; for a
    subnormal one, below 2^-146 in float32), so its slack rounds below 8ε·b <= 8ε·B, where B = ``largest`` >= every b
    (rounding is monotone): when the smallest slack is at least 8ε·B (B normal), nothing snaps. With
    ``self_pairs`` the diagonal, whose self-pairs always snap, is snapped on its own and left out of that minimum."""
    finfo = torch.finfo(c.dtype)
    keep = 1.0 - 4.0 * finfo.eps
    positions = _positions(c) if self_pairs else 0
    if positions:
        diagonal = [t.view(-1, positions, positions).diagonal(dim1=1, dim2=2) for t in (c, size, slack, bound)]
        _snap_entries(*diagonal, keep)
        saved = diagonal[2].clone()
        diagonal[2].fill_(math.inf)
        low = float(slack.amin())
        diagonal[2].copy_(saved)
    else:
        low = float(slack.amin()) if slack.numel() else math.inf
    if not (largest >= finfo.tiny and low >= 8.0 * finfo.eps * largest):  # NaN: the exact test
        _snap_entries(c, size, slack, bound, keep)


def _snap_entries(c: Tensor, size: Tensor, slack: Tensor, bound: Tensor, keep: float) -> None:
    """Set the entries with |c| > fl(b·keep) to ±b (and their |c| to b, their slack to 0), touching only those."""
    snapped = (size > bound * keep).nonzero(as_tuple=True)
    if snapped[0].numel():
        c[snapped] = torch.copysign(bound[snapped], c[snapped])
        size[snapped] = c[snapped].abs()
        slack[snapped] = bound[snapped] - size[snapped]
