"""The README's Python examples run as written (in order, in one namespace, as a reader would paste them)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readme_examples_run_and_mean_what_they_say():
    namespace: dict = {}
    with torch.random.fork_rng():  # the examples draw inputs with torch.randn: seed them, leave the suite's RNG alone
        torch.manual_seed(0)
        for block in BLOCKS:
            exec(compile(block, str(README), "exec"), namespace)
    ns = namespace
    assert ns["k"].ntk.shape == (100, 100) and ns["out"].shape == (100, 1)
    assert ns["theta"].shape == (64, 64, 1, 1) and ns["trace"].shape == (64, 64)
    assert ns["per_output"].shape == (16, 16, 10)
    assert -0.8 < ns["slope"] < -0.3, ns["slope"]          # "≈ −0.5"
    assert ns["f_test"].shape == (4, 50) and ns["ensemble"].mean.shape == (50,)
    assert torch.allclose(ns["f_test"][-1], ns["ensemble"].mean, rtol=1e-6, atol=1e-8)
    assert bool(ns["report"]) and ns["values"].shape == (10,)
    assert ns["losses"][0] > ns["losses"][-1]
    assert 0.9 < ns["accuracy"] <= 1.0 and ns["search"].best_params_["ntkclassifier__hidden_layers"] in (1, 3)
    assert ns["k_images"].ntk.shape == (6, 6) and ns["resnet_ntk"].shape == (6, 6)
    assert ns["net"](ns["images"]).shape == (6, 10) and ns["myrtle_ntk"].shape == (2, 2)
    assert 0.8 < ns["image_accuracy"] <= 1.0  # 200 training digits; chance is 0.1
    assert ns["solve"].converged and ns["solve"].relative_residual < 1e-8
    assert ns["model"].report.converged and ns["early"].shape == (2, 3000) and ns["diag"].shape == (3000,)
    torch.testing.assert_close(ns["alpha_dask"], ns["alpha"], rtol=1e-6, atol=1e-6 * float(ns["alpha"].abs().max()))
    gp = ns["gp"]  # the optimiser started at gp.kernel's hyperparameters and must have improved on them
    assert gp.log_marginal_likelihood_value_ > gp.log_marginal_likelihood(gp.kernel.theta) + 1.0
