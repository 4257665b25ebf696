r"""A KernelOperator's row panels as tasks on a Dask cluster (``pip install ntkit[dask]``).

``KernelOperator(..., backend="dask", client=distributed.Client(...))`` sends each row panel K[rows, :] to the
cluster as a pure task on (the architecture, a block of x1, x2): x2 goes to the cluster once, each panel is
computed once and kept in the workers' memory (on a worker's GPU when it has one), and a product ``op @ V`` is one small task per panel (panel @ V)
whose results the driver gathers and stacks. Nothing here is a scheduler of ntkit's own: data enters the cluster
as the result of a task that carries it, never as scattered data (which has no lineage), so when a worker dies
Dask's scheduler recomputes whatever it held (x2, V, panels) from the tasks and reruns the products, and
``retries`` lets a task that raised run again. The numbers
are those of the local backend: the same panels, the same float64 products.
"""

from __future__ import annotations

import torch

__all__ = ["DaskPanels"]


def worker_device() -> torch.device:
    """Where a worker computes and keeps its panels: its GPU when it has one, else its CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _compute_panel(arch, x1_rows: torch.Tensor, x2: torch.Tensor, get: str, diagonal_offset: int | None):
    """K[rows, :] on a worker's device (``diagonal_offset``: for a symmetric kernel, the column of the panel's first
    row, whose diagonal entries take ``kernel_diagonal``'s values, as the local backend's panels do)."""
    device = worker_device()
    x1_rows, x2 = x1_rows.to(device), x2.to(device)
    panel = arch.kernel(x1_rows, x2, get=get)[get]
    if diagonal_offset is not None:
        rows = torch.arange(len(x1_rows), device=device)
        panel[rows, rows + diagonal_offset] = arch.kernel_diagonal(x1_rows, get=get)[get]
    return panel


def _identity(value):
    return value


def _panel_product(panel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (panel.to(torch.float64) @ v.to(panel.device)).cpu()


def _panel_normal_product(panel: torch.Tensor, u: torch.Tensor, v_rows: torch.Tensor | None) -> torch.Tensor:
    panel = panel.to(torch.float64)
    inner = panel @ u.to(panel.device)
    if v_rows is not None:
        inner = inner + v_rows.to(panel.device)
    return (panel.T @ inner).cpu()


class DaskPanels:
    """The panels of ``op`` on the cluster of ``client``; see the module docstring."""

    def __init__(self, op, client, retries: int = 2):
        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - exercised only without the extra
            raise ImportError("backend='dask' needs Dask's distributed: pip install 'ntkit[dask]'") from err
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client; got {type(client).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
        self.client, self.retries, self.op = client, retries, op
        self._x2 = self._hold(op.x2)
        self._panels = []
        for index in range(op.panels):
            start = index * op.panel_rows
            rows = op.x1[start:start + op.panel_rows].detach().cpu()
            offset = start if op.symmetric else None
            self._panels.append(client.submit(_compute_panel, op.arch, rows, self._x2, op.get, offset, pure=True,
                                              retries=retries, key=f"ntkit-panel-{op.fingerprint}-{index}"))

    def _hold(self, value: torch.Tensor):
        """``value`` on the cluster as the result of a task that carries it, so a lost copy is recomputed from
        the scheduler's task instead of being gone (scattered data has no lineage; broadcasting it to a worker
        that just died stalls for the connection timeouts)."""
        return self.client.submit(_identity, value.detach().cpu(), pure=False, retries=self.retries)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        v_future = self._hold(v)
        products = [self.client.submit(_panel_product, panel, v_future, pure=True, retries=self.retries)
                    for panel in self._panels]
        return torch.cat(self.client.gather(products)).to(self.op.device)

    def normal_product(self, u: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        u_future = self._hold(u)
        tasks = []
        for index, panel in enumerate(self._panels):
            start = index * self.op.panel_rows
            v_rows = None if v is None else v[start:start + self.op.panel_rows].detach().cpu()
            tasks.append(self.client.submit(_panel_normal_product, panel, u_future, v_rows, pure=True,
                                            retries=self.retries))
        return torch.stack(self.client.gather(tasks)).sum(0).to(self.op.device)
