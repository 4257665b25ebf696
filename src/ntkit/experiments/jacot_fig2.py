r"""Jacot, Gabriel & Hongler 2018 (arXiv 1806.07572), Fig. 2: learned functions against the t → ∞ limiting Gaussian.

Setting (§6): ReLU network of depth L = 4 (``nk.mlp(hidden_layers=3, width=n, b_std=0.1)``, w_std = 1, NTK
parameterisation, n_L = 1); 4 training points on the unit circle, x_j = (cos γ_j, sin γ_j) with
γ_j = −2.5, −0.9, 0.6, 2.0 and targets y_j = f*(x_j) = x_{j,1}·x_{j,2} (the paper does not list its points; these
are spread around the circle with alternating signs); widths n = 50 and n = 1000, trained by 1000 steps of
full-batch gradient descent with learning rate η = 1.0 on C = ½ E_{p_in}(f − y)² (``train_together``: the
updates of ``nk.train``, for many networks at once). The learned functions γ ↦ f_θ(cos γ, sin γ) are drawn
against the limiting Gaussian.

Number of networks: the paper trains 10 per width and finds the two widths' distributions "very similar". Ten
networks cannot tell them apart: the share inside the 10–90 % band has a standard error of about 0.05 with 10
networks, as large as the difference between the widths. So ``initializations`` is 128 here (64 with
``--quick``), which separates them (measured with 64: 0.70 ± 0.02 at n = 50 against 0.78 ± 0.03 at n = 1000, a
difference of 2.5 standard errors; with 128: 4.1), and the report's comparison of the widths is computed from
the numbers (``compare_widths``): a width is called closer to the limit only when its distance to the limit's
value is smaller by more than two standard errors of the difference. The figure draws the first 10 networks of
each width, as the paper does, with the 10th and 90th percentiles of all of them.

The limit (Jacot et al. §5; Lee et al. 2019, arXiv 1902.06720, eqs. (15)–(16)): f_0 is a centred Gaussian
process with the NNGP kernel K = Σ^(L), and under gradient flow with the (deterministic, infinite-width) NTK Θ
the function is an affine map of f_0, so for x in the test set

    f_∞(x) ~ N( Θ(x, X) Θ⁻¹ y,  K(x, x') − Θ(x, X)Θ⁻¹K(X, x') − K(x, X)Θ⁻¹Θ(X, x') + Θ(x, X)Θ⁻¹KΘ⁻¹Θ(X, x') )

computed exactly here by ``nk.ensemble_prediction(arch, X, y, x, t=inf)`` from ``arch.kernel``'s exact NNGP and
NTK (the paper approximated both with a width-10,000 network). The 10th, 50th and 90th percentiles at each x are
μ(x) + z σ(x) with z = −1.2816, 0, +1.2816 and σ² the diagonal of the covariance. The networks are compared
with the limit at their own training time t (``ensemble_prediction`` at t = steps): after 1000 steps the residual
has decayed by e^{−ηλ_min t/N} = e^{−39} along the slowest eigendirection (λ_min/N = 0.039), so this is the
t = ∞ Gaussian (the metric ``limit_t_vs_inf`` records the largest difference of means and deviations); after the
200 steps of ``--quick`` it is e^{−7.8} = 4·10⁻⁴, and the comparison is with the limit at the same t either way.

Metrics (per width): ``fraction_inside_band`` = share of (network, test angle) pairs inside the 10–90 % band,
0.8 for draws from the limit (angles where the band has zero width, the training points, are left out);
``mean_squared_z`` = mean of ((f − μ)/σ)², 1 for draws from the limit; each with its standard error
(``*_se``: the standard deviation over networks of the per-network value, divided by √R; the networks are
independent, the angles of one network are not); ``max_mean_error`` = largest |mean over networks − μ| relative
to the largest σ (a maximum over angles, without a standard error; not used to compare the widths);
``final_loss``. ``comparison``: per statistic, the verdict of ``compare_widths`` with the difference of
distances and its standard error.

Run time, full settings (128 networks per width, 1000 steps, 401 angles): 329 s on 2 busy CPU cores (412 s of
CPU; measured), against 56 s for the paper's 10 networks one at a time (a width-1000 network step costs about 3 ms
of one core in ``train_together``, a width-50 one 0.02 ms); they separate the widths by 4.1 standard errors (band
share 0.707 ± 0.014 at n = 50, 0.791 ± 0.015 at n = 1000). ``--quick`` (64 networks, 200 steps, 201 angles): 25 s
in ``ntkit reproduce all --quick`` on 2 CPU cores (measured; 28 s before with 10 networks of 600 steps one at a
time; side by side on busy cores 47 s of CPU against 215 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layers import mlp
from .common import (ExperimentResult, PaperNetwork, check_networks_fit, config_settings, markdown_table, mlp_sizes,
                     new_figure, progress_bar, start_run)
from .ensemble import train_together

NAME = "jacot-fig2"
TITLE = "Jacot et al. 2018, Fig. 2: learned functions against the limiting Gaussian"

# Standard normal quantile of the 90th percentile: the 10-90 % band is μ ± Z90·σ.
Z90 = 1.2815515655446004
# The statistics compared between widths and their values for draws from the limit.
IDEAL = {"fraction_inside_band": 0.8, "mean_squared_z": 1.0}
# A width is called closer to (or further from) the limit only beyond this many standard errors: for Gaussian
# noise a difference this large in a given direction arises by chance 2.3 % of the time.
SEPARATION = 2.0
DRAWN = 10  # networks drawn per panel (the paper's 10); the statistics use all of them


@dataclass(frozen=True)
class Config(PaperNetwork):
    """Settings of the experiment; ``CONFIGS`` holds the paper's ("full") and the shrunk ones."""

    widths: tuple[int, ...] = (50, 1000)
    initializations: int = 128  # the paper's 10 cannot separate the widths (see the module docstring)
    steps: int = 1000
    train_angles: tuple[float, ...] = (-2.5, -0.9, 0.6, 2.0)
    test_angles: int = 401


