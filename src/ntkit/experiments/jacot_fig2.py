r"""Jacot, Gabriel & Hongler 2018 (arXiv 1806.07572), Fig. 2: learned functions against the t → ∞ limiting Gaussian.

Setting (§6): ReLU network of depth L = 4 (``nk.mlp(hidden_layers=3, width=n, b_std=0.1)``, w_std = 1, NTK
parameterisation, n_L = 1); 4 training points on the unit circle, x_j = (cos γ_j, sin γ_j) with
γ_j = −2.5, −0.9, 0.6, 2.0 and targets y_j = f*(x_j) = x_{j,1}·x_{j,2} (the paper does not list its points; these
are spread around the circle with alternating signs); 10 initialisations each of widths n = 50 and n = 1000,
trained by 1000 steps of full-batch gradient descent with learning rate η = 1.0 on C = ½ E_{p_in}(f − y)²
(``nk.train``). The learned functions γ ↦ f_θ(cos γ, sin γ) are drawn against the limiting Gaussian.

The limit (Jacot et al. §5; Lee et al. 2019, arXiv 1902.06720, eqs. (15)–(16)): f_0 is a centred Gaussian
process with the NNGP kernel K = Σ^(L), and under gradient flow with the (deterministic, infinite-width) NTK Θ
the function is an affine map of f_0, so for x in the test set

    f_∞(x) ~ N( Θ(x, X) Θ⁻¹ y,  K(x, x') − Θ(x, X)Θ⁻¹K(X, x') − K(x, X)Θ⁻¹Θ(X, x') + Θ(x, X)Θ⁻¹KΘ⁻¹Θ(X, x') )

computed exactly here by ``nk.ensemble_prediction(arch, X, y, x, t=inf)`` from ``arch.kernel``'s exact NNGP and
NTK (the paper approximated both with a width-10,000 network). The 10th, 50th and 90th percentiles at each x are
μ(x) + z σ(x) with z = −1.2816, 0, +1.2816 and σ² the diagonal of the covariance. The networks are compared
with the limit at their own training time t (``ensemble_prediction`` at t = steps): after 1000 steps the residual
has decayed by e^{−ηλ_min t/N} = e^{−39} along the slowest eigendirection (λ_min/N = 0.039), so this is the
t = ∞ Gaussian (the metric ``limit_t_vs_inf`` records the largest difference of means and deviations).

Metrics (per width): ``fraction_inside_band`` = share of (network, test angle) pairs inside the 10–90 % band,
0.8 for draws from the limit (angles where the band has zero width, the training points, are left out);
``mean_squared_z`` = mean of ((f − μ)/σ)², 1 for draws from the limit; ``max_mean_error`` = largest
|mean over networks − μ| relative to the largest σ; ``final_loss``.

Run time, full settings (widths 50 and 1000, 10 initialisations, 1000 steps, 401 test angles), 2 shared CPU
cores: 56 s (measured). ``--quick`` (the same widths, 10 initialisations, 600 steps, 201 angles): 28 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..layers import mlp
from .common import (ExperimentResult, PaperNetwork, check_networks_fit, config_settings, markdown_table, mlp_sizes,
                     new_figure, progress_bar, start_run)

NAME = "jacot-fig2"
TITLE = "Jacot et al. 2018, Fig. 2: learned functions against the limiting Gaussian"

# Standard normal quantile of the 90th percentile: the 10-90 % band is μ ± Z90·σ.
Z90 = 1.2815515655446004


@dataclass(frozen=True)
class Config(PaperNetwork):
    """Settings of the experiment; ``CONFIGS`` holds the paper's ("full") and the shrunk ones."""

    widths: tuple[int, ...] = (50, 1000)
    initializations: int = 10
    steps: int = 1000
    train_angles: tuple[float, ...] = (-2.5, -0.9, 0.6, 2.0)
    test_angles: int = 401


CONFIGS = {
    "full": Config(),
    "quick": Config(steps=600, test_angles=201),
    "tiny": Config(widths=(512,), initializations=16, steps=100, test_angles=24),
}


def _on_circle(gamma: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], 1)


