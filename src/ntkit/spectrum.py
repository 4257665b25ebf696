"""Spectral tools for kernel matrices: eigendecomposition, positive-definiteness, kernel principal components.

Why the spectrum matters (Jacot, Gabriel & Hongler 2018, §5): under gradient descent on the cost
C = ½ E_{p_in}‖f − y‖² over N training points with learning rate η, the outputs follow
∂_t f(x) = −(η/N) Σ_j Θ(x, x_j)(f(x_j) − y_j). With Θ = V diag(λ) Vᵀ on the training set the residual is
f_t − y = V diag(e^{−ηλ_i t/N}) Vᵀ (f_0 − y): its component along the i-th kernel principal component decays at
rate ηλ_i/N. Convergence is fastest along the top principal components, which is why stopping early keeps the
smooth, high-eigenvalue part of the target and leaves the rest.

    import ntkit as nk
    eig = nk.spectrum.eigh(K)                   # float64, eigenvalues in descending order
    print(nk.spectrum.check_positive_definite(K))
    values, vectors = nk.spectrum.principal_components(K, k=5)
    coefficients = nk.spectrum.project(eig, y)  # Vᵀ y, one row per component

Every function accepts a torch tensor or a numpy array and works in float64 (rounding in a kernel solve is
amplified by the condition number); results stay on the kernel's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._memory import check_fits
from ._validation import as_input_tensor, check_positive_int

__all__ = [
    "Eigendecomposition",
    "PositiveDefinitenessReport",
    "eigh",
    "check_positive_definite",
    "principal_components",
    "project",
    "explained_fraction",
    "as_symmetric_kernel",
    "decompose",
]


def as_symmetric_kernel(kernel, name: str = "kernel") -> torch.Tensor:
    """Check that ``kernel`` is a finite, square, symmetric (N, N) matrix and return it exactly symmetrised.

    Symmetry is checked to a relative tolerance of √eps of the kernel's dtype (about 3e-4 in float32, 1.5e-8 in
    float64) of its largest entry: rounding in a computed kernel (J Jᵀ, a tiled recursion) stays far below it,
    while a kernel between two different point sets, or a transposed block, is far above it.
    """
    k = as_input_tensor(kernel, name, ndim=2)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) kernel matrix between the training points; "
                         f"got shape {tuple(k.shape)}")
    scale = float(k.abs().max())
    asym = float((k - k.T).abs().max())
    tolerance = math.sqrt(torch.finfo(k.dtype).eps) * scale
    if asym > tolerance:
        i, j = divmod(int((k - k.T).abs().argmax()), k.shape[1])
        raise ValueError(f"{name} must be symmetric; |K[{i},{j}] - K[{j},{i}]| = {asym:.3g} exceeds the tolerance "
                         f"{tolerance:.3g} (sqrt(eps) x max|K|). Pass the train-train kernel K(X, X).")
    return 0.5 * (k + k.T)


@dataclass(frozen=True)
class Eigendecomposition:
    """K = V diag(λ) Vᵀ in float64, eigenvalues in descending order (column i of V is the i-th component).

    ``dtype`` is the dtype of the kernel that was decomposed, used for tolerances and to cast results back.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    dtype: torch.dtype

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def tolerance(self) -> float:
        """Eigenvalues below N·eps(dtype)·max|λ| are numerically zero (numpy.linalg.matrix_rank's rule)."""
        top = float(self.values.abs().max()) if len(self) else 0.0
        return len(self) * torch.finfo(self.dtype).eps * top

    def reconstruct(self) -> torch.Tensor:
        """V diag(λ) Vᵀ, in float64."""
        return (self.vectors * self.values) @ self.vectors.T


def decompose(k: torch.Tensor, *, shift: float = 0.0, hint: str = "Use fewer points.") -> Eigendecomposition:
    """K + shift·I = V diag(λ + shift) Vᵀ in float64, λ descending, for a kernel already checked symmetric.

    Refused with an estimate when it cannot fit: the float64 copy, the eigenvectors and LAPACK's workspace are
    about four N x N float64 matrices at once. A shift of the diagonal moves every eigenvalue by the same amount
    and leaves the eigenvectors alone, so it is added to λ rather than to a second N x N copy.
    """
    n = k.shape[0]
    check_fits(4 * 8 * n * n, k.device, f"the eigendecomposition of a {n}x{n} kernel", hint)
    values, vectors = torch.linalg.eigh(k.to(torch.float64))
    return Eigendecomposition(values.flip(0) + shift, vectors.flip(1), k.dtype)


def eigh(kernel, *, name: str = "kernel") -> Eigendecomposition:
    """Eigendecomposition K = V diag(λ) Vᵀ of a symmetric kernel matrix, in float64, λ in descending order.

    The kernel is checked (finite, square, symmetric; see ``as_symmetric_kernel``), symmetrised, cast to float64
    and decomposed with ``torch.linalg.eigh`` on its own device (refused with an estimate if it cannot fit).
    """
    if isinstance(kernel, Eigendecomposition):
        return kernel
    return decompose(as_symmetric_kernel(kernel, name))


