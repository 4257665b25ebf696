"""What the experiments share: JSON metrics without NaN, markdown tables, devices, memory refusals, registry."""

import math

import numpy as np
import pytest
import torch

from ntkit.experiments import EXPERIMENTS, experiment, jacot_fig1
from ntkit.experiments.common import (ExperimentOutput, check_size, markdown_table, mlp_sizes, resolve_device,
                                      to_jsonable)


def test_to_jsonable_converts_tensors_and_refuses_non_finite_numbers():
    plain = to_jsonable({"a": torch.tensor([1.0, 2.0]), "b": np.float32(0.5), "c": (np.int64(3), "x", None),
                         "d": torch.float64})
    assert plain == {"a": [1.0, 2.0], "b": 0.5, "c": [3, "x", None], "d": "torch.float64"}
    with pytest.raises(ValueError, match=r"metrics\.per_width\.loss is nan"):
        to_jsonable({"per_width": {"loss": math.nan}})
    with pytest.raises(ValueError, match="non-finite"):
        to_jsonable([torch.tensor(math.inf)])
    with pytest.raises(TypeError, match="cannot be written to JSON"):
        to_jsonable({"f": object()})


def test_metrics_with_nan_are_not_written(tmp_path):
    output = ExperimentOutput(tmp_path, "broken")
    with pytest.raises(ValueError, match="non-finite"):
        output.save_metrics({"loss": float("nan")})
    assert not (tmp_path / "broken" / "metrics.json").exists()


def test_markdown_table_escapes_pipes_and_rounds_floats():
    table = markdown_table(["n", "max |error|"], [[8, 0.123456789], [16, "|x|"]])
    assert table.splitlines() == ["| n | max \\|error\\| |", "|---|---|", "| 8 | 0.1235 |", "| 16 | \\|x\\| |"]


def test_devices_and_sizes_are_checked():
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must name a torch device"):
        resolve_device("tpu-ish")
    with pytest.raises(ValueError, match="size must be one of"):
        check_size("huge")


def test_mlp_sizes_counts_parameters_of_the_built_network():
    import ntkit as nk

    net = nk.mlp(3, 17, b_std=0.1).build(5, seed=0)
    params, activations = mlp_sizes(5, 3, 17, 1, points=4)
    assert params == sum(p.numel() for p in net.parameters())
    assert activations == 2 * 4 * 17 * 3


def test_a_network_too_big_for_memory_is_refused_with_an_estimate(tmp_path):
    huge = jacot_fig1.Config(widths=(10 ** 6,), initializations=1, steps=1, angles=3)
    with pytest.raises(MemoryError, match=r"width-1000000 network needs about [\d.]+ GiB but only .* --quick"):
        jacot_fig1.run(tmp_path, config=huge, progress=False)


def test_every_experiment_module_has_the_common_interface():
    for name in EXPERIMENTS:
        module = experiment(name)
        assert module.NAME == name and module.TITLE
        assert set(module.CONFIGS) == {"full", "quick", "tiny"}
        assert module.run.__doc__ and "Run time, full settings" in module.__doc__
    with pytest.raises(ValueError, match="experiment must be one of"):
        experiment("jacot-fig4")


def test_running_an_experiment_leaves_pyplot_and_the_backend_alone(tmp_path):
    """Figures are built from matplotlib.figure, so a notebook's backend and pyplot state are not touched."""
    import subprocess
    import sys

    code = ("import sys, matplotlib; matplotlib.use('svg'); from ntkit.experiments import jacot_fig1; "
            f"jacot_fig1.run(r'{tmp_path}', size='tiny', progress=False); "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "jacot-fig1" / "jacot-fig1.png").stat().st_size > 10_000
