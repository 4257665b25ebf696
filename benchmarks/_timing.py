"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on sys.path)."""

import statistics
import time

import torch


def synchronize(device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading includes it (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median_time(fn, repeats: int, device="cpu"):
    """(median wall-clock seconds over ``repeats`` calls of ``fn``, the last call's result).

    Medians, not means: on a shared CPU a single slow repeat (another process scheduled in) would drag a mean.
    On CUDA each call is timed to its completion (``synchronize``).
    """
    durations, result = [], None
    for _ in range(max(repeats, 1)):
        seconds, result = _timed(fn, device)
        durations.append(seconds)
    return statistics.median(durations), result


def interleaved_times(ours, theirs, repeats: int, competitor_repeats: int, device="cpu"):
    """Both sides timed in alternation, so that a machine whose speed drifts during the run (a shared CPU) slows
    both alike: (our median seconds, their median seconds, the median of the per-round ratios theirs/ours, our
    last result, their last result). Rounds run ``ours`` then ``theirs`` until each has run its count."""
    ours_s, theirs_s, ratios, ours_result, theirs_result = [], [], [], None, None
    for round_ in range(max(repeats, competitor_repeats, 1)):
        if round_ < max(repeats, 1):
            seconds, ours_result = _timed(ours, device)
            ours_s.append(seconds)
        if round_ < competitor_repeats:
            seconds, theirs_result = _timed(theirs, device)
            theirs_s.append(seconds)
            ratios.append(seconds / ours_s[-1])
    return (statistics.median(ours_s), statistics.median(theirs_s), statistics.median(ratios), ours_result,
            theirs_result)


def device_description(device) -> str:
    """The device in words, for benchmark output: CPU threads, or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU, {torch.get_num_threads()} threads"
