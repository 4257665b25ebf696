r"""Lee et al. 2019 (arXiv 1902.06720): wide networks evolve as linear models.

A network f(x; θ) and its linearisation around the initial parameters θ_0 (Lee et al. eq. (5), ``nk.linearize``)

    f_lin(x; θ) = f(x; θ_0) + J(x)(θ − θ_0),   J = ∂f/∂θ at θ_0,

start from the same θ_0 and are trained side by side by the same full-batch gradient descent (``nk.train``, learning
rate η = 1.0, C = ½ E_{p_in}(f − y)² over N training points). Lee et al. Thm. 2.1: for every width n the two
stay close, sup_t |f_t(x) − f_t^lin(x)| = O(n^{-1/2}), and the parameters move by a vanishing fraction,
‖θ_t − θ_0‖/‖θ_0‖ → 0 (in NTK parameterisation ‖θ_t − θ_0‖ stays O(1) while ‖θ_0‖ grows like n).

Setting (a choice made here, in the spirit of Lee et al.'s fully-connected MNIST runs with the Jacot §6 network
settings): ReLU networks with 2 hidden layers (``nk.mlp(2, n, b_std=0.1)``, w_std = 1, NTK parameterisation, one
output), N = 256 training and 128 test digits from MNIST-5k scaled to norm √n_0 (``load_digits(...,
scale="sphere")``), targets y = +1 for digits 5–9 and −1 for 0–4, widths n = 64, 256, 1024, 4096, 1000 steps,
3 initialisations (``seeds``) per width. Both models' outputs and parameter distances are recorded at
``records`` evenly spaced times.

The figure shows aggregates only: (a) the RMS over all test digits of f_t − f_t^lin against time, the mean over
the initialisations with their range (``discrepancy_curves``), (b) the test losses of both models, (c) the
relative parameter changes (means over the initialisations), (d) the maxima over time against width. (One
digit's output, plotted before, depends on that digit and that initialisation: a width-256 network could look
further from its linearisation than a width-64 one.)

Metrics (per width, means over the initialisations): ``max_discrepancy`` = largest over recorded times of the
RMS over test points of f_t − f_t^lin (``max_discrepancy_range``: its minimum and maximum over the
initialisations); ``final_discrepancy`` the same at the last step; ``param_change_net`` / ``param_change_lin``
= ‖θ_T − θ_0‖/‖θ_0‖ of the network / the linearisation; ``param_distance`` = ‖θ_T^net − θ_T^lin‖/‖θ_0‖;
``final_loss_net`` / ``final_loss_lin``; and over widths the log-log slopes of the discrepancy and the relative
parameter change (−0.5 means n^{-1/2}).

Run time, full settings, 2 shared CPU cores: about 75 minutes (3 initialisations, each costing what the single
one did before), estimated from the measured cost per step (width 4096 on 256 digits: 0.53 s for the
network and 0.83 s for its linearisation, so ≈ 23 min per initialisation of that width; the narrower widths add
≈ 2 min each); one initialisation took 56 s on one H200 GPU (measured by issue 13's reporter). ``--quick``
(widths 64, 256, 1024, N = 128, 300 steps, 3 initialisations): 45 s in ``ntkit reproduce all --quick`` on 2 CPU
cores (measured; 19 s before with one initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..layers import mlp
from .common import (ExperimentResult, PaperNetwork, check_networks_fit, colormap_colors, config_settings,
                     log_log_slope, markdown_table, mlp_sizes, new_figure, progress_bar, start_run)
from .jacot_fig3 import load_digits

NAME = "lee-linearization"
TITLE = "Lee et al. 2019: wide networks evolve as their linearisation"


@dataclass(frozen=True)
class Config(PaperNetwork):
    """Settings of the experiment; ``CONFIGS`` holds the full and the shrunk ones."""

    widths: tuple[int, ...] = (64, 256, 1024, 4096)
    train_points: int = 256
    test_points: int = 128
    steps: int = 1000
    records: int = 20
    seeds: int = 3  # initialisations per width: the figure shows their mean and range
    hidden_layers: int = 2  # Lee et al. train shallower networks than Jacot's L = 4


CONFIGS = {
    "full": Config(),
    "quick": Config(widths=(64, 256, 1024), train_points=128, test_points=64, steps=300, records=15),
    "tiny": Config(widths=(32, 512), train_points=16, test_points=16, steps=40, records=4, seeds=2,
                   dtype="float64"),
}


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _train_pair(config: Config, width: int, init_seed: int, x_train, y_train, x_test, segment: int, bar) -> dict:
    """One network of ``width`` (initialised with ``init_seed``) and its linearisation trained side by side;
    test outputs, relative parameter changes and distances at every recorded time, as float64 CPU tensors."""
    import ntkit as nk

    net = mlp(config.hidden_layers, width, w_std=config.w_std, b_std=config.b_std).build(
        x_train.shape[1], seed=init_seed, dtype=x_train.dtype, device=x_train.device)
    lin = nk.linearize(net)  # a copy around θ_0: training net afterwards leaves it unchanged
    theta0 = _flat(net.parameters())
    norm0 = float(theta0.norm())
    with torch.no_grad():
        outputs = {"net": [net(x_test)[:, 0]], "lin": [lin(x_test)[:, 0]]}
    change = {"net": [0.0], "lin": [0.0]}
    distance, losses = [0.0], {}
    for _ in range(config.records):
        for key, model in (("net", net), ("lin", lin)):
            result = nk.train(model, x_train, y_train, steps=segment, learning_rate=config.learning_rate,
                              record_every=segment, x_test=x_test, progress=False)
            outputs[key].append(result.test_outputs[-1])
            losses[key] = float(result.losses[-1])
        theta_net, theta_lin = _flat(net.parameters()), _flat(lin.theta.values())
        change["net"].append(float((theta_net - theta0).norm()) / norm0)
        change["lin"].append(float((theta_lin - theta0).norm()) / norm0)
        distance.append(float((theta_net - theta_lin).norm()) / norm0)
        bar.update(1)
    return {"f_net": torch.stack(outputs["net"]).detach().cpu().double(),
            "f_lin": torch.stack(outputs["lin"]).detach().cpu().double(),
            "change_net": torch.tensor(change["net"], dtype=torch.float64),
            "change_lin": torch.tensor(change["lin"], dtype=torch.float64),
            "distance": torch.tensor(distance, dtype=torch.float64),
            "loss_net": torch.tensor(losses["net"]), "loss_lin": torch.tensor(losses["lin"]),
            "parameters": torch.tensor(theta0.numel())}


def run(out="out", *, size: str = "quick", config: Config | None = None, seed: int = 0, device=None,
        progress: bool = True) -> ExperimentResult:
    """Run the experiment and write ``<out>/lee-linearization/`` (figure, metrics.json, data.npz, report.md).

    Args:
        out: output root folder. size: "full", "quick" or "tiny"; ``config`` overrides it.
        seed: seeds the choice of digits and the initialisations (seeds 1000·seed + s, s < config.seeds, for
            every width).
        device: torch device for the models. progress: tqdm bars.
    """
    clock, config, device, dtype, output = start_run(NAME, CONFIGS, out, size, config, device)
    if config.records < 1 or config.steps % config.records:
        raise ValueError(f"steps ({config.steps}) must be a positive multiple of records ({config.records})")
    if config.seeds < 1:
        raise ValueError(f"seeds must be at least 1; got {config.seeds}")
    x, labels, source = load_digits(config.train_points + config.test_points, seed, device=device, scale="sphere")
    x = x.to(dtype)
    y = torch.where(labels >= 5, 1.0, -1.0).to(dtype)
    x_train, y_train, x_test = x[:config.train_points], y[:config.train_points], x[config.train_points:]
    for width in config.widths:
        params, activations = mlp_sizes(x.shape[1], config.hidden_layers, width, 1, x.shape[0])
        check_networks_fit(params, activations, device, dtype, f"{NAME}'s width-{width} network and linearisation")

    segment = config.steps // config.records
    times = torch.arange(0, config.steps + 1, segment, dtype=torch.float64)
    arrays = {"times": times, "y_test": y[config.train_points:].cpu()}
    per_width = {}
    # one bar for the whole experiment, advanced per recorded segment (the width-4096 runs take minutes each)
    bar = progress_bar(None, desc=f"{NAME}: segments", enabled=progress,
                       total=len(config.widths) * config.seeds * config.records)
    for width in config.widths:
        runs = [_train_pair(config, width, 1000 * seed + s, x_train, y_train, x_test, segment, bar)
                for s in range(config.seeds)]
        stacked = {key: torch.stack([r[key] for r in runs]) for key in runs[0]}  # (seeds, R, ...) each
        f_net, f_lin = stacked["f_net"], stacked["f_lin"]
        rms = (f_net - f_lin).pow(2).mean(2).sqrt()  # (seeds, R): RMS over the test digits
        y_test = y[config.train_points:].cpu().double()
        arrays.update({f"f_net_n{width}": f_net, f"f_lin_n{width}": f_lin, f"discrepancy_n{width}": rms,
                       f"test_loss_net_n{width}": 0.5 * (f_net - y_test).pow(2).mean(2),
                       f"test_loss_lin_n{width}": 0.5 * (f_lin - y_test).pow(2).mean(2),
                       f"param_change_net_n{width}": stacked["change_net"],
                       f"param_change_lin_n{width}": stacked["change_lin"]})
        worst = rms.max(1).values  # per seed
        per_width[str(width)] = {"max_discrepancy": float(worst.mean()),
                                 "max_discrepancy_range": [float(worst.min()), float(worst.max())],
                                 "final_discrepancy": float(rms[:, -1].mean()),
                                 "param_change_net": float(stacked["change_net"][:, -1].mean()),
                                 "param_change_lin": float(stacked["change_lin"][:, -1].mean()),
                                 "param_distance": float(stacked["distance"][:, -1].mean()),
                                 "final_loss_net": float(stacked["loss_net"].mean()),
                                 "final_loss_lin": float(stacked["loss_lin"].mean()),
                                 "parameters": int(runs[0]["parameters"])}
    bar.close()

    widths = [int(w) for w in per_width]
    slopes = {}
    if len(widths) > 1:
        slopes = {"max_discrepancy": log_log_slope(widths, [m["max_discrepancy"] for m in per_width.values()]),
                  "param_change_net": log_log_slope(widths, [m["param_change_net"] for m in per_width.values()])}
    seconds = clock.seconds
    metrics = {"experiment": NAME, "settings": config_settings(config), "seed": seed, "device": str(device),
               "data": source, "per_width": per_width, "log_log_slopes": slopes, "seconds": seconds}
    wide, narrow = str(max(widths)), str(min(widths))
    headline = (f"max_t RMS(f − f_lin) {per_width[narrow]['max_discrepancy']:.3g} (n={narrow}) → "
                f"{per_width[wide]['max_discrepancy']:.3g} (n={wide})"
                + (f", slope {slopes['max_discrepancy']:.2f} in log-log" if slopes else ""))
    return output.finish(TITLE, _plot(config, arrays, per_width, slopes), metrics, arrays,
                         summary=_summary(config, source), settings=config_settings(config),
                         sections=[("Metrics", _metrics_table(per_width, slopes)), ("What to look for", _LOOK_FOR)],
                         headline=headline)


_LOOK_FOR = ("(a) The RMS over all test digits of the difference between the network and its linearisation, "
             "averaged over the initialisations (shaded: their range); Lee et al. Thm. 2.1 bounds it by "
             "O(n^{-1/2}) at every time, so the curves of wider networks should sit lower, by more than the "
             "shaded ranges. (b) The test loss of the network (solid) and of its linearisation (dashed), averaged "
             "over the initialisations: the gap between the two is the discrepancy of (a) seen through the loss. "
             "(c) The relative parameter change: in NTK parameterisation it falls with width, the network staying "
             "where its first-order Taylor expansion holds. (d) Both quantities against width on log-log axes "
             "(bars: range over the initialisations); the metrics give the fitted slopes (−0.5 is n^{-1/2}).")


def discrepancy_curves(arrays: dict, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Panel (a)'s data for one width: the mean over initialisations of RMS_x(f_t(x) − f_t^lin(x)) over all test
    digits x at each recorded time, and its minimum and maximum over the initialisations, each (R,)."""
    rms = arrays[f"discrepancy_n{width}"].numpy()  # (seeds, R)
    return rms.mean(0), rms.min(0), rms.max(0)


