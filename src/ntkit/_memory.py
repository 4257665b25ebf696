"""How much memory a device has free, and a refusal with an estimate when a request cannot fit."""

from __future__ import annotations

import os

import torch

__all__ = ["available_bytes", "check_fits", "format_bytes"]


def format_bytes(nbytes: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory on ``device``: MemAvailable from /proc/meminfo on the CPU, the driver's count on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 ** 62  # unknown platform: do not refuse


def check_fits(nbytes: int, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise MemoryError, with the estimate, if ``nbytes`` exceeds the memory free on ``device``."""
    free = available_bytes(device)
    if nbytes > free:
        raise MemoryError(f"{what} needs about {format_bytes(nbytes)} but only {format_bytes(free)} is free on "
                          f"{torch.device(device)}." + (f" {hint}" if hint else ""))
