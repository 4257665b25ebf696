r"""Jacot, Gabriel & Hongler 2018 (arXiv 1806.07572), Fig. 1: the NTK of finite networks converges to a fixed limit.

Setting (§6): a ReLU network of depth L = 4 (``nk.mlp(hidden_layers=3, width=n, b_std=0.1)``, w_std = 1, NTK
parameterisation, n_L = 1 output) on inputs x ∈ R². We plot γ ↦ Θ(x_0, x) for x_0 = (1, 0) and
x = (cos γ, sin γ), γ ∈ [−π, π]:

* the empirical NTK Θ_θ(x_0, x) = Σ_p ∂_p f(x_0) ∂_p f(x) (``nk.empirical_ntk``) of 10 random initialisations for
  each of the widths n = 500 and n = 10,000, at initialisation (t = 0) and after 200 steps of full-batch gradient
  descent with learning rate η = 1.0 (``nk.train``) on C = ½ E_{p_in}(f(x) − f*(x))², f*(x) = x_1·x_2, with
  p_in the empirical distribution of N = 20 training inputs drawn from N(0, I_2) (the paper does not give N;
  20 points keep the target non-trivial while each step stays cheap next to the widths' cost);
* the exact infinite-width limit Θ^(L)_∞(x_0, x) (``arch.kernel``), the same for every width and every time.

What it shows (Jacot Thms. 1–2): the spread of the empirical kernels around the limit falls like n^{-1/2}, and
the kernel moves during training (it "inflates" in the paper's words) less for the wider network.

Metrics (metrics.json, per width): ``deviation_at_init`` = RMS over initialisations and γ of Θ_0 − Θ_∞ divided
by the RMS of Θ_∞ (relative spread around the limit); ``deviation_after_training`` the same for Θ_T;
``inflation`` = mean over initialisations of mean_γ(Θ_T − Θ_0)/mean_γ(Θ_0) (relative growth of the kernel);
``kernel_change`` = mean over initialisations of ‖Θ_T − Θ_0‖/‖Θ_0‖ over the γ grid; ``final_loss``.

Run time, full settings (widths 500 and 10,000, 10 initialisations, 200 steps, 201 angles), 2 shared CPU cores:
about 80 minutes, estimated from the measured cost of one width-10,000 network (9 s to build, 2.0–2.4 s per
step, ≈ 8 min per network; width 500 takes seconds). ``--quick`` (widths 250 and 2,000, 10 initialisations,
200 steps, 121 angles): about 50 s (measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..layers import mlp
from .common import (ExperimentResult, PaperNetwork, check_networks_fit, check_size, config_settings, markdown_table,
                     mlp_sizes, new_figure, progress_bar, start_run)

NAME = "jacot-fig1"
TITLE = "Jacot et al. 2018, Fig. 1: convergence of the NTK to a fixed limit"


@dataclass(frozen=True)
class Config(PaperNetwork):
    """Settings of the experiment; ``CONFIGS`` holds the paper's ("full") and the shrunk ones."""

    widths: tuple[int, ...] = (500, 10_000)
    initializations: int = 10
    steps: int = 200
    train_points: int = 20
    angles: int = 201


CONFIGS = {
    "full": Config(),
    "quick": Config(widths=(250, 2_000), angles=121),
    "tiny": Config(widths=(32, 1024), initializations=8, steps=30, angles=25),
}


