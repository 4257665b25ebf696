"""Empirical NTK: ``nk.empirical_ntk`` against the torch.func tutorial's Jacobian contraction, side by side.

The competitor is the "Jacobian contraction" of PyTorch's torch.func tutorial "Neural Tangent Kernels", written
here from its description: per-sample Jacobians ``vmap(jacrev(fnet_single), (None, 0))(params, x)`` for x1 and for
x2, each flattened per parameter, then ``einsum('Naf,Mbf->NMab')`` (full) or ``einsum('Naf,Maf->NM')`` (trace)
per parameter, summed over parameters. Both run in this process on the same float32 model and inputs.

Workloads (issue 3): the MLP of width 512, 3 hidden layers, d = 64, N = 256 with O = 1 and O = 10 (full);
width 2048, N = 128; the tutorial's CNN (three 3x3 convolutions of 32 channels, ReLU after the first two, then
Linear(21632, 10)) on 64 x 3 x 32 x 32 inputs, full and trace; and N = 4,096 for the first MLP (ntkit only: the
tutorial's two Jacobians alone would need 17 GiB). With ``--large`` (the default on CUDA), issue 11's GPU goals'
sizes too: the CNN at N = 256, torchvision's ResNet-18 (written out here, eval mode, 10 classes) at N = 32 and
256 (trace), and MLPs of width 512 and 2048 at N = 1,024. ntkit is called as a user would, with x2=None; the
tutorial as written, with x1 = x2 = x (it computes both Jacobians).

Timings are medians over repeats after a warm-up on 4 points; the two sides run in alternation (ntkit, tutorial,
ntkit, ...), and the speed-up is the median of the per-round ratios, so that a shared machine whose speed drifts
during the run slows both sides alike. Peak memory is measured in a fresh process per
workload and implementation (this script with --memory-of), started with MALLOC_MMAP_THRESHOLD_=65536 so that
freed tensors go back to the system: the rise of the peak resident set (VmHWM, reset through
/proc/self/clear_refs) over one run, after the warm-up. Timings on a shared CPU are noisy.

On CUDA (``--device cuda``) both run on the GPU, timings wait for the device, and peak memory is the rise of
torch's peak allocated GPU memory over one run, in this process.

    .venv/bin/python benchmarks/empirical_ntk.py [--repeats 5] [--competitor-repeats 5] [--skip-slow]
                                                 [--large | --no-large]
                                                 [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import ntkit as nk
from ntkit._memory import available_bytes
from _timing import device_description, interleaved_times, median_time, synchronize


# ----- the competitor: the tutorial's Jacobian contraction -------------------------------------------------------

def tutorial_jacobian_contraction(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, compute: str = "full"):
    """The torch.func tutorial's empirical NTK by Jacobian contraction (re-implemented, not copied)."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def fnet_single(parameters, x):
        return functional_call(model, parameters, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    expression = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM"}[compute]
    return torch.stack([torch.einsum(expression, j1, j2) for j1, j2 in zip(jac1, jac2)]).sum(0)


# ----- workloads -------------------------------------------------------------------------------------------------

class TutorialCNN(nn.Module):
    """The CNN of the torch.func NTK tutorial."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, (3, 3))
        self.conv2 = nn.Conv2d(32, 32, (3, 3))
        self.conv3 = nn.Conv2d(32, 32, (3, 3))
        self.fc = nn.Linear(21632, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x)
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv + BatchNorm, ReLU, identity or 1x1-conv shortcut."""

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity() if stride == 1 and channels_in == channels else nn.Sequential(
            nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """torchvision's ``resnet18(num_classes=10)`` written out (torchvision is not a dependency): 7x7/2 stem, 3x3/2
    max-pool, four stages of two BasicBlocks (64, 128, 256, 512 channels), global average pool, Linear. 11.2M
    parameters; used in eval mode (BatchNorm from running statistics), as in issue 11's table."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, channels_in = [], 64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(channels_in, channels, stride), BasicBlock(channels, channels, 1)]
            channels_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def mlp(width: int, outputs: int) -> nn.Module:
    return nk.mlp(3, width, out_features=outputs, b_std=0.1).build(64, seed=0)


def workloads(skip_slow: bool, large: bool = False):
    """(name, model, inputs, output, run the tutorial too). ``large`` adds the GPU goals' sizes (issue 11: the
    tutorial CNN and ResNet-18 at N = 64-256, MLPs at N >= 1,024); they are appended, so indices stay fixed."""
    g = torch.Generator().manual_seed(0)
    x256 = torch.randn(256, 64, generator=g)
    torch.manual_seed(0)
    cnn, images = TutorialCNN(), torch.randn(64, 3, 32, 32, generator=g)
    base = [
        ("MLP w=512, N=256, O=1, full", mlp(512, 1), x256, "full", True),
        ("MLP w=512, N=256, O=10, full", mlp(512, 10), x256, "full", not skip_slow),
        ("MLP w=2048, N=128, O=1, full", mlp(2048, 1), x256[:128], "full", True),
        ("tutorial CNN, N=64, O=10, full", cnn, images, "full", True),
        ("tutorial CNN, N=64, O=10, trace", cnn, images, "trace", True),
        ("MLP w=512, N=4096, O=1, full", mlp(512, 1), torch.randn(4096, 64, generator=g), "full", False),
    ]
    if not large:
        return base
    torch.manual_seed(0)
    resnet, cifar = ResNet18(), torch.randn(256, 3, 32, 32, generator=g)
    x1024 = torch.randn(1024, 64, generator=g)
    return base + [
        ("tutorial CNN, N=256, O=10, trace", cnn, torch.randn(256, 3, 32, 32, generator=g), "trace", True),
        ("ResNet-18 (eval), N=32, O=10, trace", resnet, cifar[:32], "trace", True),
        ("ResNet-18 (eval), N=256, O=10, trace", resnet, cifar, "trace", True),
        ("MLP w=512, N=1024, O=1, full", mlp(512, 1), x1024, "full", True),
        ("MLP w=2048, N=1024, O=1, full", mlp(2048, 1), x1024, "full", True),
    ]


# ----- measurement -----------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory_mib(fn) -> float | None:
    """Rise of the peak resident set during one call, in MiB (None where /proc cannot be reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def measure_memory(index: int, implementation: str) -> float | None:
    """Peak memory of one workload and implementation, measured in a fresh child process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, __file__, "--memory-of", str(index), implementation], env=env,
                          capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _implementation(implementation: str, model, output: str):
    """The callable f(x) for "tutorial", "ntkit" (auto) or "ntkit:<method>"."""
    if implementation == "tutorial":
        return lambda x: tutorial_jacobian_contraction(model, x, x, output)
    method = implementation.partition(":")[2] or "auto"
    return lambda x: nk.empirical_ntk(model, x, output=output, method=method)


def _child_memory(index: int, implementation: str) -> None:
    name, model, x, output, _ = workloads(False, large=True)[index]
    model.eval()
    run = _implementation(implementation, model, output)
    run(x[:4])  # warm-up
    peak = peak_memory_mib(lambda: run(x))
    print("nan" if peak is None else f"{peak:.1f}")


def _memory(index: int, implementation: str, run, device: torch.device) -> float | None:
    """Peak memory of one run in MiB: RSS in a fresh process on the CPU, torch's peak allocation on CUDA."""
    if device.type != "cuda":
        return measure_memory(index, implementation)
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def tutorial_bytes(model: nn.Module, n: int, outputs: int) -> int:
    """The tutorial's two per-sample Jacobians (float32), the bulk of its memory."""
    return 2 * n * outputs * sum(p.numel() for p in model.parameters()) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ntkit per case")
    parser.add_argument("--competitor-repeats", type=int, default=5, help="timed runs of the tutorial per case")
    parser.add_argument("--skip-slow", action="store_true", help="skip the tutorial on MLP O=10 (about a minute "
                                                                    "per run and 11 GiB)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=None,
                        help="also the GPU goals' sizes: CNN N=256, ResNet-18 N=32/256, MLPs N=1,024 (default: on "
                             "CUDA only)")
    parser.add_argument("--memory-of", nargs=2, metavar=("INDEX", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        _child_memory(int(args.memory_of[0]), args.memory_of[1])
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device_description(device)}, float32")
    rows = []
    large = device.type == "cuda" if args.large is None else args.large
    for index, (name, model, x, output, run_competitor) in enumerate(workloads(args.skip_slow, large)):
        model, x = model.to(device).eval(), x.to(device)
        with torch.no_grad():
            outputs = model(x[:1]).numel()
        ours, theirs = _implementation("ntkit", model, output), _implementation("tutorial", model, output)
        ours(x[:4])  # warm-up (first-call overheads of torch.func, allocator)
        need = tutorial_bytes(model, x.shape[0], outputs)
        theirs_s = theirs_mib = rel_diff = speedup = None
        note = ""
        if run_competitor and need * 1.3 < available_bytes(device):
            theirs(x[:4])  # warm-up
            ours_s, theirs_s, speedup, ours_k, theirs_k = interleaved_times(
                lambda: ours(x), lambda: theirs(x), args.repeats, args.competitor_repeats, device)
            theirs_mib = _memory(index, "tutorial", lambda: theirs(x), device)
            rel_diff = float((ours_k - theirs_k).abs().max() / theirs_k.abs().max())
        else:
            ours_s, ours_k = median_time(lambda: ours(x), args.repeats, device)
            note = f"tutorial not run (its Jacobians alone: {need / 2 ** 30:.1f} GiB)"
        ours_mib = _memory(index, "ntkit", lambda: ours(x), device)
        rows.append((name, ours_s, theirs_s, speedup, ours_mib, theirs_mib, rel_diff, note))
        print(f"  {name}: ntkit {ours_s * 1e3:.1f} ms" + (f", tutorial {theirs_s * 1e3:.1f} ms" if theirs_s else
                                                           f"; {note}"), flush=True)

    print()
    print("| workload | ntkit (ms) | tutorial vmap(jacrev)+einsum (ms) | speed-up | ntkit peak (MiB) | "
          "tutorial peak (MiB) | max rel. difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, ours_s, theirs_s, speedup, ours_mib, theirs_mib, rel_diff, note in rows:
        speedup = f"{speedup:.1f}x" if speedup else "n/a"
        theirs_cell = f"{theirs_s * 1e3:.1f}" if theirs_s else note
        print(f"| {name} | {ours_s * 1e3:.1f} | {theirs_cell} | {speedup} | {_cell(ours_mib, '.0f')} | "
              f"{_cell(theirs_mib, '.0f')} | {_cell(rel_diff, '.1e')} |")
    general_methods(args.repeats, device)


def general_methods(repeats: int, device: torch.device) -> None:
    """ntkit's general methods (no layer structure used) on the first MLP: time and peak memory."""
    name, model, x, output, _ = workloads(False)[0]
    model, x = model.to(device).eval(), x.to(device)
    print()
    print(f"ntkit's methods on {name}:")
    print()
    print("| method | median (ms) | peak (MiB) |")
    print("|---|---:|---:|")
    for method in ("layerwise", "jacobian", "vector_products"):
        run = _implementation(f"ntkit:{method}", model, output)
        run(x[:4])
        seconds, _ = median_time(lambda: run(x), repeats, device)
        peak = _memory(0, f"ntkit:{method}", lambda: run(x), device)
        print(f"| {method} | {seconds * 1e3:.1f} | {_cell(peak, '.0f')} |", flush=True)


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
