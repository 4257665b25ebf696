"""Synthetic inputs used by the papers' experiments."""

from __future__ import annotations

import math

import torch

from .._validation import check_positive_int


def circle(n: int, *, dtype: torch.dtype | None = None, device=None, start: float = 0.0) -> torch.Tensor:
    """``n`` points x_i = (cos γ_i, sin γ_i) on the unit circle, γ_i = start + 2π i / n; shape (n, 2)."""
    n = check_positive_int(n, "n")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gamma = start + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], 1).to(dtype=dtype, device=device)
