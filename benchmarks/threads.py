"""Small work next to a busy process: ntkit's thread choice against torch's default thread pool, same process.

Workloads (issue 11, point 5): a 350-point ReLU-MLP kernel (``arch.kernel``), a 2,000-point one, and 100 steps of
``nk.train`` on a width-64 MLP with 256 points. Each is timed (median of repeats, the two policies alternating call
by call) with ntkit's choice (one intra-op thread below ``ntkit._threads.SMALL_WORK``, the user's count above,
``ThreadTuner`` on tile loops) and with every call on torch's default count (``SMALL_WORK = 0`` and no
``ThreadTuner``), on idle cores and next to competitors:

* ``spin-1``: one process spinning on one core (a compiler, a browser tab, another user's script);
* ``spin-all``: one spinning process per core (a saturated CI runner);
* ``spin-2x``: two spinning processes per core (an oversubscribed machine: several jobs of their own);
* ``kernel-job``: another ntkit kernel job with torch's default threads (small parallel ops of its own).

    .venv/bin/python benchmarks/threads.py [--repeats 5] [--states idle spin-1 spin-all spin-2x kernel-job]
                                           [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import ntkit as nk
from ntkit import _threads
from _timing import device_description, median_time

SPIN = "while True: pass"
BUSY = """
import torch, ntkit as nk
torch.set_num_threads({threads})
images, arch = torch.randn(48, 1, 8, 8), nk.cnn(2, readout="gap")
while True:  # another process of small parallel ops on every core: a second kernel job, a test suite
    arch.kernel(images)
"""


def workloads():
    arch = nk.mlp(3, 512, b_std=0.1)
    small, medium = torch.randn(350, 10), torch.randn(2000, 10)
    x, y = torch.randn(256, 10), torch.randn(256, 1)

    def train():
        net = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        nk.train(net, x, y, steps=100, learning_rate=0.1, progress=False, record_every=100)

    return {"kernel N=350": lambda: arch.kernel(small), "kernel N=2000": lambda: arch.kernel(medium, fused=False),
            "nk.train 100 steps": train}


def torch_default_threads(fn):
    """``fn`` run with every call on torch's default thread count: ``SMALL_WORK = 0`` and no ``ThreadTuner``."""
    def run():
        saved, _threads.SMALL_WORK = _threads.SMALL_WORK, 0
        tuner_init = _threads.ThreadTuner.__init__

        def untuned(self, *args, **kwargs):
            tuner_init(self, *args, **kwargs)
            self.active = False

        _threads.ThreadTuner.__init__ = untuned
        try:
            return fn()
        finally:
            _threads.SMALL_WORK = saved
            _threads.ThreadTuner.__init__ = tuner_init
    return run


def measure(repeats: int) -> dict:
    """Both policies alternately, call by call (one warm-up each), so that neither gains from running second
    (a warmer allocator, a machine that settled)."""
    out = {}
    for name, fn in workloads().items():
        default_fn = torch_default_threads(fn)
        fn(), default_fn()
        chosen, default = [], []
        for _ in range(repeats):
            chosen.append(median_time(fn, 1)[0])
            default.append(median_time(default_fn, 1)[0])
        out[name] = dict(ntkit_s=statistics.median(chosen), torch_default_threads_s=statistics.median(default))
    return out


def competitors(state: str, cores: int) -> list[str]:
    """The Python programs to run beside the measurement for ``state``."""
    return {"idle": [], "spin-1": [SPIN], "spin-all": [SPIN] * cores, "spin-2x": [SPIN] * (2 * cores),
            "kernel-job": [BUSY.format(threads=cores)]}[state]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--states", nargs="+", default=["idle", "spin-1", "spin-all", "spin-2x", "kernel-job"],
                        choices=["idle", "spin-1", "spin-all", "spin-2x", "kernel-job"])
    parser.add_argument("--device", default="cpu", choices=["cpu"],
                        help="cpu only: the intra-op thread policy governs CPU work (GPU work has no thread pool "
                             "to collapse)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(json.dumps(dict(torch=torch.__version__, device=device_description("cpu"), cores=cores,
                          threads=torch.get_num_threads())))
    results = {}
    for state in args.states:
        busy = [subprocess.Popen([sys.executable, "-c", program]) for program in competitors(state, cores)]
        try:
            if busy:
                time.sleep(2.0)  # let them occupy the cores
            results[state] = measure(args.repeats)
        finally:
            for process in busy:
                process.kill()
                process.wait()
        print(json.dumps({state: results[state]}), flush=True)
    print("\n| workload | cores | ntkit | torch's default threads | ratio |\n|---|---|---|---|---|")
    for state, rows in results.items():
        for name, r in rows.items():
            print(f"| {name} | {state} | {r['ntkit_s'] * 1e3:.0f} ms | {r['torch_default_threads_s'] * 1e3:.0f} ms | "
                  f"{r['torch_default_threads_s'] / r['ntkit_s']:.1f}x |")


if __name__ == "__main__":
    main()
