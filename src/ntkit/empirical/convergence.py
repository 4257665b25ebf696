r"""How fast the empirical NTK of a finite network approaches its infinite-width limit.

For an architecture described with ntkit layers, ``width_convergence`` builds the network at each width and
seed, and measures the relative Frobenius distance of its empirical NTK to the exact limit,

    err(n, seed) = ‖Θ̂_n − Θ_∞‖_F / ‖Θ_∞‖_F,    Θ̂_n = trace_O(empirical NTK) / O,

(the limit is Θ_∞ ⊗ Id for O outputs, Jacot et al. 2018 Thm. 1, so the output-averaged trace estimates Θ_∞).
At initialisation Θ̂_n − Θ_∞ = O_p(n^{-1/2}) (Jacot et al. 2018, Thm. 1 and its proof; Hanin & Nica 2019 for
the fluctuations), so log err against log n has slope -1/2; ``WidthConvergence.slope`` fits it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .._validation import as_input_tensor, check_positive_int
from ..layers.base import Layer, Serial
from ..layers.conv import _Conv
from ..layers.dense import Dense
from .api import empirical_ntk
from .blocks import tqdm_disable
from .checks import check_method


__all__ = ["width_convergence", "WidthConvergence", "with_width"]


@dataclass
class WidthConvergence:
    """Relative errors ``errors[i, j]`` of the empirical NTK at ``widths[i]`` and ``seeds[j]``."""

    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    errors: torch.Tensor  # (len(widths), len(seeds)), float64

    @property
    def mean_errors(self) -> torch.Tensor:
        return self.errors.mean(1)

    def slope(self) -> tuple[float, float, float]:
        """Least-squares fit log err = slope · log n + intercept over every (width, seed); returns
        (slope, intercept, standard error of the slope from the residuals)."""
        if len(set(self.widths)) < 2:
            raise ValueError(f"a slope needs at least two different widths; got widths={self.widths}")
        if not bool((self.errors > 0).all()):
            raise ValueError("a log-log slope needs positive errors; some errors are zero (the empirical NTK equals "
                             "the limit exactly)")
        log_n = torch.log(torch.tensor(self.widths, dtype=torch.float64)).repeat_interleave(len(self.seeds))
        log_err = torch.log(self.errors.reshape(-1))
        design = torch.stack([log_n, torch.ones_like(log_n)], 1)
        coef = torch.linalg.lstsq(design, log_err[:, None]).solution[:, 0]
        residual = log_err - design @ coef
        dof = max(len(log_err) - 2, 1)
        sigma2 = float(residual @ residual) / dof
        centred = log_n - log_n.mean()
        stderr = math.sqrt(sigma2 / float(centred @ centred)) if float(centred @ centred) > 0 else math.inf
        return float(coef[0]), float(coef[1]), stderr


def with_width(architecture: Layer, width: int) -> Serial:
    """The architecture with every hidden ``Dense`` layer (the last Dense, the output, kept) and every top-level
    ``Conv1d``/``Conv2d`` resized to ``width`` units / channels."""
    layers = architecture.flatten()
    dense_positions = [i for i, layer in enumerate(layers) if isinstance(layer, Dense)]
    conv_positions = [i for i, layer in enumerate(layers) if isinstance(layer, _Conv)]
    if not dense_positions and not conv_positions:
        raise ValueError("the architecture has no Dense or Conv layer whose width could vary; pass a function "
                         "width -> architecture instead")
    resized = list(layers)
    for i in dense_positions[:-1]:
        old = layers[i]
        resized[i] = Dense(width, w_std=old.w_std, b_std=old.b_std, parameterization=old.parameterization)
    for i in conv_positions:
        old = layers[i]
        resized[i] = type(old)(width, old.kernel_size, old.stride, old.padding, old.w_std, old.b_std,
                               old.parameterization)
    return Serial(*resized, in_shape=getattr(architecture, "in_shape", None))


def width_convergence(architecture: Layer | Callable[[int], Layer], x, widths: Sequence[int],
                      seeds: Sequence[int] = (0, 1, 2), *, method: str = "auto",
                      progress: bool | None = None) -> WidthConvergence:
    r"""Relative distance ‖Θ̂_n − Θ_∞‖_F / ‖Θ_∞‖_F between empirical and infinite-width NTKs, per width and seed.

    Args:
        architecture: an ntkit architecture (``nk.mlp(...)``, ``nk.Serial(...)``), whose hidden Dense layers are
            resized to each width, or a function ``width -> architecture``.
        x: (N, d), (N, C, L) or (N, C, H, W) inputs; the kernels are computed in their dtype (use float64 to see small errors).
        widths: hidden widths n to build.
        seeds: initialisation seeds (``arch.build(seed=...)``) per width.
        method: ``empirical_ntk`` method.
        progress: tqdm bar over (width, seed) pairs: True always, False never, None on a terminal for more than
            16 of them.

    Returns:
        ``WidthConvergence`` with ``errors`` (len(widths), len(seeds)) and ``slope()`` (≈ -1/2 expected).
    """
    x = as_input_tensor(x, "x", ndim=(2, 3, 4))
    widths = tuple(check_positive_int(w, "widths[i]") for w in _as_sequence(widths, "widths"))
    seeds = tuple(_check_seed(s) for s in _as_sequence(seeds, "seeds"))
    method = check_method(method)
    if callable(architecture) and not isinstance(architecture, Layer):
        factory = architecture
    elif isinstance(architecture, Layer):
        def factory(width):
            return with_width(architecture, width)
    else:
        raise TypeError(f"architecture must be an ntkit Layer/Serial or a function width -> architecture; got "
                        f"{type(architecture).__name__}")
    errors = torch.empty(len(widths), len(seeds), dtype=torch.float64)
    total = len(widths) * len(seeds)
    with tqdm(total=total, desc="width convergence", disable=tqdm_disable(progress, total > 16), leave=False) as bar:
        for i, width in enumerate(widths):
            arch = factory(width)
            if not isinstance(arch, Layer):
                raise TypeError(f"the architecture function returned {type(arch).__name__}, not an ntkit layer")
            limit = arch.kernel(x, get="ntk").ntk
            limit_norm = float(torch.linalg.norm(limit))
            if not limit_norm > 0:
                raise ValueError("the infinite-width NTK is zero on x (e.g. x = 0 with b_std = 0), so a relative "
                                 "error is undefined; use other inputs")
            for j, seed in enumerate(seeds):
                net = arch.build(tuple(x.shape[1:]), seed=seed, dtype=x.dtype, device=x.device)
                with torch.no_grad():
                    outputs = net(x[:1]).numel()
                estimate = empirical_ntk(net, x, output="trace", method=method) / outputs
                errors[i, j] = float(torch.linalg.norm(estimate - limit)) / limit_norm
                bar.update()
    return WidthConvergence(widths, seeds, errors)


def _as_sequence(values, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of integers; got {values!r}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    return values


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seeds must be integers; got {seed!r}")
    return int(seed)
