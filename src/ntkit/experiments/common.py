"""What every experiment shares: its output folder (figures, metrics, arrays, report), sizes, devices, timing.

Each experiment writes into ``<out>/<name>/``:

    <name>.png        the figure (matplotlib, Agg backend: no display needed)
    metrics.json      the numbers the figure shows, plus the settings and the run time
    data.npz          the curves behind the figure, to re-plot without re-running
    report.md         a short markdown report: what was run, the figure, the metrics, what to look for
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memory import check_fits
from .._validation import resolve_device  # noqa: F401  (re-exported: experiments take device=)

__all__ = ["SIZES", "ExperimentOutput", "ExperimentResult", "check_size", "resolve_device", "new_figure",
           "colormap_colors",
           "progress_bar", "markdown_table", "to_jsonable", "check_networks_fit", "mlp_sizes", "log_log_slope", "Stopwatch",
           "config_settings", "describe_axes", "DTYPES", "PaperNetwork", "start_run"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# "full": the papers' settings; "quick": the same experiment shrunk so that `ntkit reproduce all --quick` takes
# minutes on 2 CPU cores; "tiny": seconds, for the tests (hidden on the command line).
SIZES = ("full", "quick", "tiny")


@dataclass(frozen=True)
class PaperNetwork:
    """The network and training settings every experiment shares (Jacot et al. 2018 §6): ReLU, L = 4 weight layers,
    w_std = 1, β = b_std = 0.1, learning rate 1.0, one output. Each experiment's ``Config`` extends it."""

    hidden_layers: int = 3
    w_std: float = 1.0
    b_std: float = 0.1
    learning_rate: float = 1.0
    dtype: str = "float32"


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}")
    return size


def new_figure(nrows: int, ncols: int, *, figsize: tuple[float, float], **subplots):
    """A matplotlib ``Figure`` and its axes grid, made without pyplot.

    Figures are only written to files, so they need no GUI backend; building them from ``matplotlib.figure``
    leaves the user's pyplot state and backend untouched (a notebook calling ``run`` keeps its inline backend).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **subplots)


def colormap_colors(name: str, count: int, stop: float = 1.0) -> np.ndarray:
    """``count`` RGBA colours from the matplotlib colour map ``name`` (evenly over [0, stop])."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    positions = np.arange(count) if cmap.N < 256 else np.linspace(0.0, stop, count)  # qualitative maps: by index
    return cmap(positions)


def progress_bar(iterable: Iterable, *, desc: str, enabled: bool, total: int | None = None):
    """A tqdm bar over a long loop (``leave=True`` so the finished bar stays as a record of the run), on terminals
    only: tqdm's ``disable=None`` turns it off when output is redirected, so a log gets no cursor escapes."""
    return tqdm(iterable, desc=desc, total=total, disable=None if enabled else True, dynamic_ncols=True)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")  # a literal | (as in |x|) would end the cell

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_jsonable(value: Any, where: str = "metrics") -> Any:
    """Plain JSON types from tensors, arrays, dataclasses and numpy scalars; refuses NaN and infinity.

    A metric that is NaN means an experiment went wrong, so it is an error here rather than a ``NaN`` in the file.
    """
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}: an experiment produced a non-finite number")
        return value
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"{where} has type {type(value).__name__}, which cannot be written to JSON")


def check_networks_fit(parameter_count: int, activation_count: int, device: torch.device, dtype: torch.dtype,
                       what: str) -> None:
    """Refuse, with an estimate, a network too big for the device's free memory.

    Training holds the parameters, their gradients and one optimiser update (3 copies), the empirical NTK and a
    linearised model each add about 2 more; activations of the forward pass are kept for the backward pass.
    """
    item = torch.tensor([], dtype=dtype).element_size()
    need = item * (5 * parameter_count + 3 * activation_count)
    check_fits(need, device, what, "Use --quick (smaller widths), or a device with more memory (--device cuda).")


def mlp_sizes(in_features: int, hidden_layers: int, width: int, out_features: int, points: int) -> tuple[int, int]:
    """(parameter count, activations kept for the backward pass on ``points`` inputs) of ``nk.mlp``'s network."""
    params = in_features * width + width + (hidden_layers - 1) * (width * width + width) + width * out_features
    params += out_features
    return params, 2 * points * width * hidden_layers


