r"""(K + λI) A = Y for a kernel that is never held whole: preconditioned conjugate gradients on a KernelOperator.

Block of right-hand sides (one per output), each column its own CG recursion (Hestenes & Stiefel 1952) run side
by side, so one kernel product serves all of them; float64 throughout. With a preconditioner P ≈ K + λI
(:mod:`ntkit.operators.preconditioners`), per column:

    r = y − (K + λI) a,  z = P⁻¹ r,  p = z;   repeat:  q = (K + λI) p,  α = rᵀz / pᵀq,  a += α p,  r −= α q,
    z = P⁻¹ r,  β = rᵀz_new / rᵀz_old,  p = z + β p

until every column's relative residual ‖r‖ / ‖y‖ is below ``tol`` (columns that converge stop moving).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._threads import intra_op_threads
from .._validation import check_nonnegative_float, check_positive_int
from .kernel_operator import KernelOperator
from .preconditioners import PRECONDITIONERS, nystrom, pivoted_cholesky

__all__ = ["SolveReport", "conjugate_gradient"]


@dataclass(frozen=True)
class SolveReport:
    """What an iterative solve did: ``iterations`` (kernel products), the largest final ``relative_residual``
    ‖y − (K + λI)a‖/‖y‖ over columns, whether every column reached ``tol`` (``converged``), the preconditioner and
    its rank, wall-clock ``seconds``, and the iteration a checkpoint resumed from (0: a fresh start)."""

    method: str
    iterations: int
    relative_residual: float
    converged: bool
    tol: float
    preconditioner: str | None
    rank: int
    seconds: float
    resumed_from: int = 0


def conjugate_gradient(op: KernelOperator, y, *, reg: float = 0.0, tol: float = 1e-6, max_iter: int | None = None,
                       preconditioner: str | None = "nystrom", rank: int = 100, seed: int = 0,
                       progress: bool | None = None, callback=None, checkpoint=None,
                       checkpoint_every: int = 10) -> tuple[torch.Tensor, SolveReport]:
    """Solve (K + reg·I) A = y by (preconditioned) conjugate gradients; K must be symmetric positive semidefinite.

    Args:
        op: a square ``KernelOperator`` (x2 = None).
        y: (N,) or (N, k) right-hand sides.
        reg: λ ≥ 0 (> 0 with a preconditioner).
        tol: target relative residual per column.
        max_iter: cap on iterations (default N).
        preconditioner: "nystrom" (default: random columns, built from one block of kernel rows),
            "pivoted_cholesky" (greedy columns: one kernel row per column, slower to build) or None.
        rank: columns of the preconditioner's low-rank factor.
        seed: for the Nyström columns.
        progress: tqdm bar over iterations (None: on a terminal, for long solves).
        callback: called as ``callback(iteration, relative_residuals)`` after every iteration.
        checkpoint: a file path: the CG state is written there (atomically) every ``checkpoint_every`` iterations,
            and a later call on the same problem (operator, y, reg, tol, preconditioner, rank, seed) resumes
            from it, e.g. after the driver process crashed. A checkpoint of another problem is refused.

    Returns:
        (A, report): A float64 shaped like y; ``SolveReport``.
    """
    if not isinstance(op, KernelOperator):
        raise TypeError(f"op must be an nk.KernelOperator; got {type(op).__name__}")
    if op.shape[0] != op.shape[1] or not op.symmetric:
        raise ValueError(f"conjugate gradients need the symmetric kernel of one set of points (x2=None); got shape "
                         f"{op.shape}{'' if op.symmetric else ' with x2 given'}")
    reg = check_nonnegative_float(reg, "reg")
    tol = check_nonnegative_float(tol, "tol")
    n = op.shape[0]
    max_iter = n if max_iter is None else check_positive_int(max_iter, "max_iter")
    if preconditioner is not None and preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS} or None; got {preconditioner!r}")
    rank = check_positive_int(rank, "rank")
    targets = torch.as_tensor(y, device=op.device).to(torch.float64)
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, k) for the {n}x{n} kernel; got {tuple(targets.shape)}")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("y contains NaN or infinity")
    vector = targets.ndim == 1
    rhs = targets[:, None] if vector else targets
    # Each iteration is one product (N² k) and O(N r k) more: small systems run on one thread (ntkit._threads).
    with intra_op_threads(n * n * rhs.shape[1], op.device):
        store = None if checkpoint is None else _Checkpoint(Path(checkpoint), check_positive_int(
            checkpoint_every, "checkpoint_every"), _problem_key(op, rhs, reg, tol, preconditioner, rank, seed))
        solution, relative, iterations, used_rank, started, resumed = _solve(
            op, rhs, reg, tol, max_iter, preconditioner, rank, seed, progress, callback, store)
    worst = float(relative.max()) if relative.numel() else 0.0
    report = SolveReport("cg", iterations, worst, worst <= tol, tol, preconditioner, used_rank,
                         time.perf_counter() - started, resumed)
    return (solution[:, 0] if vector else solution), report


def _problem_key(op, rhs, reg, tol, preconditioner, rank, seed) -> str:
    digest = hashlib.sha256(repr((op.fingerprint, reg, tol, preconditioner, rank, seed, tuple(rhs.shape))).encode())
    digest.update(rhs.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Checkpoint:
    """The CG state in one file, replaced atomically (a crash mid-write leaves the previous checkpoint)."""

    def __init__(self, path: Path, every: int, key: str):
        self.path, self.every, self.key = path, every, key

    def load(self):
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=True)
        if state.get("key") != self.key:
            raise ValueError(f"checkpoint {str(self.path)!r} belongs to another problem (operator, y, reg, tol or "
                             "preconditioner differ); remove it or pass another path")
        return state

    def save(self, iterations: int, **tensors) -> None:
        if iterations % self.every:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        torch.save(dict(key=self.key, iterations=iterations, **{k: v.cpu() for k, v in tensors.items()}), partial)
        os.replace(partial, self.path)


def _solve(op, rhs, reg, tol, max_iter, preconditioner, rank, seed, progress, callback, store):
    """The PCG iterations of ``conjugate_gradient`` on validated arguments."""
    n = op.shape[0]
    started = time.perf_counter()
    apply_p = None
    used_rank = 0
    if preconditioner is not None:
        if not reg > 0:
            raise ValueError(f"preconditioner={preconditioner!r} needs reg > 0; got reg={reg!r} "
                             "(pass preconditioner=None for reg = 0)")
        build = pivoted_cholesky if preconditioner == "pivoted_cholesky" else \
            (lambda o, r, lam: nystrom(o, r, lam, torch.Generator().manual_seed(seed)))
        apply_p = build(op, rank, reg)
        used_rank = apply_p.rank

    def system(v):
        return op @ v + reg * v

    def precondition(v):
        return v if apply_p is None else apply_p(v)

    norms = torch.linalg.vector_norm(rhs, dim=0)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = (residual * z).sum(0)
    relative = torch.linalg.vector_norm(residual, dim=0) / scale
    iterations = resumed = 0
    state = None if store is None else store.load()
    if state is not None:
        solution, residual, direction, rz = (state[k].to(rhs.device) for k in ("solution", "residual", "direction",
                                                                               "rz"))
        iterations = resumed = int(state["iterations"])
        relative = torch.linalg.vector_norm(residual, dim=0) / scale
    show = progress if progress is not None else n >= 20_000
    bar = tqdm(total=max_iter, desc="conjugate gradients", disable=None if show else True, leave=False)
    while iterations < max_iter and bool((relative > tol).any()):
        active = relative > tol  # converged columns keep their solution
        q = system(direction)
        curvature = (direction * q).sum(0)
        alpha = torch.where(active & (curvature > 0), rz / torch.where(curvature > 0, curvature, 1.0), 0.0)
        solution += alpha * direction
        residual -= alpha * q
        z = precondition(residual)
        rz_new = (residual * z).sum(0)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        direction = z + beta * direction
        rz = rz_new
        relative = torch.linalg.vector_norm(residual, dim=0) / scale
        iterations += 1
        bar.update(1)
        bar.set_postfix(residual=f"{float(relative.max()):.1e}")
        if store is not None:
            store.save(iterations, solution=solution, residual=residual, direction=direction, rz=rz)
        if callback is not None:
            callback(iterations, relative)
    bar.close()
    return solution, relative, iterations, used_rank, started, resumed
