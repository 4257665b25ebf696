"""Intra-op threads for ntkit's own loops, chosen from the size of the work, the user's setting restored after.

torch runs every op on its intra-op thread pool, and each parallel op ends at a barrier. When the cores are busy
(a shared machine, a CI runner, a laptop compiling something), one descheduled thread makes every barrier wait for
a scheduler quantum: measured on 2 busy cores, a 350-point ReLU kernel took 998 ms on 2 threads and 9 ms on one,
and ``nk.train`` on a small MLP crawled the same way. Small work gains little from threads even on idle cores, so
ntkit runs work below ``SMALL_WORK`` on one thread and larger work on the user's ``torch.get_num_threads()``
(never more). The count is set for the duration of the call only and restored in all cases, so
``torch.get_num_threads()`` is the same before and after; ``ntkit --threads N`` sets the CLI process's count.

Large work is cut into many similar tiles, and busy cores hurt it too (a 200-image CNTK: 3.9 s on one thread,
20 s on two busy ones): ``ThreadTuner`` times the first tiles with the user's count and with one thread, keeps the
faster per entry, and measures the other again every ``RECHECK`` tiles, so a machine that becomes busy or idle
mid-call is followed. A call that follows, within ``RECENT_SECONDS``, a comparison that one thread won starts on
one thread without timing the user's count first: on an oversubscribed machine each call's two exploratory tiles
on two threads cost more than the rest (a 2,000-point kernel next to four spinners: 2.1 s against 0.35 s). And
a call whose first tiles on the user's count run as fast as when that count last won on the same workload skips
timing one thread until the recheck: on idle cores the exploratory one-thread tiles were the policy's cost.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

__all__ = ["SMALL_WORK", "threads_for", "intra_op_threads", "kernel_work", "ThreadTuner"]

# Units of work (roughly multiply-adds or entries visited per layer) below which one thread is used: about 50 ms
# of one core (a 2,000-point, 3-hidden-layer ReLU kernel is ~3·10⁷ entry-layer visits in ~120 ms on one core).
SMALL_WORK = 1 << 24


def threads_for(work: float, device: torch.device | str = "cpu") -> int:
    """Intra-op threads for ``work`` units on ``device``: 1 below ``SMALL_WORK``, else the user's setting (CUDA
    work runs on the GPU; its host thread count is left alone)."""
    user = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        return user
    return 1 if work < SMALL_WORK else user


def kernel_work(x1: torch.Tensor, n2: int, layers: int) -> float:
    """Units of work of an infinite-width kernel: entries visited per layer, n1·n2 per layer for flat inputs and
    up to |S|² per pair for spatial ones (the full covariance of positions; an upper bound for diagonal states)."""
    positions = x1[0].numel() // x1.shape[1] if x1.ndim > 2 and x1.shape[0] else 1
    return float(x1.shape[0]) * n2 * layers * positions * positions


@contextmanager
def intra_op_threads(work: float, device: torch.device | str = "cpu"):
    """Run the block with ``threads_for(work, device)`` intra-op threads, restoring the user's count after."""
    user = torch.get_num_threads()
    chosen = threads_for(work, device)
    if chosen != user:
        torch.set_num_threads(chosen)
    try:
        yield
    finally:
        # Also when the user's count was kept: a ThreadTuner inside may have moved to one thread (a tuned call used
        # to leave the process on one thread: every later large kernel ran on one core).
        if torch.get_num_threads() != user:
            torch.set_num_threads(user)


