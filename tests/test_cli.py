"""The `ntkit` command: `demo` and `reproduce` (one real tiny experiment; `all` and errors with stand-ins)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ntkit.experiments as experiments
from ntkit import cli
from ntkit.experiments.common import ExperimentResult


def test_reproduce_one_experiment_writes_its_outputs(tmp_path, capsys):
    code = cli.main(["reproduce", "jacot-fig1", "--tiny", "--out", str(tmp_path), "--seed", "3", "--no-progress"])
    assert code == 0
    folder = tmp_path / "jacot-fig1"
    assert {p.name for p in folder.iterdir()} == {"jacot-fig1.png", "metrics.json", "data.npz", "report.md"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["settings"]["widths"] == [32, 1024]
    out = capsys.readouterr().out
    assert "jacot-fig1: spread around the limit" in out and "tiny settings, seed 3" in out
    assert not (tmp_path / "README.md").exists()  # the index is for `all`


def _stand_in(calls, fail=None):
    """A fake experiment module: run() records its arguments and writes a tiny PNG (or raises ``fail``)."""

    def module(name):
        def run(out, *, size, seed, device, progress):
            if fail is not None:
                raise fail
            calls.append((name, size, seed, str(device), progress))
            folder = Path(out) / name
            folder.mkdir(parents=True, exist_ok=True)
            figure = folder / f"{name}.png"
            figure.write_bytes(b"\x89PNG\r\n\x1a\n")
            return ExperimentResult(name, {}, {}, folder, figure, folder / "report.md", 0.5, f"{name} ok")

        return SimpleNamespace(run=run)

    return module


def test_reproduce_all_runs_every_experiment_in_order_and_writes_an_index(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(experiments, "experiment", _stand_in(calls))
    assert cli.main(["reproduce", "all", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [(name, "quick", 0, "cpu", True) for name in experiments.EXPERIMENTS]
    assert list(experiments.EXPERIMENTS) == ["jacot-fig1", "jacot-fig2", "jacot-fig3", "lee-linearization"]
    index = (tmp_path / "README.md").read_text()
    for name in experiments.EXPERIMENTS:
        assert f"]({name}/report.md)" in index and f"![{name}]({name}/{name}.png)" in index
    assert "All done" in capsys.readouterr().out


def test_without_quick_the_papers_settings_are_requested(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiments, "experiment", _stand_in(calls))
    assert cli.main(["reproduce", "jacot-fig2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert calls == [("jacot-fig2", "full", 0, "cpu", False)]


def test_an_experiment_error_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "experiment", _stand_in([], fail=MemoryError("needs about 3.00 GiB")))
    assert cli.main(["reproduce", "jacot-fig3", "--quick", "--out", str(tmp_path)]) == 1
    assert "ntkit reproduce jacot-fig3: error: needs about 3.00 GiB" in capsys.readouterr().err


def test_unavailable_or_unknown_devices_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["reproduce", "jacot-fig1", "--tiny", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert cli.main(["reproduce", "jacot-fig1", "--tiny", "--device", "gpu9", "--out", str(tmp_path)]) == 2
    assert "device must name a torch device" in capsys.readouterr().err
    assert not (tmp_path / "jacot-fig1").exists()


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "jacot-fig4"], "invalid choice"),
    (["reproduce", "jacot-fig1", "--quick", "--tiny"], "alternatives"),
    (["reproduce", "jacot-fig1", "--seed", "-1"], "non-negative integer"),
    (["reproduce", "jacot-fig1", "--seed", "x"], "non-negative integer"),
])
def test_bad_arguments_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_still_prints_the_fig1_limit(capsys):
    assert cli.main(["demo", "--points", "4"]) == 0
    out = capsys.readouterr().out
    assert "Limiting NTK" in out and "Limiting NNGP" in out


def test_version_option(capsys):
    import ntkit

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ntkit {ntkit.__version__} (torch {torch.__version__})"


def test_logs_are_plain_text_when_output_is_not_a_terminal(tmp_path, capfd):
    """With progress bars on (the default) but output captured (not a terminal, as in `make demo > log`): tqdm's
    terminal rule keeps the bars out, nested nk.train loops add none, and the log stays a short report."""
    assert cli.main(["reproduce", "jacot-fig1", "--tiny", "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    log = out + err
    assert "\r" not in log and "\x1b[" not in log and "nk.train" not in log
    assert len(log.encode()) < 2000, log
