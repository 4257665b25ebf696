r"""Random-features approximation of the NNGP and the NTK (Jacot, Gabriel & Hongler 2018, §4).

Given P random functions f^(1..P) with E[f^(p)(x) f^(p)(x')] = K(x, x'), the linear model

    F^lin(θ)(x) = P^{-1/2} Σ_p θ_p f^(p)(x)

has the NTK K̃(x, x') = ∂F/∂θ · ∂F/∂θ = (1/P) Σ_p f^(p)(x) f^(p)(x'), which tends to K as P → ∞ (law of large
numbers: ‖K̃ − K‖ ~ P^{-1/2}). Gradient descent on C = ½ E_{p_in}‖F − y‖² over N training points with learning rate
η therefore moves its outputs exactly along ∂_t f(x) = −(η/N) Σ_j K̃(x, x_j)(f(x_j) − y_j): kernel gradient descent
with K̃, approaching the one with K.

Two sources of features:
  * NNGP (``nngp_features``): the outputs of P independent random networks (any depth), or the P units of the last
    hidden layer of one network scaled by the readout's w_std (plus b_std times a N(0, 1) constant per unit).
  * NTK (``ntk_features``): the Jacobian of one finite network, f^(p) = √P ∂f/∂θ_p with P its number of
    parameters, so that K̃ = J Jᵀ is its empirical NTK, → Θ as the widths grow.
Train F^lin with ``RandomFeatureModel`` and ``nk.train`` (inputs are the feature matrices).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from tqdm.auto import tqdm

from .._memory import check_fits
from .._validation import as_input_tensor, check_positive_int
from ..empirical.checks import check_model
from ..empirical.jacobian import jacobian_features
from ..empirical.model_function import ModelFunction
from ..layers.base import Serial
from ..layers.dense import Dense
from ._checks import check_architecture

__all__ = ["nngp_features", "ntk_features", "random_features_kernel", "RandomFeatureModel", "FEATURE_SOURCES"]

FEATURE_SOURCES = ("networks", "last_hidden")


def _network_features(arch: Serial, x: torch.Tensor, n_features: int, seed: int, progress: bool) -> torch.Tensor:
    seeds = torch.randint(0, 2 ** 62, (n_features,), generator=torch.Generator().manual_seed(seed)).tolist()
    columns = []
    for s in tqdm(seeds, desc="nngp_features", disable=None if progress else True, leave=False):
        net = arch.build(x.shape[1], seed=int(s), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            out = net(x)
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"source='networks' uses one output per network; arch has {out.shape[-1]} outputs. "
                             "Describe the architecture with out_features=1")
        columns.append(out[:, 0])
    return torch.stack(columns, 1)


def _last_hidden_features(arch: Serial, x: torch.Tensor, n_features: int, seed: int) -> torch.Tensor:
    layers = arch.flatten()
    readout = layers[-1]
    if not isinstance(readout, Dense):
        raise ValueError(f"source='last_hidden' needs an architecture that ends with nk.Dense; it ends with "
                         f"{readout!r}")
    hidden = [i for i, layer in enumerate(layers[:-1]) if isinstance(layer, Dense)]
    if not hidden:
        raise ValueError("source='last_hidden' needs a hidden nk.Dense layer before the readout (whose width is set "
                         "to n_features); this architecture is a single Dense layer")
    last = layers[hidden[-1]]
    widened = Dense(n_features, last.w_std, last.b_std, last.parameterization)
    body = Serial(*layers[:hidden[-1]], widened, *layers[hidden[-1] + 1:-1])
    net = body.build(x.shape[1], seed=seed, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        hidden_out = net(x)  # (N, P)
    # Readout (either parameterisation): f = Σ_k W_k a_k + b with Var(W_k) = w²/P, Var(b) = b², so
    # E[f f'] = (w²/P) Σ_k a_k a_k' + b² = (1/P) Σ_k (w a_k + b ξ_k)(w a_k' + b ξ_k) averaged over ξ_k ~ N(0, 1).
    xi = torch.randn(n_features, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return readout.w_std * hidden_out + readout.b_std * xi.to(device=x.device, dtype=x.dtype)[None, :]


def nngp_features(arch, x, n_features: int, *, source: str = "networks", seed: int = 0,
                  progress: bool | None = None) -> torch.Tensor:
    r"""P random functions of ``arch`` evaluated on x, (N, P), with K̃ = F Fᵀ/P → the NNGP Σ (Jacot et al. §4).

    Args:
        arch: an ntkit architecture with one output (``nk.mlp(..., out_features=1)``).
        x: (N, d) inputs.
        n_features: P.
        source: "networks": column p is the output of the p-th of P independently seeded finite networks, so
            E[f^(p)(x) f^(p)(x')] is the finite-width NNGP (exactly Σ for one hidden layer; O(1/width) off for
            deeper ones). "last_hidden": one network whose last hidden Dense layer has P units; column k is
            w_std·a_k(x) + b_std·ξ_k (the readout's scales, ξ_k ~ N(0, 1)), i.i.d. over k given the earlier
            layers, so K̃ → Σ computed from those layers (exact Σ for one hidden layer). Much faster.
        seed: seeds every random draw.
        progress: tqdm bar over the networks (source="networks"); None shows it from 500 networks on.

    Returns:
        (N, P) features, in x's dtype and device. ``random_features_kernel(F)`` gives K̃.
    """
    arch = check_architecture(arch)
    arch = arch if isinstance(arch, Serial) else Serial(arch)
    x = as_input_tensor(x, "x", ndim=2)
    n_features = check_positive_int(n_features, "n_features")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    if source not in FEATURE_SOURCES:
        raise ValueError(f"source must be one of {FEATURE_SOURCES}; got {source!r}")
    check_fits(x.shape[0] * n_features * x.element_size() * 2, x.device, "nngp_features",
               "Use fewer features.")
    if source == "networks":
        return _network_features(arch, x, n_features, seed, n_features >= 500 if progress is None else progress)
    return _last_hidden_features(arch, x, n_features, seed)


class _OneOutput:
    """A ``ModelFunction`` restricted to output ``index``, (N, 1): ``jacobian_features`` differentiates every
    output it is given, and only one row of each per-sample Jacobian is wanted here."""

    def __init__(self, fn: ModelFunction, index: int):
        self.params, self._fn, self._index = fn.params, fn, index

    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self._fn(x, params)[:, self._index:self._index + 1]


def ntk_features(model: nn.Module, x, *, output: int | None = None, batch_size: int | None = None) -> torch.Tensor:
    r"""NTK random features of a finite network: f^(p)(x) = √P ∂f(x)/∂θ_p, (N, P), P = number of parameters.

    Then K̃ = F Fᵀ/P = J(x) J(x)ᵀ is the network's empirical NTK, which tends to the infinite-width Θ as the
    widths grow (Jacot et al. 2018, Thm. 1), and the linear model P^{-1/2} F θ is the network's linearisation
    (up to its initial outputs). The Jacobian is formed explicitly (N·P numbers, refused with an estimate when it
    does not fit) by the per-sample Jacobians of ``ntkit.empirical``; for the NTK alone use
    ``nk.empirical_ntk``, which avoids it.

    Args:
        model: an ``nn.Module`` whose output for one sample depends on that sample alone (``model.eval()`` for
            dropout or batch norm); its parameters with requires_grad count.
        x: (N, ...) inputs on the model's device; the features come in x's dtype (the parameters are cast to it).
        output: which output to differentiate when the model has several (required then).
        batch_size: points per vmapped Jacobian pass (default: all at once).
    """
    check_model(model)
    x = as_input_tensor(x, "x")
    fn = ModelFunction(model, x.dtype, x.device)
    names = list(fn.params)
    if not names:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    n_params = fn.num_params
    check_fits(2 * x.shape[0] * n_params * x.element_size(), x.device, f"ntk_features ({x.shape[0]} x {n_params})",
               "Use fewer points, a smaller model, or nk.empirical_ntk for the kernel alone.")
    with torch.no_grad():
        n_outputs = fn(x[:1]).shape[1]
    if output is None and n_outputs != 1:
        raise ValueError(f"model has {n_outputs} outputs; pass output= (0..{n_outputs - 1}) to choose one")
    index = 0 if output is None else output
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n_outputs:
        raise ValueError(f"output must be an integer in [0, {n_outputs}); got {output!r}")
    one_output = _OneOutput(fn, int(index))
    batch = x.shape[0] if batch_size is None else check_positive_int(batch_size, "batch_size")
    blocks = []
    for start in range(0, x.shape[0], batch):
        per_param = jacobian_features(one_output, names, x[start:start + batch])  # [(n, 1, numel)] by parameter
        blocks.append(torch.cat([feature.jac[:, 0] for feature in per_param], 1))
    return torch.cat(blocks, 0) * math.sqrt(n_params)


def random_features_kernel(features1, features2=None) -> torch.Tensor:
    """K̃(x, x') = (1/P) Σ_p f^(p)(x) f^(p)(x'), from (N1, P) and (N2, P) feature matrices; (N1, N2)."""
    f1 = as_input_tensor(features1, "features1", ndim=2)
    f2 = f1 if features2 is None else as_input_tensor(features2, "features2", ndim=2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features1 has {f1.shape[1]} features but features2 has {f2.shape[1]}")
    if f1.device != f2.device:
        raise ValueError(f"features1 is on {f1.device} but features2 is on {f2.device}; put both on one device")
    dtype = torch.promote_types(f1.dtype, f2.dtype)
    return f1.to(dtype) @ f2.to(dtype).T / f1.shape[1]


class RandomFeatureModel(nn.Module):
    r"""The linear model F^lin(θ)(x) = P^{-1/2} Σ_p θ_p f^(p)(x) on precomputed features (Jacot et al. §4).

    ``forward(features)`` maps (N, P) features to (N, O) outputs. Its NTK is K̃ = F Fᵀ/P, so full-batch gradient
    descent (``nk.train(model, F_train, y, ...)``) follows ∂_t f = −(η/N) K̃ (f − y) exactly up to the time step.

    Args:
        n_features: P.
        out_features: O.
        init: "normal" (θ_p ~ N(0, 1), so that at init F^lin is a random function with covariance K̃) or "zeros".
        seed, dtype, device: for θ.
    """

    def __init__(self, n_features: int, out_features: int = 1, *, init: str = "normal", seed: int | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.n_features = check_positive_int(n_features, "n_features")
        self.out_features = check_positive_int(out_features, "out_features")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if init == "normal":
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            theta = torch.randn(n_features, out_features, generator=generator, dtype=torch.float64)
        elif init == "zeros":
            theta = torch.zeros(n_features, out_features, dtype=torch.float64)
        else:
            raise ValueError(f"init must be 'normal' or 'zeros'; got {init!r}")
        self.theta = nn.Parameter(theta.to(device=device, dtype=dtype))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"RandomFeatureModel expects features of shape (N, {self.n_features}); got "
                             f"{tuple(features.shape)}")
        return features @ self.theta / math.sqrt(self.n_features)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, out_features={self.out_features}"
