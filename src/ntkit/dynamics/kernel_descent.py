r"""Kernel gradient descent for any differentiable cost, integrated with scipy's ``solve_ivp``.

Conventions (Jacot, Gabriel & Hongler 2018, §3): the cost is averaged over the N training points,
C(f) = (1/N) Σ_j c(f(x_j), y_j) (for MSE c = ½‖f − y‖², so C = ½ E_{p_in}‖f − y‖²), and gradient descent with
learning rate η moves the outputs along the kernel gradient

    ∂_t f(x) = −η ∇_K C|_f (x) = −(η/N) Σ_j K(x, x_j) ∂c/∂f (f(x_j), y_j).

For MSE this is the linear ODE that ``GradientFlow`` solves in closed form. Here the state integrated is
G(t) = ∫_0^t ∂c/∂f(f_s(X), y) ds (N·O numbers): then f_t(x) = f_0(x) − (η/N) K(x, X) G(t) at training and test
points alike, so test outputs cost one matrix product per time and never enlarge the ODE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .._validation import as_input_tensor
from ..spectrum import as_symmetric_kernel
from ._checks import (as_cost_targets, as_cross_kernel, as_outputs, as_times, check_learning_rate,
                      check_positive_number, finite_or_raise)

__all__ = ["kernel_gradient_descent", "KernelDescentResult", "COSTS", "resolve_cost", "mse_cost",
           "cross_entropy_cost", "logistic_cost"]


def mse_cost(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """c_j = ½‖f_j − y_j‖² per point; f and y of shape (N, O). Returns (N,)."""
    return 0.5 * (f - y).pow(2).sum(1)


def cross_entropy_cost(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """c_j = −Σ_o y_jo log softmax(f_j)_o per point; f (N, O) logits, y (N, O) class probabilities. Returns (N,)."""
    return -(y * torch.log_softmax(f, dim=1)).sum(1)


def logistic_cost(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of one logit: c_j = log(1 + e^{f_j}) − y_j f_j, y_j ∈ [0, 1]; f, y (N, 1). Returns (N,)."""
    return (torch.nn.functional.softplus(f) - y * f).sum(1)


COSTS: dict[str, Callable] = {"mse": mse_cost, "cross_entropy": cross_entropy_cost, "logistic": logistic_cost}


def resolve_cost(cost: str | Callable) -> tuple[str | None, Callable]:
    """(name, function) of a built-in cost given by name, or (None, cost) for a callable cost(f, y) -> (N,)."""
    if isinstance(cost, str):
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {sorted(COSTS)} or a callable cost(f, y) -> (N,); got {cost!r}")
        return cost, COSTS[cost]
    if callable(cost):
        return None, cost
    raise TypeError(f"cost must be a name or a callable cost(f, y) -> (N,); got {type(cost).__name__}")


@dataclass(frozen=True)
class KernelDescentResult:
    """Outputs of kernel gradient descent at the requested times.

    times: (T,) float64, in the order given. train_outputs: (T, N, O); test_outputs: (T, M, O) or None;
    costs: (T,) training cost C = (1/N) Σ_j c(f_t(x_j), y_j). The O axis is dropped when y was (N,) real targets,
    the T axis when a single time was given. n_evaluations: cost-gradient evaluations used by the solver.
    """

    times: torch.Tensor
    train_outputs: torch.Tensor
    test_outputs: torch.Tensor | None
    costs: torch.Tensor
    n_evaluations: int