CONFIGS = {
    "full": Config(),
    "quick": Config(initializations=64, steps=200, test_angles=201),
    "tiny": Config(widths=(32, 512), initializations=16, steps=100, test_angles=24),
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
    """How draws (R, M) sit in the Gaussian N(mean, std²) pointwise: share inside the 10–90 % band, mean z², each
    with its standard error over the R draws (rows are independent, the points of one row need not be).

    Points where std is below 1e-6 of its largest value (the training points, where every learned function and
    the limit agree) are left out: there the band has zero width.
    """
    if functions.shape[0] < 2:
        raise ValueError(f"standard errors need at least 2 draws; got {functions.shape[0]}")
    keep = std > 1e-6 * float(std.max())
    z = (functions[:, keep] - mean[keep]) / std[keep]
    inside = (z.abs() <= Z90).double().mean(1)  # per draw
    squared = z.pow(2).mean(1)
    root = math.sqrt(functions.shape[0])
    return {"fraction_inside_band": float(inside.mean()), "fraction_inside_band_se": float(inside.std() / root),
            "mean_squared_z": float(squared.mean()), "mean_squared_z_se": float(squared.std() / root),
            "max_mean_error": float((functions.mean(0) - mean).abs().max() / std.max()),
            "points_compared": int(keep.sum()) * functions.shape[0]}


def compare_widths(per_width: dict) -> dict:
    """Whether the widest networks are closer to the limit than the narrowest, per statistic, from the numbers.

    For a statistic s with limit value s* (``IDEAL``) and standard errors e, the distances d = |s − s*| of the two
    widths differ by Δ = d_narrow − d_wide with standard error √(e_narrow² + e_wide²). The verdict is "closer"
    when Δ exceeds ``SEPARATION`` standard errors, "further" below minus that, and "indistinguishable" otherwise.
    Returns {statistic: {"verdict", "difference", "standard_error", "narrow", "wide"}}; {} for a single width.
    """
    widths = sorted(per_width, key=int)
    if len(widths) < 2:
        return {}
    narrow, wide = per_width[widths[0]], per_width[widths[-1]]
    out = {}
    for name, ideal in IDEAL.items():
        difference = abs(narrow[name] - ideal) - abs(wide[name] - ideal)
        error = math.hypot(narrow[f"{name}_se"], wide[f"{name}_se"])
        # error = 0 (identical draws) decides by the sign alone; a zero difference is never a verdict
        verdict = ("closer" if difference > SEPARATION * error and difference > 0 else
                   "further" if difference < -SEPARATION * error and difference < 0 else "indistinguishable")
        out[name] = {"verdict": verdict, "difference": difference, "standard_error": error,
                     "narrow": int(widths[0]), "wide": int(widths[-1])}
    return out


def _in_errors(difference: float, error: float) -> str:
    return f"{abs(difference) / error:.1f}" if error > 0 else ("0" if difference == 0 else "infinitely many")


_LABELS = {"fraction_inside_band": "Share inside the 10–90 % band", "mean_squared_z": "Mean z²"}


def comparison_text(per_width: dict, comparison: dict, networks: int) -> str:
    """The report's sentences on the widths, each number and each verdict taken from ``per_width``/``comparison``."""
    lines = []
    for name, ideal in IDEAL.items():
        parts = []
        for width, m in per_width.items():
            value, error = m[name], m[f"{name}_se"]
            parts.append(f"n = {int(width):,}: {value:.3f} ± {error:.3f} ({_in_errors(value - ideal, error)} "
                         f"standard errors from {ideal:g})")
        line = f"- {_LABELS[name]} ({ideal:g} for the limit): " + "; ".join(parts) + "."
        c = comparison.get(name)
        if c:
            sizes = f"the width-{c['wide']:,} networks", f"the width-{c['narrow']:,} ones"
            numbers = (f"distances to {ideal:g} differ by {c['difference']:.3f} ± {c['standard_error']:.3f} "
                       f"({_in_errors(c['difference'], c['standard_error'])} standard errors; "
                       f"{SEPARATION:g} needed)")
            if c["verdict"] == "closer":
                line += f" By this measure {sizes[0]} are closer to the limit than {sizes[1]}: {numbers}."
            elif c["verdict"] == "further":
                line += f" By this measure {sizes[0]} are further from the limit than {sizes[1]}: {numbers}."
            else:
                line += (f" With {networks} networks per width this measure cannot tell {sizes[0]} from "
                         f"{sizes[1]}: {numbers}.")
        lines.append(line)
    return "\n".join(lines)


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

    learned, losses = {}, {}
    x_model, y_model = x_train.to(device=device, dtype=dtype), y_train.to(device=device, dtype=dtype)
    for width in progress_bar(config.widths, desc=f"{NAME}: widths", enabled=progress):
        nets = [arch_of[width].build(2, seed=1000 * seed + i, dtype=dtype, device=device)
                for i in range(config.initializations)]
        functions, costs = train_together(nets, x_model, y_model, steps=config.steps,
                                          learning_rate=config.learning_rate,
                                          x_test=x_test.to(device=device, dtype=dtype))
        learned[width], losses[width] = functions.detach().cpu().double(), costs.detach().cpu().double()
        del nets

    arrays = {"gamma": gamma, "gamma_train": gamma_train, "y_train": y_train, "limit_mean": mean_t,
              "limit_std": std_t, "limit_p10": mean_t - Z90 * std_t, "limit_p90": mean_t + Z90 * std_t,
              "limit_mean_inf": mean[1], "limit_std_inf": std[1]}
    per_width = {}
    for width in config.widths:
        arrays[f"learned_n{width}"] = learned[width]
        per_width[str(width)] = {**band_statistics(learned[width], mean_t, std_t),
                                 "final_loss": float(losses[width].mean())}
    comparison = compare_widths(per_width)
    seconds = clock.seconds
    metrics = {"experiment": NAME, "settings": config_settings(config), "seed": seed, "device": str(device),
               "limit_t_vs_inf": float((mean_t - mean[1]).abs().max() + (std_t - std[1]).abs().max()),
               "limit_max_std": float(std_t.max()),
               "per_width": per_width, "comparison": comparison, "seconds": seconds}

    headline = "; ".join(f"n={w}: {m['fraction_inside_band']:.0%} ± {m['fraction_inside_band_se']:.0%} inside the "
                         "10–90% band" for w, m in per_width.items()) + " (0.8 expected)"
    if comparison:
        headline += f"; n={max(config.widths)} {comparison['fraction_inside_band']['verdict']}"
    sections = [("Metrics", _metrics_table(per_width))]
    sections.append(("The widths against the limit",
                     comparison_text(per_width, comparison, config.initializations)))
    sections.append(("What to look for", _LOOK_FOR))
    return output.finish(TITLE, _plot(config, arrays), metrics, arrays, summary=_summary(config),
                         settings=config_settings(config), sections=sections, headline=headline)


_LOOK_FOR = ("Every learned function passes through the 4 training points. Between them, draws from the limiting "
             "Gaussian fall inside the shaded 10–90 % band 80 % of the time and have mean z² = 1; the section "
             "above says, from these numbers and their standard errors, how far each width's networks are from "
             "that and whether the wider ones are closer. In the figure the coloured dashed lines are the 10th and "
             f"90th percentiles over all the networks of a width (only the first {DRAWN} are drawn).")


def _summary(config: Config) -> str:
    angles = ", ".join(f"{a:g}" for a in config.train_angles)
    return (f"Functions learned by {config.initializations} random initialisations per width of depth-"
            f"{config.hidden_layers + 1} ReLU networks (β = {config.b_std}) of widths "
            f"{', '.join(str(w) for w in config.widths)} after {config.steps} steps of gradient descent "
            f"(η = {config.learning_rate}) on 4 points of the unit circle (γ = {angles}, y = x₁x₂), against the "
            "t → ∞ limiting Gaussian computed exactly from the infinite-width NNGP and NTK "
            "(`nk.ensemble_prediction`).")


def _metrics_table(per_width: dict) -> str:
    rows = [[w, f"{m['fraction_inside_band']:.3f} ± {m['fraction_inside_band_se']:.3f}",
             f"{m['mean_squared_z']:.3f} ± {m['mean_squared_z_se']:.3f}", m["max_mean_error"], m["final_loss"]]
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
        color = colors.get(width, "tab:blue")
        functions = arrays[f"learned_n{width}"]
        for i, f in enumerate(functions[:DRAWN]):
            ax.plot(g, f.numpy(), color=color, lw=0.9, alpha=0.75,
                    label=f"n = {width:,}, t = {config.steps}: first {min(DRAWN, len(functions))}" if i == 0 else None)
        low, high = torch.quantile(functions, torch.tensor([0.1, 0.9], dtype=functions.dtype), dim=0)
        ax.plot(g, low.numpy(), color=color, lw=1.6, ls=(0, (4, 2)),
                label=f"all {len(functions)} networks: 10th / 90th percentile")
        ax.plot(g, high.numpy(), color=color, lw=1.6, ls=(0, (4, 2)))
        ax.scatter(arrays["gamma_train"].numpy(), arrays["y_train"].numpy(), color="black", marker="o", s=30,
                   zorder=5, label="training points")
        ax.set_title(f"width n = {width:,} ({len(functions)} initialisations, {min(DRAWN, len(functions))} drawn)")
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