@dataclass(frozen=True)
class PositiveDefinitenessReport:
    """Outcome of ``check_positive_definite``: the extreme eigenvalues and what they mean for a kernel solve.

    Attributes:
        size: N.
        min_eigenvalue, max_eigenvalue: extreme eigenvalues of the symmetrised kernel (float64).
        condition_number: λ_max/λ_min when λ_min > 0, else inf.
        tolerance: eigenvalues below it count as zero: N·eps(kernel dtype)·max|λ|.
        n_negative: eigenvalues below −tolerance; n_zero: eigenvalues within ±tolerance.
    """

    size: int
    min_eigenvalue: float
    max_eigenvalue: float
    condition_number: float
    tolerance: float
    n_negative: int
    n_zero: int

    @property
    def is_positive_definite(self) -> bool:
        return self.min_eigenvalue > self.tolerance

    @property
    def is_positive_semidefinite(self) -> bool:
        return self.n_negative == 0

    def __bool__(self) -> bool:
        return self.is_positive_definite

    def __str__(self) -> str:
        if self.is_positive_definite:
            verdict = "positive definite"
        elif self.is_positive_semidefinite:
            verdict = f"positive semi-definite but singular ({self.n_zero} numerically zero eigenvalue(s))"
        else:
            verdict = f"NOT positive semi-definite ({self.n_negative} negative eigenvalue(s))"
        return (f"{self.size}x{self.size} kernel: {verdict}\n"
                f"  min eigenvalue   {self.min_eigenvalue:.6g}\n"
                f"  max eigenvalue   {self.max_eigenvalue:.6g}\n"
                f"  condition number {self.condition_number:.6g}\n"
                f"  zero tolerance   {self.tolerance:.3g} (N x eps x max|eigenvalue|)")


def check_positive_definite(kernel) -> PositiveDefinitenessReport:
    """Report whether a symmetric kernel matrix is positive definite, with its extreme eigenvalues.

    Accepts a kernel matrix or an ``Eigendecomposition``. ``bool(report)`` is True for a positive definite
    kernel; ``print(report)`` explains the verdict.
    """
    eig = eigh(kernel)
    lam_min, lam_max = float(eig.values[-1]), float(eig.values[0])
    tol = eig.tolerance
    condition = lam_max / lam_min if lam_min > tol else math.inf
    return PositiveDefinitenessReport(size=len(eig), min_eigenvalue=lam_min, max_eigenvalue=lam_max,
                                      condition_number=condition, tolerance=tol,
                                      n_negative=int((eig.values < -tol).sum()),
                                      n_zero=int((eig.values.abs() <= tol).sum()))


def principal_components(kernel, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` kernel principal components: eigenvalues (k,) descending and eigenvectors (N, k), float64.

    Column i is the i-th principal direction of the kernel on the training points; the residual of gradient
    descent along it decays like e^{−ηλ_i t/N} (Jacot et al. 2018, §5). ``k=None`` returns all N.
    """
    eig = eigh(kernel)
    k = len(eig) if k is None else check_positive_int(k, "k")
    if k > len(eig):
        raise ValueError(f"k={k} exceeds the number of points N={len(eig)}")
    return eig.values[:k], eig.vectors[:, :k]


def project(kernel, values) -> torch.Tensor:
    """Coordinates Vᵀ v of targets or residuals on the kernel principal components, float64.

    Args:
        kernel: (N, N) kernel matrix or its ``Eigendecomposition`` (pass the latter to reuse it).
        values: (N,) or (N, O) targets y or residuals f − y.

    Returns:
        (N,) or (N, O): row i is the component along the i-th principal direction (descending eigenvalue), so
        ``V @ project(K, v)`` reconstructs v.
    """
    eig = eigh(kernel)
    v = as_input_tensor(values, "values", ndim=(1, 2))
    if v.shape[0] != len(eig):
        raise ValueError(f"values has {v.shape[0]} rows but the kernel is {len(eig)}x{len(eig)}")
    return eig.vectors.T @ v.to(device=eig.vectors.device, dtype=torch.float64)


def explained_fraction(kernel, values) -> torch.Tensor:
    """Share of ‖v‖² carried by each principal component, (N,) summing to 1 (components summed over outputs)."""
    coefficients = project(kernel, values)
    energy = coefficients.pow(2)
    if energy.ndim == 2:
        energy = energy.sum(1)
    total = energy.sum()
    if float(total) == 0.0:
        raise ValueError("values is identically zero; its explained fraction is undefined")
    return energy / total


def __dir__():
    """The public names only (``dir(nk.spectrum)`` without the modules this one imports)."""
    return sorted(__all__)
