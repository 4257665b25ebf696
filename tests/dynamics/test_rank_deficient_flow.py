"""GradientFlow on rank-deficient and indefinite kernels (issue 13, point 7).

A rank-deficient train-train kernel (duplicated points; more points than features for a linear kernel) has
eigenvalues that are zero up to rounding, some slightly negative. Integrating those as e^{+|λ|ηt/N} made the loss
rise with t, and integrating φ = ηt/N along them made ``test_outputs(t, Θ(X, X))`` drift from ``train_outputs(t)``
in proportion to t. Eigenvalues within N·eps·max|λ| (the threshold ``nk.spectrum.check_positive_definite`` uses)
are now exactly zero for the flow and carry no dual coefficient. A kernel negative beyond rounding is computed
with a warning that names its most negative eigenvalue relative to the largest.
"""

import warnings

import pytest
import torch

import ntkit as nk

TIMES = torch.cat([torch.zeros(1), torch.logspace(-1, 6, 29)]).double()  # 0 and 0.1 ... 1e6


def _duplicated_points_kernel(dtype):
    """The NTK of 9 points, 3 of them repeated: rank 6 (its three null vectors are e_i − e_{i'})."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:3]])
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    return nk.mlp(2, 8, b_std=0.1).kernel(x.to(dtype)).ntk, y.to(dtype), 6


def _linear_kernel_of_more_points_than_features(dtype):
    """x·x'/d for N = 40 points in d = 5 dimensions: rank 5, computed in ``dtype`` (float32 rounding leaves
    eigenvalues of ±1e-7·λ_max where there should be zeros)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(40, generator=g, dtype=torch.float64).to(dtype)
    return x @ x.T / 5, y, 5


CASES = [(_duplicated_points_kernel, torch.float64), (_duplicated_points_kernel, torch.float32),
         (_linear_kernel_of_more_points_than_features, torch.float64),
         (_linear_kernel_of_more_points_than_features, torch.float32)]
IDS = ["duplicated-float64", "duplicated-float32", "linear-float64", "linear-float32"]


@pytest.mark.parametrize("make, dtype", CASES, ids=IDS)
def test_rank_deficient_kernel_loss_never_rises_and_train_equals_test_at_the_train_points(make, dtype):
    kernel, y, rank = make(dtype)
    n = kernel.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a PSD kernel up to rounding: no indefiniteness warning
        flow = nk.GradientFlow(kernel, y, learning_rate=0.5 * nk.GradientFlow(kernel, y).max_learning_rate())
    # The numerical null space is exactly zero, and exactly N − rank wide.
    assert int((flow.eigenvalues == 0).sum()) == n - rank
    assert bool((flow.eigenvalues[:rank] > flow.eig.tolerance).all())
    # The loss is non-increasing in t, to the last bit (every component's factor e^{−2ηλt/N} is non-increasing
    # for λ >= 0, and floating-point sums in a fixed order are monotone), and it settles at the null-space energy.
    loss = flow.loss(TIMES).double()
    assert bool((loss[1:] <= loss[:-1]).all()), (loss[1:] - loss[:-1]).max()
    components = flow.residual_components(0.0).reshape(n, -1).double()
    floor = 0.5 * components[rank:].pow(2).sum() / n
    assert float(loss[-1]) == pytest.approx(float(floor), rel=1e-5)
    # test_outputs at the training points are the training outputs at every time, to rounding independent of t
    # (integrating the null space instead drifted ∝ t: 8e-11 at t = 1e6 for the float64 duplicated points).
    train = flow.train_outputs(TIMES)
    test = flow.test_outputs(TIMES, kernel)
    scale = float(y.abs().max())
    rounding = 1e-12 if dtype == torch.float64 else 1e-6
    assert float((test - train).abs().max()) <= rounding * scale
    # The dual coefficients are the minimum-norm ones: nothing along the null space, however long the training.
    # (Vᵀ V = I to rounding, so "nothing" is 1e-12 of |α|; with φ = ηt/N there it was ~ηt/N·|Vᵀ y|.)
    alpha = flow.dual_coefficients(TIMES[-1])[0]
    assert float((flow.eigenvectors[:, rank:].T @ alpha).abs().max()) <= 1e-12 * float(alpha.abs().max())


def test_rank_deficient_flow_still_matches_the_closed_form_on_its_range():
    """Along the kernel's range nothing changed: the residual decays like e^{−ηλt/N} component by component."""
    kernel, y, rank = _duplicated_points_kernel(torch.float64)
    flow = nk.GradientFlow(kernel, y)
    t = 50.0
    lam = torch.linalg.eigvalsh(kernel).flip(0)[:rank]
    torch.testing.assert_close(flow.decay_factors(t)[:rank], torch.exp(-lam * t / kernel.shape[0]), rtol=1e-12,
                               atol=0)
    assert bool((flow.decay_factors(t)[rank:] == 1.0).all())


def test_indefinite_kernel_warns_with_its_most_negative_eigenvalue_relative_to_the_largest():
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    values = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0, -2e-3], dtype=torch.float64)
    indefinite = (basis * values) @ basis.T
    y = torch.randn(6, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"not positive semi-definite: its most negative eigenvalue is -0.002 = "
                                            r"-0.0005 x the largest \(4\), beyond the rounding tolerance"):
        flow = nk.GradientFlow(indefinite, y)
    loss = flow.loss(torch.tensor([0.0, 1e4, 1e5], dtype=torch.float64))
    assert float(loss[2]) > float(loss[1])  # it is computed, and it does grow along that direction
    # Within rounding of zero the same kind of eigenvalue is a zero eigenvalue: no warning, no growth.
    rounding = (basis * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0, -1e-16], dtype=torch.float64)) @ basis.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = nk.GradientFlow(rounding, y)
    later = quiet.loss(torch.tensor([1e4, 1e12], dtype=torch.float64))
    assert float(later[1]) <= float(later[0])