def log_log_slope(widths: Iterable[float], values: Iterable[float]) -> float:
    """Least-squares slope of log(value) against log(width): -0.5 for a quantity falling like n^{-1/2}."""
    n = np.asarray(list(widths), dtype=np.float64)
    v = np.asarray(list(values), dtype=np.float64)
    if n.size < 2 or n.shape != v.shape:
        raise ValueError(f"a slope needs at least two widths and one value per width; got {n.size} and {v.size}")
    if not (np.all(np.isfinite(v)) and np.all(v > 0) and np.all(n > 0)):
        raise ValueError(f"cannot fit a log-log slope to non-positive or non-finite values {v.tolist()}")
    return float(np.polyfit(np.log(n), np.log(v), 1)[0])


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self):
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start


def describe_axes(figure) -> list[dict]:
    """Title, axis labels and whether a legend is drawn, for every plotting axes of a figure (colorbars skipped)."""
    return [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
             "legend": ax.get_legend() is not None or bool(figure.legends)}
            for ax in figure.axes if ax.get_label() != "<colorbar>"]


def start_run(name: str, configs: dict, out, size: str, config, device):
    """(stopwatch, config, device, dtype, output folder) of one run: ``configs[size]`` unless ``config`` is given."""
    clock = Stopwatch()
    config = configs[check_size(size)] if config is None else config
    device = resolve_device(device)
    return clock, config, device, DTYPES[config.dtype], ExperimentOutput(out, name)


@dataclass
class ExperimentResult:
    """What an experiment returns: its metrics (also in metrics.json), the arrays behind its figure (also in
    data.npz) and the paths it wrote."""

    name: str
    metrics: dict
    arrays: dict
    directory: Path
    figure: Path
    report: Path
    seconds: float
    headline: str = ""
    figure_axes: list[dict] = field(default_factory=list)


class ExperimentOutput:
    """The folder ``<root>/<name>/`` and the writers for what goes into it."""

    def __init__(self, root: str | Path, name: str):
        self.name = name
        self.figure_axes: list[dict] = []
        self.directory = Path(root) / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create the output folder {self.directory}: {err}") from None

    def path(self, filename: str) -> Path:
        return self.directory / filename

    def save_figure(self, figure, filename: str | None = None) -> Path:
        """Write the figure as PNG and remember what its axes show (``figure_axes``, checked by the tests)."""
        path = self.path(filename or f"{self.name}.png")
        self.figure_axes = describe_axes(figure)
        figure.savefig(path, dpi=130, bbox_inches="tight")
        return path

    def save_metrics(self, metrics: dict) -> Path:
        path = self.path("metrics.json")
        path.write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
        return path

    def save_arrays(self, arrays: dict) -> Path:
        path = self.path("data.npz")
        plain = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                 for k, v in arrays.items()}
        np.savez_compressed(path, **plain)
        return path

    def finish(self, title: str, figure, metrics: dict, arrays: dict, *, summary: str, settings: dict,
               sections: list[tuple[str, str]], headline: str) -> "ExperimentResult":
        """Write the figure, metrics.json, data.npz and report.md, and return what the run produced."""
        seconds = metrics["seconds"]
        figure_path = self.save_figure(figure)
        self.save_metrics(metrics)
        self.save_arrays(arrays)
        report = self.write_report(title, summary, settings, figure_path, sections, seconds)
        return ExperimentResult(self.name, metrics, arrays, self.directory, figure_path, report, seconds, headline,
                                self.figure_axes)

    def write_report(self, title: str, summary: str, settings: dict, figure: Path, sections: list[tuple[str, str]],
                     seconds: float) -> Path:
        """report.md: title, one-paragraph summary, the figure, the settings, then (heading, markdown) sections."""
        settings_rows = [[f"`{k}`", f"`{to_jsonable(v, k)}`"] for k, v in settings.items()]
        parts = [f"# {title}", "", summary, "", f"![{title}]({figure.name})", "",
                 "## Settings", "", markdown_table(["setting", "value"], settings_rows), "",
                 f"Run time: {seconds:.1f} s (wall clock).", ""]
        for heading, body in sections:
            parts += [f"## {heading}", "", body, ""]
        path = self.path("report.md")
        path.write_text("\n".join(parts))
        return path


def config_settings(config) -> dict:
    """The fields of a config dataclass as a plain dict (for metrics.json and the report's settings table)."""
    return {f.name: getattr(config, f.name) for f in fields(config)}
