"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on sys.path)."""

import statistics
import time


def median_time(fn, repeats: int):
    """(median wall-clock seconds over ``repeats`` calls of ``fn``, the last call's result).

    Medians, not means: on a shared CPU a single slow repeat (another process scheduled in) would drag a mean.
    """
    durations, result = [], None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = fn()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result
