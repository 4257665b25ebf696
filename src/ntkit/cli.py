"""The ``ntkit`` command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from .data import circle  # noqa: E402  (light: no optional dependency)
from .layers import mlp


def _demo(args: argparse.Namespace) -> int:
    """Print the limiting NTK of Jacot et al.'s Fig. 1 network on points of the unit circle."""
    arch = mlp(hidden_layers=3, width=500, activation="relu", w_std=1.0, b_std=0.1)
    x = circle(args.points, dtype=torch.float64)
    k = arch.kernel(x)
    gammas = torch.linspace(0, 2 * math.pi, args.points + 1, dtype=torch.float64)[:-1]
    torch.set_printoptions(precision=4, linewidth=160)
    print(f"Architecture: {arch}")
    print("Limiting NTK Θ(x_i, x_j), x_i = (cos γ_i, sin γ_i), γ_i = " +
          ", ".join(f"{g:.3f}" for g in gammas.tolist()))
    print(k.ntk)
    print("Limiting NNGP Σ(x_i, x_j):")
    print(k.nngp)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    """Run one experiment (or all), writing figures, metrics and reports under --out."""
    from .experiments import EXPERIMENTS, experiment
    from .experiments.common import resolve_device

    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"ntkit reproduce: error: {err}", file=sys.stderr)
        return 2
    print(f"Reproducing {', '.join(names)} ({size} settings, seed {args.seed}, device {device}) into {args.out}/")
    results = []
    for name in names:
        try:
            result = experiment(name).run(args.out, size=size, seed=args.seed, device=device,
                                          progress=not args.no_progress)
        except (ValueError, TypeError, MemoryError, OSError, ImportError, FloatingPointError) as err:
            print(f"ntkit reproduce {name}: error: {err}", file=sys.stderr)
            return 1
        results.append(result)
        print(f"{name}: {result.headline}\n    {result.seconds:.1f} s; figure {result.figure}, report {result.report}")
    if len(results) > 1:
        index = _write_index(args.out, results, size)
        print(f"All done in {sum(r.seconds for r in results):.1f} s; index: {index}")
    return 0


def _write_index(out: str, results, size: str) -> Path:
    """<out>/README.md linking every experiment's report and figure."""
    lines = [f"# ntkit reproduce all ({size} settings)", "",
             "| experiment | result | run time | report |", "|---|---|---|---|"]
    for r in results:
        headline = r.headline.replace("|", "\\|")  # a literal | would end the table cell
        lines.append(f"| {r.name} | {headline} | {r.seconds:.1f} s | [{r.name}/report.md]({r.name}/report.md) |")
    lines.append("")
    for r in results:
        lines += [f"## {r.name}", "", f"![{r.name}]({r.name}/{r.figure.name})", ""]
    path = Path(out) / "README.md"
    path.write_text("\n".join(lines))
    return path


def _integer_at_least(minimum: int, name: str, kind: str):
    """An argparse type: an int >= ``minimum``, refused with "<name> must be a <kind> integer"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind} integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind} integer; got {value}")
        return value

    return parse


_seed = _integer_at_least(0, "seed", "non-negative")
_threads = _integer_at_least(1, "threads", "positive")


def main(argv: list[str] | None = None) -> int:
    from .experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="ntkit", description="The Neural Tangent Kernel toolkit for PyTorch.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ntkit {__version__} (torch {torch.__version__})")
    parser.add_argument("--threads", type=_threads, default=None,
                        help="torch intra-op threads for this run (default: torch's; ntkit still runs small work on "
                             "one thread, see ntkit._threads)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print the limiting NTK of Jacot et al. 2018 Fig. 1's network")
    demo.add_argument("--points", type=int, default=8, help="number of points on the unit circle (default 8)")
    demo.set_defaults(run=_demo)

    reproduce = sub.add_parser(
        "reproduce", help="reproduce the papers' experiments: figures (PNG), metrics (JSON), reports (markdown)",
        description="Reproduce Jacot et al. 2018 Figs. 1-3 and Lee et al. 2019's linearisation result. Without "
                    "--quick the papers' settings are used (tens of minutes per experiment on a laptop CPU; see "
                    "each experiment's docstring in ntkit.experiments); --quick shrinks widths and steps so that "
                    "'all' takes a few minutes.")
    reproduce.add_argument("experiment", choices=[*EXPERIMENTS, "all"], help="which experiment to run")
    reproduce.add_argument("--quick", action="store_true", help="smaller widths and fewer steps (minutes, not hours)")
    reproduce.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds: for the tests
    reproduce.add_argument("--out", default="out", help="output folder (default: out)")
    reproduce.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    reproduce.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    reproduce.add_argument("--no-progress", action="store_true", help="no progress bars")
    reproduce.set_defaults(run=_reproduce)
    args = parser.parse_args(argv)
    if getattr(args, "quick", False) and getattr(args, "tiny", False):
        parser.error("--quick and --tiny are alternatives; pass one")
    if args.threads is None:
        return args.run(args)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    finally:  # main() is also called in-process (tests, notebooks): leave the caller's setting as it was
        torch.set_num_threads(previous)


if __name__ == "__main__":
    sys.exit(main())