class ThreadTuner:
    """The faster of the current intra-op thread count and one thread, measured on a loop's own tiles.

    Call ``start()`` before a tile and ``stop(entries)`` after it; the count it sets lasts until the enclosing
    ``intra_op_threads`` block restores the user's. Inactive (does nothing) on GPUs and with one thread already.
    """

    EXPLORE = 2     # tiles timed per option at the start, after one warm-up tile (allocations, first touches)
    RECHECK = 64    # every this many tiles the other option is timed again
    HISTORY = 3     # per-entry times kept per option (their median decides)
    MARGIN = 0.8    # one thread replaces the user's count only when it is at least this much faster
    RECENT_SECONDS = 10.0  # how long a comparison won by one thread lets later loops start on one thread
    HEALTHY = 1.25  # the user's count within this factor of its speed when it last won: one thread is not timed
    _recent: dict = {}     # the user's count -> (the faster option, when a loop last compared both)
    _healthy: dict = {}    # (the user's count, workload) -> its per-entry seconds when it last won a comparison

    def __init__(self, device: torch.device | str = "cpu", tiles: int = 0, workload=None):
        many = torch.get_num_threads()
        self.active = torch.device(device).type == "cpu" and many > 1 and tiles >= 2 * self.EXPLORE + 3
        self.options = (many, 1)
        self.history: dict[int, list[float]] = {option: [] for option in self.options}
        self.count, self.current, self._started, self._recheck = 0, many, 0.0, False
        recent = ThreadTuner._recent.get(many)
        # one thread won a comparison moments ago: time the user's count only at the RECHECK cadence
        self.start_on_one = (self.active and recent is not None and recent[0] == 1
                             and 0.0 <= time.perf_counter() - recent[1] < self.RECENT_SECONDS)
        # ``workload``: a hashable description of the tiles (architecture, tile shape, dtype) under which per-entry
        # times are comparable from loop to loop. The user's count, when its first timed tiles run as fast as when
        # it last won on this workload, keeps the loop without timing one thread until the RECHECK cadence: on idle
        # cores the exploratory one-thread tiles cost each call ~10% (two of a 2,000-point kernel's ten tiles at
        # ~1.8x their time), while a collapse (tiles 10x slower or more) still triggers the comparison.
        self.workload = None if workload is None else (many, workload)
        self.skip_one = False

    def freeze(self) -> None:
        """From now on the user's count, and no more timing: for compiled tiles, whose code is specialised to the
        thread count (``torch.compile`` guards on it), so a switch to one thread would compile them again, for
        seconds (measured: three compiles in one N = 3,000 call, 5.9 s)."""
        if self.active and torch.get_num_threads() != self.options[0]:
            torch.set_num_threads(self.options[0])
        self.active = False

    @property
    def best(self) -> int:
        many, one = (_median(self.history[o]) if self.history[o] else None for o in self.options)
        if many is not None and one is not None and one < self.MARGIN * many:
            return self.options[1]
        return self.options[0]

    def start(self) -> None:
        if not self.active:
            return
        i = self.count - 1  # tile 0 warms up on the user's count and is not timed
        if self.start_on_one and i < self.RECHECK:
            choice = self.options[1]
        elif i < 0:
            choice = self.options[0]
        elif i < 2 * self.EXPLORE:
            if i == self.EXPLORE:
                self.skip_one = self._as_fast_as_when_it_won()
            choice = self.options[0] if self.skip_one else self.options[i // self.EXPLORE]
        elif i % self.RECHECK == 0:  # time the option not in use (the user's count first if never timed)
            best = self.best
            choice = self.options[1] if best == self.options[0] and self.history[best] else self.options[0]
        else:
            choice = self.best
        if choice != torch.get_num_threads():
            torch.set_num_threads(choice)
        self._recheck = 2 * self.EXPLORE <= i and choice != self.best
        self.current = choice
        self._started = time.perf_counter()

    def stop(self, entries: int) -> None:
        if not self.active:
            return
        seconds = time.perf_counter() - self._started
        if self.count == 0:
            self.count = 1
            return
        history = self.history[self.current]
        if self._recheck:  # the machine may have changed since this option was last timed: start afresh
            history.clear()
        history.append(seconds / max(entries, 1))
        del history[:-self.HISTORY]
        self.count += 1
        if all(self.history.values()):  # both options timed in this loop: a comparison later loops may start from
            best = self.best
            ThreadTuner._recent[self.options[0]] = (best, time.perf_counter())
            if best == self.options[0] and self.workload is not None:
                if len(ThreadTuner._healthy) > 256:  # bounded: many workloads in one process start afresh
                    ThreadTuner._healthy.clear()
                ThreadTuner._healthy[self.workload] = _median(self.history[best])

    def _as_fast_as_when_it_won(self) -> bool:
        healthy = ThreadTuner._healthy.get(self.workload) if self.workload is not None else None
        times = self.history[self.options[0]]
        return healthy is not None and bool(times) and _median(times) <= self.HEALTHY * healthy


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]
