"""Independent references for the dynamics tests: a fine RK4 integrator and a torch.func empirical NTK.

Neither uses ntkit.dynamics, so agreement is evidence, not a tautology.
"""

import torch
from torch.func import functional_call, jacrev, vmap


def rk4(rhs, state, times, step):
    """Classical RK4 of step ``step`` for ds/dt = rhs(s) from s(0) = state: [s(t) for t in times] (ascending).

    The local error is O(step⁵) per step.
    """
    out, t_now = [], 0.0
    for t_target in times:
        while t_now < t_target - 1e-12:
            h = min(step, t_target - t_now)
            k1 = rhs(state)
            k2 = rhs(state + 0.5 * h * k1)
            k3 = rhs(state + 0.5 * h * k2)
            k4 = rhs(state + h * k3)
            state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t_now += h
        out.append(state)
    return out


def rk4_function_space(kernel_rows, kernel_train, y, f0_rows, f0_train, learning_rate, times, step):
    """Integrate ∂_t f = −(η/N) K(·, X)(f(X) − y) with ``rk4``, on training and extra rows.

    kernel_rows: (R, N) kernel between the rows to report and the training points; kernel_train: (N, N).
    Returns the outputs on the rows at each time, (T, R, O).
    """
    n = kernel_train.shape[0]
    scale = learning_rate / n
    stacked = torch.cat([kernel_train, kernel_rows])  # the state holds training and reported outputs together

    def rhs(s):
        return -scale * stacked @ (s[:n] - y)

    states = rk4(rhs, torch.cat([f0_train, f0_rows]), times.tolist(), step)
    return torch.stack([state[n:] for state in states])


def jacobian_matrix(model, x):
    """(N, O, P) Jacobian of the model's outputs with respect to all its trainable parameters."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def single(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(-1)

    jac = vmap(jacrev(single), (None, 0))(params, x)
    return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], 2)


def empirical_ntk_or_reference():
    """nk.empirical_ntk once ntkit.empirical exists in the checkout, else ``reference_ntk`` (same signature)."""
    try:
        from ntkit.empirical import empirical_ntk
    except ImportError:
        return reference_ntk
    return empirical_ntk


def reference_ntk(model, x1, x2=None, output="trace"):
    """Empirical NTK by explicit Jacobian contraction.

    output="trace": (N1, N2), summed over the outputs; output="full": (N1, N2, O, O).
    """
    j1 = jacobian_matrix(model, x1)
    j2 = j1 if x2 is None else jacobian_matrix(model, x2)
    full = torch.einsum("aop,bqp->aboq", j1, j2)
    if output == "full":
        return full
    return torch.diagonal(full, dim1=2, dim2=3).sum(-1)
