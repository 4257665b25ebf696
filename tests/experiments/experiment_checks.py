"""Checks shared by the experiment tests: what every experiment must write, and a readable figure."""

import json

import numpy as np

from ntkit.experiments.common import to_jsonable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_written(result):
    """The figure is a real PNG with labelled axes and legends; metrics.json, data.npz and report.md match."""
    directory = result.directory
    assert result.figure.parent == directory and result.figure.read_bytes()[:8] == PNG_SIGNATURE
    assert result.figure.stat().st_size > 20_000, "the figure is suspiciously small (empty axes?)"
    assert result.figure_axes, "the figure has no axes"
    for axes in result.figure_axes:
        assert axes["title"] and axes["xlabel"] and axes["ylabel"], f"unlabelled axes: {axes}"
        assert axes["legend"], f"axes without a legend: {axes}"
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics == to_jsonable(result.metrics)
    assert metrics["experiment"] == result.name and metrics["seconds"] > 0
    with np.load(directory / "data.npz") as data:
        assert set(data.files) == set(result.arrays)
        for key in data.files:
            np.testing.assert_array_equal(data[key], np.asarray(result.arrays[key]))
    report = (directory / "report.md").read_text()
    assert f"]({result.figure.name})" in report and "## Settings" in report and "## What to look for" in report
    return metrics