def kernel_gradient_descent(kernel_train_train, y_train, cost: str | Callable, times, *, kernel_test_train=None,
                            f0_train=None, f0_test=None, learning_rate: float = 1.0, method: str = "DOP853",
                            rtol: float = 1e-10, atol: float = 1e-12) -> KernelDescentResult:
    r"""Integrate ∂_t f = −η ∇_K C from f_0 and return the outputs at the requested times.

    Conventions: C(f) = (1/N) Σ_j c(f(x_j), y_j) averaged over the N training points, so
    ∇_K C(x) = (1/N) Σ_j K(x, x_j) ∂c/∂f(f(x_j), y_j) and t counts gradient-descent steps of size η
    (for c = ½‖f − y‖²: ∂_t f(x) = −(η/N) Σ_j K(x, x_j)(f(x_j) − y_j), Jacot et al. 2018). The per-point
    gradient ∂c/∂f comes from torch.autograd; the ODE is solved by ``scipy.integrate.solve_ivp``.

    Args:
        kernel_train_train: (N, N) symmetric kernel K(X, X) (the NTK for a network's training).
        y_train: (N,) or (N, O) targets; for "cross_entropy" also (N,) integer class labels.
        cost: "mse" (½‖f − y‖²), "cross_entropy" (softmax over O >= 2 logits, y one-hot/probabilities or
            labels), "logistic" (one logit, y ∈ [0, 1]), or a callable ``cost(f, y) -> (N,)`` returning the
            per-point costs c_j for f of shape (N, O) and y as given (float64, (N, O) or (N,)); c_j may only
            depend on f_j.
        times: non-negative float or 1-D tensor of finite times, any order.
        kernel_test_train: optional (M, N) kernel K(x*, X) for outputs at M test points.
        f0_train, f0_test: outputs at t = 0 ((N,)/(N, O) and (M,)/(M, O)); None means 0.
        learning_rate: η > 0.
        method, rtol, atol: passed to ``solve_ivp`` (default: 8th-order Dormand–Prince, tight tolerances; use
            "Radau" or "LSODA" for stiff problems, i.e. very long times with ill-conditioned kernels). rtol and
            atol must be finite positive numbers (scipy would only warn about others and substitute its own).

    Returns:
        ``KernelDescentResult`` with train (and test) outputs and costs at each time, in the outputs' dtype.
    """
    kernel = as_symmetric_kernel(kernel_train_train, "kernel_train_train")
    n, device = kernel.shape[0], kernel.device
    cost_name, cost_fn = resolve_cost(cost)
    f0_user = None if f0_train is None else as_input_tensor(f0_train, "f0_train")
    targets = as_cost_targets(y_train, n, cost_name,
                              classes=None if f0_user is None else 1 if f0_user.ndim == 1 else f0_user.shape[-1])
    o, y_for_cost = targets.outputs, targets.for_cost.to(device)
    eta = check_learning_rate(learning_rate)
    # solve_ivp only warns about a non-positive tolerance (and then integrates with its own floor)
    rtol, atol = check_positive_number(rtol, "rtol"), check_positive_number(atol, "atol")
    times_t, scalar = as_times(times, "times", allow_inf=False,
                               why_finite="the ODE is integrated up to the largest time; for MSE at t = inf use "
                                          "nk.GradientFlow")
    dtype = kernel.dtype if targets.dtype is None else torch.promote_types(kernel.dtype, targets.dtype)
    k64 = kernel.to(torch.float64)
    f0 = torch.zeros(n, o, dtype=torch.float64, device=device)
    if f0_user is not None:
        f0_user = as_outputs(f0_user, n, o, "f0_train")
        f0, dtype = f0_user.to(device=device, dtype=torch.float64), torch.promote_types(dtype, f0_user.dtype)
    scale = eta / n
    evaluations = 0

    def outputs(g_state: torch.Tensor) -> torch.Tensor:
        return f0 - scale * (k64 @ g_state)

    def per_point_costs(f: torch.Tensor) -> torch.Tensor:
        costs = cost_fn(f, y_for_cost)
        if not isinstance(costs, torch.Tensor) or tuple(costs.shape) != (n,):
            shape = tuple(costs.shape) if isinstance(costs, torch.Tensor) else type(costs).__name__
            raise ValueError(f"cost must return the per-point costs c_j as a tensor of shape ({n},) (the "
                             f"library averages them over the N points); got {shape}")
        return costs

    def per_point_gradient(f: torch.Tensor) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        f = f.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(per_point_costs(f).sum(), f)
        return finite_or_raise(grad, "cost gradient", "the cost is not differentiable at the current outputs")

    def rhs(_t, state):
        g_state = torch.from_numpy(state).to(device).reshape(n, o)
        return per_point_gradient(outputs(g_state)).reshape(-1).cpu().numpy()

    order = torch.argsort(times_t)
    sorted_times = times_t[order].numpy()
    t_end = float(sorted_times[-1])
    if t_end > 0:
        solution = solve_ivp(rhs, (0.0, t_end), np.zeros(n * o), method=method, t_eval=sorted_times, rtol=rtol,
                             atol=atol)
        if solution.status != 0:
            raise RuntimeError(f"solve_ivp failed ({method}): {solution.message}. Try method='Radau' for a stiff "
                               "problem, or looser rtol/atol")
        states = torch.from_numpy(solution.y.T.copy())  # (T, N·O), sorted times
    else:
        states = torch.zeros(len(sorted_times), n * o, dtype=torch.float64)
    g_states = torch.empty_like(states)
    g_states[order] = states  # back to the caller's order
    g_states = g_states.to(device).reshape(-1, n, o).permute(1, 0, 2).reshape(n, -1)  # (N, T·O)
    t_count = times_t.numel()
    train = (f0.reshape(n, 1, o) - scale * (k64 @ g_states).reshape(n, t_count, o)).permute(1, 0, 2)
    with torch.no_grad():
        costs = torch.stack([per_point_costs(train[i]).mean() for i in range(t_count)])
    costs = finite_or_raise(costs, "costs", "the cost is not finite at these outputs")
    test = None
    if kernel_test_train is not None:
        k_test = as_cross_kernel(kernel_test_train, n, "kernel_test_train").to(device)
        m = k_test.shape[0]
        f0t = torch.zeros(m, o, dtype=torch.float64, device=device)
        if f0_test is not None:
            f0_test_user = as_outputs(f0_test, m, o, "f0_test")
            f0t = f0_test_user.to(device=device, dtype=torch.float64)
            dtype = torch.promote_types(dtype, f0_test_user.dtype)
        dtype = torch.promote_types(dtype, k_test.dtype)
        moved = (k_test.to(torch.float64) @ g_states).reshape(m, t_count, o).permute(1, 0, 2)
        test = f0t[None] - scale * moved

    def finish(out):
        out = finite_or_raise(out, "outputs", "the integration diverged")
        out = out[..., 0] if targets.squeeze else out
        return (out[0] if scalar else out).to(dtype)

    return KernelDescentResult(times=times_t[0] if scalar else times_t, train_outputs=finish(train),
                               test_outputs=None if test is None else finish(test),
                               costs=(costs[0] if scalar else costs).to(dtype), n_evaluations=evaluations)