def _summary(config: Config, source: str) -> str:
    return (f"ReLU networks with {config.hidden_layers} hidden layers (β = {config.b_std}) of widths "
            f"{', '.join(str(w) for w in config.widths)} and their linearisations (`nk.linearize`) trained side by "
            f"side for {config.steps} steps of gradient descent (η = {config.learning_rate}) on "
            f"{config.train_points} digits from {source} (y = ±1 for digits ≥ 5 / < 5), {config.seeds} "
            f"initialisation(s) per width; outputs on {config.test_points} test digits and parameter distances over "
            "time.")


def _metrics_table(per_width: dict, slopes: dict) -> str:
    rows = [[w, f"{m['max_discrepancy']:.4g} ({m['max_discrepancy_range'][0]:.3g}–{m['max_discrepancy_range'][1]:.3g})",
             m["final_discrepancy"], m["param_change_net"], m["param_change_lin"],
             m["param_distance"], m["final_loss_net"], m["final_loss_lin"]] for w, m in per_width.items()]
    table = markdown_table(["width n", "max_t RMS(f − f_lin), mean", "at T", "‖θ_T − θ_0‖/‖θ_0‖ net", "same, lin",
                            "‖θ_net − θ_lin‖/‖θ_0‖", "loss net", "loss lin"], rows)
    if slopes:
        table += "\n\nLog-log slopes against width: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
    return table


