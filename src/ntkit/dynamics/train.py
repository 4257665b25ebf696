r"""Full-batch gradient descent on a real network, recording its outputs (and its NTK) along the way.

Jacot's cost (Jacot, Gabriel & Hongler 2018, §3): C(θ) = (1/N) Σ_j c(f(x_j; θ), y_j) over the N training points,
for MSE c = ½‖f − y‖², i.e. C = ½ E_{p_in}‖f − y‖². One step is θ ← θ − η ∇_θ C, and to first order in η the
outputs move by −(η/N) Σ_j Θ_θ(x, x_j) ∂c/∂f(x_j): step k is time t = k of
∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j), the ODE that ``GradientFlow`` solves. For a wide network Θ_θ
stays close to its initial value (Jacot et al. 2018, Thm. 2), and the recorded relative change
‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F measures how close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .._threads import intra_op_threads
from .._validation import check_positive_int
from ._checks import as_cost_targets, as_model_input, check_learning_rate, check_module
from .kernel_descent import resolve_cost

__all__ = ["train", "TrainingResult"]


@dataclass(frozen=True)
class TrainingResult:
    """What ``nk.train`` recorded, one row per recorded step (R rows, steps 0 and the last always included).

    steps: (R,) int64 step numbers; times: (R,) float64 gradient-flow times, t = step (η is in the ODE's scale).
    train_outputs: (R, N, O) outputs on x (O axis dropped when y was (N,) and the model has one output);
    test_outputs: (R, M, O) on x_test, or None; losses: (R,) training cost C.
    ntks: (R, ...) empirical NTKs from ``nk.empirical_ntk(model, x, output=ntk_output)`` when record_ntk, else
    None; ntk_change: (R,) ‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F, or None.
    """

    steps: torch.Tensor
    times: torch.Tensor
    train_outputs: torch.Tensor
    test_outputs: torch.Tensor | None
    losses: torch.Tensor
    ntks: torch.Tensor | None = None
    ntk_change: torch.Tensor | None = None


def _record_steps(steps: int, record_every: int | None) -> list[int]:
    every = max(1, steps // 100) if record_every is None else check_positive_int(record_every, "record_every")
    recorded = list(range(0, steps + 1, every))
    return recorded if recorded[-1] == steps else recorded + [steps]


def train(model: nn.Module, x, y, *, steps: int, learning_rate: float, cost: str | Callable = "mse",
          record_every: int | None = None, x_test=None, record_ntk: bool = False, ntk_output: str = "trace",
          progress: bool = True) -> TrainingResult:
    r"""Train ``model`` in place by full-batch gradient descent on Jacot's cost, recording outputs as it goes.

    Conventions: C(θ) = (1/N) Σ_j c(f(x_j; θ), y_j), averaged over the N training points (MSE: c = ½‖f − y‖²,
    so C = ½ E_{p_in}‖f − y‖²); each step is θ ← θ − η ∇_θ C. In function space this is the Euler scheme of
    ∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j) with step 1, so recorded times are t = step and compare
    directly with ``GradientFlow(..., learning_rate=η)``; it is stable for η < 2N/λ_max(Θ)
    (``GradientFlow.max_learning_rate``).

    Args:
        model: an ``nn.Module`` mapping (N, ...) inputs to (N, O) (or (N,)) outputs; its parameters with
            requires_grad are trained in place.
        x: (N, ...) training inputs, same dtype and device as the model; y: (N,) or (N, O) targets (integer
            labels (N,) for cost="cross_entropy").
        steps: number of gradient-descent steps (>= 1).
        learning_rate: η > 0.
        cost: "mse", "cross_entropy", "logistic", or a callable ``cost(f, y) -> (N,)`` of per-point costs (see
            ``kernel_gradient_descent``).
        record_every: record every this many steps (default: about 100 records); step 0 and the last step are
            always recorded.
        x_test: optional (M, ...) inputs whose outputs are recorded too.
        record_ntk: also record the empirical NTK on x (``nk.empirical_ntk(model, x, output=ntk_output)``) and
            its relative change ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F.
        ntk_output: "trace" ((N, N), summed over outputs), "full" ((N, N, O, O)) or "diagonal".
        progress: show a tqdm progress bar.

    Returns:
        ``TrainingResult``. Raises FloatingPointError if the cost becomes non-finite (η too large).
    """
    check_module(model)
    steps = check_positive_int(steps, "steps")
    eta = check_learning_rate(learning_rate)
    cost_name, cost_fn = resolve_cost(cost)
    x = as_model_input(x, "x", model)
    x_test = None if x_test is None else as_model_input(x_test, "x_test", model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    n = x.shape[0]

    with torch.no_grad():
        out0 = model(x)
    if out0.ndim not in (1, 2) or out0.shape[0] != n:
        raise ValueError(f"model(x) must return (N,) or (N, O) outputs with N = {n}; got {tuple(out0.shape)}")
    model_outputs = 1 if out0.ndim == 1 else out0.shape[1]
    targets = as_cost_targets(y, n, cost_name, classes=model_outputs, name="y", against=f"the {n} points of x")
    if targets.outputs != model_outputs:
        raise ValueError(f"y has {targets.outputs} output column(s) but model(x) returns {model_outputs}")
    y_for_cost, squeeze = targets.for_cost.to(device=x.device, dtype=out0.dtype), targets.squeeze

    def forward(inputs):
        out = model(inputs)
        return out[:, None] if out.ndim == 1 else out

    def empirical_ntk():
        import ntkit  # the empirical-NTK engine lives in ntkit.empirical

        return ntkit.empirical_ntk(model, x, output=ntk_output).detach()

    recorded = set(_record_steps(steps, record_every))
    rows: dict[str, list] = {"steps": [], "train": [], "test": [], "loss": [], "ntk": []}

    def record(step: int, train_out: torch.Tensor, loss: torch.Tensor) -> None:
        rows["steps"].append(step)
        rows["train"].append(train_out.detach().clone())
        rows["loss"].append(loss.detach())
        if x_test is not None:
            with torch.no_grad():
                rows["test"].append(forward(x_test))
        if record_ntk:
            rows["ntk"].append(empirical_ntk())
            if step == 0 and not bool(rows["ntk"][0].any()):
                raise ValueError("the model's empirical NTK at initialisation is zero (the outputs' gradients "
                                 "with respect to the trainable parameters vanish on x), so its relative change is "
                                 "undefined; pass record_ntk=False")

    # One step is ~3 passes over the parameters per point: small models train on one thread (ntkit._threads).
    with intra_op_threads(3 * n * sum(p.numel() for p in params), x.device):
        for step in tqdm(range(steps + 1), desc="nk.train", disable=None if progress else True, leave=False):
            outputs = forward(x)
            costs = cost_fn(outputs, y_for_cost)
            if not isinstance(costs, torch.Tensor) or tuple(costs.shape) != (n,):
                raise ValueError(f"cost must return the per-point costs c_j as a tensor of shape ({n},)")
            loss = costs.mean()
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"the cost became {float(loss.detach())} at step {step}: the learning rate "
                                         f"{eta:g} is too large (gradient descent is stable for η < 2N/λ_max(Θ); "
                                         f"see nk.GradientFlow(...).max_learning_rate())")
            if step in recorded:
                record(step, outputs, loss)
            if step == steps:
                break
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(eta * g)

    def stack(values):
        out = torch.stack(values)
        return out[..., 0] if squeeze else out

    ntks = ntk_change = None
    if record_ntk:
        ntks = torch.stack(rows["ntk"])
        ntk_change = torch.linalg.vector_norm((ntks - ntks[0]).reshape(len(ntks), -1), dim=1)
        ntk_change = ntk_change / torch.linalg.vector_norm(ntks[0])
    step_tensor = torch.tensor(rows["steps"], dtype=torch.int64)
    return TrainingResult(steps=step_tensor, times=step_tensor.to(torch.float64), train_outputs=stack(rows["train"]),
                          test_outputs=stack(rows["test"]) if x_test is not None else None,
                          losses=torch.stack(rows["loss"]), ntks=ntks, ntk_change=ntk_change)
