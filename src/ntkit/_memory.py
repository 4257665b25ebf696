"""How much memory a device has free, a refusal with an estimate when a request cannot fit, and the allocation of
large results."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

__all__ = ["available_bytes", "check_fits", "format_bytes", "empty_output"]

_HUGE_PAGE = 2 << 20          # a transparent huge page on x86-64 and most arm64 kernels
_MADV_HUGEPAGE = 14           # linux/mman.h
HUGE_PAGES_MIN_BYTES = 8 << 20
_madvise = None


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


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty`` for a large result that the kernel engines fill tile by tile.

    A fresh buffer's pages are mapped (and zeroed by the kernel) on first write, one 4 KiB page fault at a time,
    and tiles write a few rows' worth of each page: at N = 4,000 the copies of tiles into the two 64 MB outputs took
    73 ms of a 275 ms ReLU kernel on 2 cores, almost all of it faults. On Linux CPUs the buffer is therefore advised
    to use transparent huge pages (madvise MADV_HUGEPAGE on its 2 MiB-aligned interior; 512x fewer faults and
    TLB entries): the same kernel then took 224 ms (benchmarks/analytic_kernel.py). Only this buffer's mapping is
    advised; a kernel without transparent huge pages ignores the advice, and so does this function on failure."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type == "cpu" and sys.platform.startswith("linux") and out.nbytes >= HUGE_PAGES_MIN_BYTES:
        _advise_huge_pages(out.data_ptr(), out.nbytes)
    return out


def _advise_huge_pages(address: int, nbytes: int) -> bool:
    """madvise(MADV_HUGEPAGE) on the 2 MiB-aligned pages inside [address, address + nbytes); whether it was taken."""
    global _madvise
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    stop = (address + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if stop <= start:
        return False
    try:
        if _madvise is None:
            function = ctypes.CDLL(None, use_errno=True).madvise
            function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            function.restype = ctypes.c_int
            _madvise = function
        return _madvise(start, stop - start, _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):  # no libc madvise here: the advice is only an optimisation
        return False