def _plot(config: Config, arrays: dict, per_width: dict, slopes: dict):
    fig, axes = new_figure(2, 2, figsize=(11, 8.6))
    t = arrays["times"].numpy()
    colors = colormap_colors("plasma", len(config.widths), stop=0.8)
    for i, (color, width) in enumerate(zip(colors, config.widths)):
        mean, low, high = discrepancy_curves(arrays, width)
        axes[0][0].plot(t[1:], mean[1:], color=color, marker="o", ms=3, label=f"n = {width:,}")
        axes[0][0].fill_between(t[1:], low[1:], high[1:], color=color, alpha=0.2,
                                label=f"range over {config.seeds} initialisations" if i == 0 else None)
        axes[0][1].plot(t, arrays[f"test_loss_net_n{width}"].mean(0).numpy(), color=color, lw=1.5,
                        label=f"n = {width:,}")
        axes[0][1].plot(t, arrays[f"test_loss_lin_n{width}"].mean(0).numpy(), color=color, lw=1.5, ls="--")
        axes[1][0].plot(t[1:], arrays[f"param_change_net_n{width}"].mean(0)[1:].numpy(), color=color, lw=1.5,
                        label=f"n = {width:,}")
        axes[1][0].plot(t[1:], arrays[f"param_change_lin_n{width}"].mean(0)[1:].numpy(), color=color, lw=1.5,
                        ls="--")
    seeds = config.seeds
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(r"RMS over test digits of $f_t - f_t^{lin}$")
    axes[0][0].set_title(f"(a) f − f_lin, mean of {seeds} initialisations")
    axes[0][1].plot([], [], color="gray", ls="--", label="linearised (dashed)")
    axes[0][1].set_ylabel(r"test loss $\frac{1}{2}\,E_{test}(f - y)^2$")
    axes[0][1].set_title("(b) test loss, net (solid) vs lin (dashed)")
    axes[1][0].set_yscale("log")
    axes[1][0].set_ylabel(r"$\|\theta_t - \theta_0\| / \|\theta_0\|$")
    axes[1][0].set_title("(c) relative parameter change (net solid, lin dashed)")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xlabel("gradient-descent step t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    ax = axes[1][1]
    widths = np.array([int(w) for w in per_width], dtype=float)
    disc = np.array([m["max_discrepancy"] for m in per_width.values()])
    span = np.array([m["max_discrepancy_range"] for m in per_width.values()]).T  # (2, widths): min, max
    change = np.array([m["param_change_net"] for m in per_width.values()])
    ax.errorbar(widths, disc, yerr=np.abs(span - disc), fmt="o-", color="tab:red", capsize=3,
                label="max_t RMS(f − f_lin)" + (f", slope {slopes['max_discrepancy']:.2f}" if slopes else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.loglog(widths, change, "s-", color="tab:blue",
              label="‖θ_T − θ_0‖/‖θ_0‖" + (f", slope {slopes['param_change_net']:.2f}" if slopes else ""))
    ax.loglog(widths, disc[0] * (widths / widths[0]) ** -0.5, color="gray", ls=":", label="n^(-1/2) reference")
    ax.set_xlabel("width n")
    ax.set_ylabel("discrepancy (max over t), parameter change (at T)")
    ax.set_title("(d) against width")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.suptitle(f"A network and its linearisation trained side by side ({config.hidden_layers} hidden ReLU "
                 f"layers, β = {config.b_std}, η = {config.learning_rate})", fontsize=11)
    fig.tight_layout()
    return fig
