r"""A kernel matrix that is never held whole: products, rows and the diagonal of K(x1, x2), computed on the fly.

``KernelOperator(arch, x1, x2=None, get="ntk")`` stands for the N1×N2 infinite-width kernel of ``arch``
(``arch.kernel``'s conventions). ``op @ V`` streams row panels K[rows, :] of ``panel_rows`` rows each, so memory
is one panel plus the product, whatever N: N = 100,000 is 40 GB as a float32 matrix and a few hundred MB here.
By default each panel is computed once and kept when the whole kernel fits the memory budget (iterative solvers
need many products; ``store="memory"`` insists on it), and recomputed on every product otherwise (``store=None``);
``store=<folder>`` keeps the panels in .npy files there, read back one at a time, and reuses them across operators
and processes.

Products accumulate in float64 (the panels are converted), so an iterative solver's residuals are not limited by
float32 summation over 10⁵ terms, while the kernel itself keeps the inputs' dtype.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memory import available_bytes, check_fits, format_bytes
from .._validation import as_input_tensor, check_pair, refuse_half_precision
from ..layers.base import Layer

__all__ = ["KernelOperator"]

KINDS = ("ntk", "nngp")
DEFAULT_BUDGET_FRACTION = 0.25  # of the free memory, when no budget is given


class KernelOperator:
    r"""The N1×N2 kernel K = ``arch.kernel(x1, x2)[get]`` as a lazy linear operator.

    Args:
        arch: any ntkit architecture (``nk.mlp``, ``nk.cnn``, ``nk.myrtle``, an ``nk.Serial``).
        x1: (N1, ...) inputs; x2: (N2, ...) inputs or None for x2 = x1 (a symmetric kernel).
        get: "ntk" or "nngp".
        memory_budget: bytes the operator may hold at once (panels, the stored kernel); default a quarter of the
            free memory on the inputs' device.
        panel_rows: rows per panel (default: as many as half the budget allows, at most N1).
        store: "auto" (default: "memory" when the whole kernel fits the budget, else None), None (recompute
            panels on every product), "memory" (keep them; refused with an estimate when the whole kernel does not
            fit the budget), or a folder path (keep them on disk as .npy files, named by a hash of the
            architecture, inputs and kind, so another operator on the same data reuses them).
        progress: tqdm bar over panels (None: only for long products on a terminal).
        backend: "local" (this process) or "dask": panels computed and kept on the workers of ``client`` (a
            ``distributed.Client``), products as one task per panel (:mod:`ntkit.operators.dask_backend`); a lost
            worker's panels are recomputed by Dask, and a failing task is retried ``retries`` times.
    """

    def __init__(self, arch: Layer, x1, x2=None, *, get: str = "ntk", memory_budget: int | None = None,
                 panel_rows: int | None = None, store="auto", progress: bool | None = None, backend: str = "local",
                 client=None, retries: int = 2):
        if not isinstance(arch, Layer):
            raise TypeError(f"arch must be an ntkit architecture (nk.mlp(...), nk.Serial(...)); got "
                            f"{type(arch).__name__}")
        if get not in KINDS:
            raise ValueError(f"get must be one of {KINDS}; got {get!r}")
        self.arch, self.get, self.progress = arch, get, progress
        self.x1 = refuse_half_precision(as_input_tensor(x1, "x1", ndim=(2, 3, 4)), "x1")
        self.symmetric = x2 is None
        self.x2 = self.x1 if x2 is None else refuse_half_precision(as_input_tensor(x2, "x2", ndim=(2, 3, 4)), "x2")
        if not self.symmetric:
            self.x1, self.x2 = check_pair(self.x1, self.x2)
        self.shape = (self.x1.shape[0], self.x2.shape[0])
        self.dtype, self.device = self.x1.dtype, self.x1.device
        itemsize = self.x1.element_size()
        if memory_budget is None:
            memory_budget = int(DEFAULT_BUDGET_FRACTION * available_bytes(self.device))
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
        self.memory_budget = int(memory_budget)
        row_bytes = max(self.shape[1], 1) * (itemsize + 8)  # a panel row and its float64 copy
        fitting = max(1, self.memory_budget // (2 * row_bytes))
        if panel_rows is None:
            panel_rows = fitting
        elif isinstance(panel_rows, bool) or not isinstance(panel_rows, (int, np.integer)) or panel_rows < 1:
            raise ValueError(f"panel_rows must be a positive integer or None; got {panel_rows!r}")
        elif panel_rows > fitting:
            raise MemoryError(f"panel_rows={panel_rows} needs {format_bytes(2 * panel_rows * row_bytes)} per panel, "
                              f"over memory_budget={format_bytes(self.memory_budget)}; pass at most {fitting}")
        self.panel_rows = int(min(panel_rows, max(self.shape[0], 1)))
        self._fingerprint_value: str | None = None
        self._panels: dict[int, torch.Tensor] = {}
        if backend not in ("local", "dask"):
            raise ValueError(f"backend must be 'local' or 'dask'; got {backend!r}")
        if backend == "dask":
            from .dask_backend import DaskPanels

            self._store = None
            self._dask = DaskPanels(self, client, retries)
        else:
            if client is not None:
                raise ValueError("client is for backend='dask'; pass backend='dask' with it")
            self._store = self._open_store(store, itemsize)
            self._dask = None

    # ----- storage --------------------------------------------------------------------------------------------
    def _open_store(self, store, itemsize: int):
        if store is None:
            return None
        whole = self.shape[0] * self.shape[1] * itemsize
        if store == "auto":
            return "memory" if whole <= self.memory_budget else None
        if store == "memory":
            if whole > self.memory_budget:
                raise MemoryError(f"store='memory' keeps the whole {self.shape[0]}x{self.shape[1]} kernel: "
                                  f"{format_bytes(whole)}, over memory_budget={format_bytes(self.memory_budget)}. "
                                  "Use store=None (recompute), a folder path (disk) or a larger budget.")
            return "memory"
        folder = Path(store)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"kernel-{self.fingerprint}"

    @property
    def fingerprint(self) -> str:
        """A name for this kernel's panels: a hash of the architecture, kind, panel size and the inputs' bytes."""
        if self._fingerprint_value is None:
            digest = hashlib.sha256(repr((self.arch, self.get, self.panel_rows, self.symmetric)).encode())
            for x in (self.x1, self.x2):
                digest.update(str((tuple(x.shape), x.dtype)).encode())
                digest.update(x.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint_value = digest.hexdigest()[:24]
        return self._fingerprint_value

    def _panel(self, index: int) -> torch.Tensor:
        """Rows [index·panel_rows, ...) of K, computed, or read from the store."""
        if index in self._panels:
            return self._panels[index]
        start = index * self.panel_rows
        rows = slice(start, min(start + self.panel_rows, self.shape[0]))
        path = None if self._store in (None, "memory") else self._store.with_name(f"{self._store.name}-{index}.npy")
        if path is not None and path.exists():
            panel = torch.from_numpy(np.load(path)).to(self.device)  # one panel in memory at a time
        else:
            panel = self._compute_rows(torch.arange(rows.start, rows.stop, device=self.device))
            if path is not None:
                np.save(path, panel.cpu().numpy())
        if self._store == "memory":
            self._panels[index] = panel
        return panel

    @property
    def panels(self) -> int:
        return math.ceil(self.shape[0] / self.panel_rows) if self.shape[0] else 0

    # ----- the operator -------------------------------------------------------------------------------------
    def __matmul__(self, v) -> torch.Tensor:
        """K @ v for v of shape (N2,) or (N2, k), in float64 (see the module docstring)."""
        v = torch.as_tensor(v, device=self.device)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(f"the operand must have shape ({self.shape[1]},) or ({self.shape[1]}, k) to multiply a "
                             f"{self.shape[0]}x{self.shape[1]} kernel; got {tuple(v.shape)}")
        v64 = v.to(torch.float64)
        if self._dask is not None:
            return self._dask.matmul(v64)
        out = torch.empty((self.shape[0], *v.shape[1:]), dtype=torch.float64, device=self.device)
        show = self.progress if self.progress is not None else self.panels >= 16 and self._store is None
        for index in tqdm(range(self.panels), desc="kernel panels", disable=None if show else True, leave=False):
            start = index * self.panel_rows
            out[start:start + self.panel_rows] = self._panel(index).to(torch.float64) @ v64
        return out

    def normal_product(self, u, v=None) -> torch.Tensor:
        """Kᵀ (K u + v) for u (N2,) or (N2, k) and v (N1, ...) or None, streamed by panels in float64: the
        normal-equations product of Nyström/Falkon solvers (K = K(X, centres)), without K or Kᵀ K in memory."""
        u = torch.as_tensor(u, device=self.device).to(torch.float64)
        if u.ndim not in (1, 2) or u.shape[0] != self.shape[1]:
            raise ValueError(f"u must have shape ({self.shape[1]},) or ({self.shape[1]}, k); got {tuple(u.shape)}")
        if v is not None:
            v = torch.as_tensor(v, device=self.device).to(torch.float64)
            if v.shape != (self.shape[0], *u.shape[1:]):
                raise ValueError(f"v must have shape {(self.shape[0], *u.shape[1:])}; got {tuple(v.shape)}")
        if self._dask is not None:
            return self._dask.normal_product(u, v)
        out = torch.zeros_like(u)
        for index in range(self.panels):
            panel = self._panel(index).to(torch.float64)
            start = index * self.panel_rows
            inner = panel @ u
            if v is not None:
                inner += v[start:start + panel.shape[0]]
            out += panel.T @ inner
        return out

    def rows(self, index) -> torch.Tensor:
        """K[index, :] for an index tensor, list or slice: (len(index), N2), in the kernel's dtype."""
        index = torch.arange(self.shape[0], device=self.device)[index] if isinstance(index, slice) else \
            torch.as_tensor(index, device=self.device)
        if index.ndim != 1:
            raise ValueError("rows takes a 1-D sequence or a slice of row indices (use [i] for one row)")
        check_fits(len(index) * self.shape[1] * self.x1.element_size(), self.device,
                   f"{len(index)} rows of the {self.shape[0]}x{self.shape[1]} kernel")
        return self._compute_rows(index)

    def _compute_rows(self, index: torch.Tensor) -> torch.Tensor:
        """K[index, :]. For a symmetric kernel the entries (i, i) are set to ``kernel_diagonal``'s values, which
        are what ``arch.kernel(x)`` has on its diagonal: a Gram product of x_i with all of x rounds x_i·x_i
        differently from |x_i|², and at ρ ≈ 1 the rectified duals turn a last-bit difference into √ε."""
        rows = self.arch.kernel(self.x1[index], self.x2, get=self.get)[self.get]
        if self.symmetric and len(index):
            rows[torch.arange(len(index), device=self.device), index] = \
                self.arch.kernel_diagonal(self.x1[index], get=self.get)[self.get]
        return rows

    def diag(self) -> torch.Tensor:
        """K[i, i] for every i (a square operator), in O(N) by ``arch.kernel_diagonal``."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"diag needs a square operator; this one is {self.shape[0]}x{self.shape[1]}")
        if self.symmetric:
            return self.arch.kernel_diagonal(self.x1, get=self.get)[self.get]
        return torch.stack([self.arch.kernel(self.x1[i:i + 1], self.x2[i:i + 1], get=self.get)[self.get][0, 0]
                            for i in range(self.shape[0])])

    def dense(self) -> torch.Tensor:
        """The whole kernel as a tensor (refused with an estimate when it does not fit the budget)."""
        whole = self.shape[0] * self.shape[1] * self.x1.element_size()
        if whole > self.memory_budget:
            raise MemoryError(f"the {self.shape[0]}x{self.shape[1]} kernel needs {format_bytes(whole)}, over "
                              f"memory_budget={format_bytes(self.memory_budget)}: use products (op @ V), rows or "
                              "a solver instead")
        if self._dask is not None:
            return torch.cat([p.cpu() for p in self._dask.client.gather(self._dask._panels)]).to(self.device)
        if self._store is None:
            return self.arch.kernel(self.x1, None if self.symmetric else self.x2, get=self.get)[self.get]
        return torch.cat([self._panel(i) for i in range(self.panels)])

    def __repr__(self) -> str:
        store = self._store if self._store in (None, "memory") else str(self._store.parent)
        return (f"KernelOperator({self.arch!r}, shape={self.shape}, get={self.get!r}, dtype={self.dtype}, "
                f"device={self.device}, panel_rows={self.panel_rows}, store={store!r})")