def limiting_gaussian(arch, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, t, *,
                      learning_rate: float = 1.0):
    """Mean (M,), standard deviation (M,) and covariance (M, M) of the infinite-width learned function at time t.

    From ``nk.ensemble_prediction`` (Lee et al. 2019 eqs. (15)–(16), exact NNGP and NTK). Rounding can leave the
    variance at a training point (exactly 0 at t = ∞) slightly negative: values above −1e-9·max variance are
    taken as 0; anything more negative means a broken kernel and raises.
    """
    import ntkit as nk

    pred = nk.ensemble_prediction(arch, x_train, y_train, x_test, t, learning_rate=learning_rate)
    variance = torch.diagonal(pred.covariance, dim1=-2, dim2=-1)
    floor = -1e-9 * float(variance.abs().max())
    if bool((variance < floor).any()):
        raise ValueError(f"the limiting covariance has a negative variance {float(variance.min()):.3g}; "
                         "the NNGP/NTK kernels are not positive semi-definite")
    return pred.mean, variance.clamp_min(0).sqrt(), pred.covariance


def band_statistics(functions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """How draws (R, M) sit in the Gaussian N(mean, std²) pointwise: share inside the 10–90 % band, mean z².

    Points where std is below 1e-6 of its largest value (the training points, where every learned function and
    the limit agree) are left out: there the band has zero width.
    """
    keep = std > 1e-6 * float(std.max())
    z = (functions[:, keep] - mean[keep]) / std[keep]
    return {"fraction_inside_band": float((z.abs() <= Z90).double().mean()),
            "mean_squared_z": float(z.pow(2).mean()),
            "max_mean_error": float((functions.mean(0) - mean).abs().max() / std.max()),
            "points_compared": int(keep.sum()) * functions.shape[0]}


def run(out="out", *, size: str = "quick", config: Config | None = None, seed: int = 0, device=None,
        progress: bool = True) -> ExperimentResult:
    """Run the experiment and write ``<out>/jacot-fig2/`` (figure, metrics.json, data.npz, report.md).

    Args:
        out: output root folder. size: "full" (the paper), "quick" or "tiny"; ``config`` overrides it.
        seed: network i is initialised with seed 1000·seed + i.
        device: torch device for the networks and kernels. progress: tqdm bars.
    """
    clock, config, device, dtype, output = start_run(NAME, CONFIGS, out, size, config, device)
    gamma_train = torch.tensor(config.train_angles, dtype=torch.float64)
    x_train = _on_circle(gamma_train)
    y_train = x_train[:, 0] * x_train[:, 1]
    gamma = torch.linspace(-math.pi, math.pi, config.test_angles, dtype=torch.float64)
    x_test = _on_circle(gamma)
    for width in config.widths:
        params, activations = mlp_sizes(2, config.hidden_layers, width, 1, len(gamma_train) + config.test_angles)
        check_networks_fit(params, activations, device, dtype, f"{NAME}'s width-{width} network")

    arch_of = {w: mlp(config.hidden_layers, w, w_std=config.w_std, b_std=config.b_std) for w in config.widths}
    limit_arch = arch_of[config.widths[0]]  # the limit does not depend on the width (NTK parameterisation)
    times = torch.tensor([float(config.steps), math.inf], dtype=torch.float64)
    mean, std, _ = limiting_gaussian(limit_arch, x_train.to(device), y_train.to(device), x_test.to(device), times,
                                     learning_rate=config.learning_rate)
    mean, std = mean.cpu(), std.cpu()
    # The networks are compared with the limit at their own training time (t = steps), which equals the t = ∞
    # limit to `limit_t_vs_inf` (0 to float64 precision at the paper's 1000 steps).
    mean_t, std_t = mean[0], std[0]

    import ntkit as nk

    learned = {w: [] for w in config.widths}
    losses = {w: [] for w in config.widths}
    runs = [(w, i) for w in config.widths for i in range(config.initializations)]
    for width, i in progress_bar(runs, desc=f"{NAME}: networks", enabled=progress):
        net = arch_of[width].build(2, seed=1000 * seed + i, dtype=dtype, device=device)
        result = nk.train(net, x_train.to(device=device, dtype=dtype), y_train.to(device=device, dtype=dtype),
                          steps=config.steps, learning_rate=config.learning_rate, record_every=config.steps,
                          x_test=x_test.to(device=device, dtype=dtype),
                          progress=False)  # one bar: the loop over networks
        learned[width].append(result.test_outputs[-1].detach().cpu().double())
        losses[width].append(float(result.losses[-1]))

    arrays = {"gamma": gamma, "gamma_train": gamma_train, "y_train": y_train, "limit_mean": mean_t,
              "limit_std": std_t, "limit_p10": mean_t - Z90 * std_t, "limit_p90": mean_t + Z90 * std_t,
              "limit_mean_inf": mean[1], "limit_std_inf": std[1]}
    per_width = {}
    for width in config.widths:
        functions = torch.stack(learned[width])
        arrays[f"learned_n{width}"] = functions
        per_width[str(width)] = {**band_statistics(functions, mean_t, std_t),
                                 "final_loss": float(np.mean(losses[width]))}
    seconds = clock.seconds
    metrics = {"experiment": NAME, "settings": config_settings(config), "seed": seed, "device": str(device),
               "limit_t_vs_inf": float((mean_t - mean[1]).abs().max() + (std_t - std[1]).abs().max()),
               "limit_max_std": float(std_t.max()),
               "per_width": per_width, "seconds": seconds}

    headline = "; ".join(f"n={w}: {m['fraction_inside_band']:.0%} inside the 10–90% band (0.8 expected)"
                         for w, m in per_width.items())
    return output.finish(TITLE, _plot(config, arrays), metrics, arrays, summary=_summary(config),
                         settings=config_settings(config),
                         sections=[("Metrics", _metrics_table(per_width)), ("What to look for", _LOOK_FOR)],
                         headline=headline)


_LOOK_FOR = ("Every learned function passes through the 4 training points. Between them, draws from the limiting "
             "Gaussian fall inside the shaded 10–90 % band 80 % of the time: the width-1000 networks do "
             "(`fraction_inside_band` ≈ 0.8, `mean_squared_z` ≈ 1), while the width-50 networks deviate more, "
             "as their NTK is further from the limit and moves during training.")


def _summary(config: Config) -> str:
    angles = ", ".join(f"{a:g}" for a in config.train_angles)
    return (f"Functions learned by {config.initializations} random initialisations of depth-"
            f"{config.hidden_layers + 1} ReLU networks (β = {config.b_std}) of widths "
            f"{', '.join(str(w) for w in config.widths)} after {config.steps} steps of gradient descent "
            f"(η = {config.learning_rate}) on 4 points of the unit circle (γ = {angles}, y = x₁x₂), against the "
            "t → ∞ limiting Gaussian computed exactly from the infinite-width NNGP and NTK "
            "(`nk.ensemble_prediction`).")


def _metrics_table(per_width: dict) -> str:
    rows = [[w, m["fraction_inside_band"], m["mean_squared_z"], m["max_mean_error"], m["final_loss"]]
            for w, m in per_width.items()]
    return markdown_table(["width n", "share inside 10–90 % band (0.8 ideal)", "mean z² (1 ideal)",
                           "max |mean − μ| / max σ", "final training loss"], rows)


def _plot(config: Config, arrays: dict):
    widths = config.widths
    fig, axes = new_figure(1, len(widths), figsize=(5.2 * len(widths), 4.2), sharey=True, squeeze=False)
    g = arrays["gamma"].numpy()
    colors = {widths[0]: "tab:green", widths[-1]: "tab:red"}
    for ax, width in zip(axes[0], widths):
        ax.fill_between(g, arrays["limit_p10"].numpy(), arrays["limit_p90"].numpy(), color="0.85",
                        label="n = ∞ limit: 10–90 % band")
        for p in ("p10", "p90"):
            ax.plot(g, arrays[f"limit_{p}"].numpy(), color="black", lw=1.0, ls="--",
                    label="limit: 10th / 90th percentile" if p == "p10" else None)
        ax.plot(g, arrays["limit_mean"].numpy(), color="black", lw=1.8, label="limit: median")
        for i, f in enumerate(arrays[f"learned_n{width}"]):
            ax.plot(g, f.numpy(), color=colors.get(width, "tab:blue"), lw=0.9, alpha=0.75,
                    label=f"n = {width:,}, t = {config.steps}" if i == 0 else None)
        ax.scatter(arrays["gamma_train"].numpy(), arrays["y_train"].numpy(), color="black", marker="o", s=30,
                   zorder=5, label="training points")
        ax.set_title(f"width n = {width:,} ({config.initializations} initialisations)")
        ax.set_xlabel("angle γ of x = (cos γ, sin γ)")
        ax.set_xlim(-math.pi, math.pi)
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["−π", "−π/2", "0", "π/2", "π"])
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
        ax.set_ylabel("learned function f_θ(x)")
    fig.suptitle(f"Networks trained on 4 points of the circle for t = {config.steps} steps against the "
                 "infinite-width Gaussian at the same t (exact NNGP + NTK)", fontsize=11)
    fig.tight_layout()
    return fig