def _training_set(config: Config, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N inputs from N(0, I_2) and the target f*(x) = x_1 x_2 (float64, seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(config.train_points, 2, generator=g, dtype=torch.float64)
    return x, x[:, 0] * x[:, 1]


def _angle_grid(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    gamma = torch.linspace(-math.pi, math.pi, config.angles, dtype=torch.float64)
    return gamma, torch.stack([torch.cos(gamma), torch.sin(gamma)], 1)


def _relative_rms(curves: torch.Tensor, limit: torch.Tensor) -> float:
    """RMS over initialisations and angles of (curve − limit), relative to the RMS of the limit."""
    return float((curves - limit).pow(2).mean().sqrt() / limit.pow(2).mean().sqrt())


def run(out="out", *, size: str = "quick", config: Config | None = None, seed: int = 0, device=None,
        progress: bool = True) -> ExperimentResult:
    """Run the experiment and write ``<out>/jacot-fig1/`` (figure, metrics.json, data.npz, report.md).

    Args:
        out: output root folder. size: "full" (the paper), "quick" or "tiny"; ``config`` overrides it.
        seed: seeds the training inputs and every network's initialisation (network i uses seed 1000·seed + i).
        device: torch device for the networks and kernels ("cpu", "cuda", ...). progress: tqdm bars.
    """
    clock, config, device, dtype, output = start_run(NAME, CONFIGS, out, size, config, device)
    for width in config.widths:
        params, activations = mlp_sizes(2, config.hidden_layers, width, 1, config.train_points + config.angles)
        check_networks_fit(params, activations, device, dtype, f"{NAME}'s width-{width} network")

    x_train, y_train = _training_set(config, seed)
    gamma, x_circle = _angle_grid(config)
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    arch_of = {w: mlp(config.hidden_layers, w, w_std=config.w_std, b_std=config.b_std) for w in config.widths}
    # The limit does not depend on the width (NTK parameterisation): any width's description gives it.
    limit = arch_of[config.widths[0]].kernel(x0.to(device), x_circle.to(device), get="ntk").ntk[0].cpu()

    def to_model(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    import ntkit as nk  # the empirical-NTK engine and the training loop load lazily

    initial = {w: [] for w in config.widths}
    trained = {w: [] for w in config.widths}
    losses = {w: [] for w in config.widths}
    runs = [(w, i) for w in config.widths for i in range(config.initializations)]
    for width, i in progress_bar(runs, desc=f"{NAME}: networks", enabled=progress):
        net = arch_of[width].build(2, seed=1000 * seed + i, dtype=dtype, device=device)
        initial[width].append(nk.empirical_ntk(net, to_model(x0), to_model(x_circle), output="trace")[0])
        result = nk.train(net, to_model(x_train), to_model(y_train), steps=config.steps,
                          learning_rate=config.learning_rate, record_every=config.steps,
                          progress=False)  # one bar: the loop over networks
        losses[width].append(float(result.losses[-1]))
        trained[width].append(nk.empirical_ntk(net, to_model(x0), to_model(x_circle), output="trace")[0])
        del net

    per_width = {}
    arrays = {"gamma": gamma, "limit": limit, "x_train": x_train, "y_train": y_train}
    for width in config.widths:
        k0 = torch.stack(initial[width]).detach().cpu().double()
        kt = torch.stack(trained[width]).detach().cpu().double()
        arrays[f"ntk_init_n{width}"], arrays[f"ntk_trained_n{width}"] = k0, kt
        per_width[str(width)] = {
            "deviation_at_init": _relative_rms(k0, limit),
            "deviation_after_training": _relative_rms(kt, limit),
            "inflation": float(((kt - k0).mean(1) / k0.mean(1)).mean()),
            "kernel_change": float(((kt - k0).norm(dim=1) / k0.norm(dim=1)).mean()),
            "final_loss": float(np.mean(losses[width])),
        }
    seconds = clock.seconds
    metrics = {"experiment": NAME, "settings": config_settings(config), "seed": seed, "device": str(device),
               "initial_loss": float(0.5 * y_train.pow(2).mean()), "per_width": per_width, "seconds": seconds}

    wide, narrow = str(max(config.widths)), str(min(config.widths))
    headline = (f"spread around the limit {per_width[narrow]['deviation_at_init']:.3f} (n={narrow}) → "
                f"{per_width[wide]['deviation_at_init']:.3f} (n={wide}); kernel change "
                f"{per_width[narrow]['kernel_change']:.3f} → {per_width[wide]['kernel_change']:.3f}")
    return output.finish(TITLE, _plot(config, gamma, limit, arrays), metrics, arrays,
                         summary=_summary(config, per_width), settings=config_settings(config),
                         sections=[("Metrics", _metrics_table(per_width)), ("What to look for", _LOOK_FOR)],
                         headline=headline)


_LOOK_FOR = ("The thin curves scatter around the black limit; the scatter is narrower for the wider network "
             "(`deviation_at_init` falls roughly like n^{-1/2}). After training (dashed) the narrow network's "
             "kernels have moved, mostly upwards (`inflation` > 0), while the wide network's have barely moved: "
             "in the infinite-width limit the NTK stays constant during training (Jacot et al. Thm. 2).")


def _summary(config: Config, per_width: dict) -> str:
    return (f"Empirical NTK Θ(x_0, x), x_0 = (1, 0), x = (cos γ, sin γ), of {config.initializations} random "
            f"initialisations of a depth-{config.hidden_layers + 1} ReLU network (β = {config.b_std}) for widths "
            f"{', '.join(str(w) for w in config.widths)}, at initialisation and after {config.steps} steps of "
            f"gradient descent (η = {config.learning_rate}) on f*(x) = x₁x₂ with {config.train_points} Gaussian "
            "inputs, against the exact infinite-width limit from `arch.kernel`.")


def _metrics_table(per_width: dict) -> str:
    rows = [[w, m["deviation_at_init"], m["deviation_after_training"], m["inflation"], m["kernel_change"],
             m["final_loss"]] for w, m in per_width.items()]
    return markdown_table(["width n", "relative RMS deviation from limit, t=0", "same, after training",
                           "inflation (mean relative growth)", "‖Θ_T − Θ_0‖/‖Θ_0‖", "final training loss"], rows)


def _plot(config: Config, gamma: torch.Tensor, limit: torch.Tensor, arrays: dict):
    widths = config.widths
    fig, axes = new_figure(1, len(widths), figsize=(5.2 * len(widths), 4.2), sharey=True, squeeze=False)
    g = gamma.numpy()
    for ax, width in zip(axes[0], widths):
        for i, (k0, kt) in enumerate(zip(arrays[f"ntk_init_n{width}"], arrays[f"ntk_trained_n{width}"])):
            ax.plot(g, k0.numpy(), color="tab:blue", lw=0.9, alpha=0.7, label="t = 0" if i == 0 else None)
            ax.plot(g, kt.numpy(), color="tab:orange", lw=0.9, ls="--", alpha=0.8,
                    label=f"t = {config.steps}" if i == 0 else None)
        ax.plot(g, limit.numpy(), color="black", lw=2.0, label="n = ∞ (exact limit)")
        ax.set_title(f"width n = {width:,} ({config.initializations} initialisations)")
        ax.set_xlabel("angle γ of x = (cos γ, sin γ)")
        ax.set_xlim(-math.pi, math.pi)
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["−π", "−π/2", "0", "π/2", "π"])
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
        ax.set_ylabel("NTK Θ(x₀, x),  x₀ = (1, 0)")
    fig.suptitle(f"NTK of depth-{config.hidden_layers + 1} ReLU networks (β = {config.b_std}) at initialisation "
                 f"and after {config.steps} GD steps, against the infinite-width limit", fontsize=11)
    fig.tight_layout()
    return fig


def with_overrides(size: str = "quick", **changes) -> Config:
    """A config of the given size with some fields changed (for tests and exploration)."""
    return replace(CONFIGS[check_size(size)], **changes)
