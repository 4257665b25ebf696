"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on sys.path)."""

import statistics
import time

import torch


def synchronize(device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading includes it (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int, device="cpu"):
    """(median wall-clock seconds over ``repeats`` calls of ``fn``, the last call's result).

    Medians, not means: on a shared CPU a single slow repeat (another process scheduled in) would drag a mean.
    On CUDA each call is timed to its completion (``synchronize``).
    """
    durations, result = [], None
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result


def device_description(device) -> str:
    """The device in words, for benchmark output: CPU threads, or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU, {torch.get_num_threads()} threads"
