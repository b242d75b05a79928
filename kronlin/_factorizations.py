"""Factorizations of symmetric factors, with errors that name the factor.

Cholesky and eigendecompositions are where K-FAC-style code fails in practice (indefinite or
non-finite statistics, float32 breakdowns). Every failure here names the factor and suggests a
remedy; float32 failures retry in float64 with a warning, never silently.
"""

from __future__ import annotations

import warnings
from types import ModuleType

from ._backend import Array, device, dtype_name, is_all_finite, is_torch, solve_triangular
from .errors import LinAlgError, NotPositiveDefiniteError


def cholesky(xp: ModuleType, a: Array, name: str) -> Array:
    """Lower Cholesky factor of the SPD matrix ``a``; float32 failures retry in float64.

    Raises:
        NotPositiveDefiniteError: naming ``name`` when ``a`` is not positive definite.

    """
    try:
        return _cholesky(xp, a)
    except NotPositiveDefiniteError:
        if dtype_name(a.dtype) == "float32":
            try:
                factor = _cholesky(xp, xp.astype(a, xp.float64))
            except NotPositiveDefiniteError:
                pass
            else:
                warnings.warn(
                    f"{name}: float32 Cholesky failed; succeeded in float64", RuntimeWarning,
                    stacklevel=3,
                )
                return xp.astype(factor, xp.float32)
        raise NotPositiveDefiniteError(
            f"{name}: expected a symmetric positive definite matrix of shape {tuple(a.shape)}, but "
            f"its Cholesky factorization failed; add damping (e.g. {name} + c·I with c > 0)"
        ) from None


def _cholesky(xp: ModuleType, a: Array) -> Array:
    if is_torch(xp):
        import torch

        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise NotPositiveDefiniteError("cholesky failed")
        return factor
    import numpy as np

    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise NotPositiveDefiniteError("cholesky failed") from None


def eigh(xp: ModuleType, a: Array, name: str) -> tuple[Array, Array]:
    """Eigen-decomposition ``a = Q diag(w) Qᵀ`` of a symmetric matrix, ascending ``w``.

    A float32 failure retries in float64 with a warning. A failure is a raised error or a
    non-finite result: some LAPACK builds return NaN from float32 ``eigh`` on finite input
    instead of raising (seen with torch's CPU build on 1000×1000 matrices), so the result is
    checked (one host synchronization; setup code only).

    Raises:
        LinAlgError: naming ``name`` when float64 fails too.

    """
    result = _checked_eigh(xp, a)
    if result is None and dtype_name(a.dtype) == "float32":
        warnings.warn(f"{name}: float32 eigh failed; retrying in float64", RuntimeWarning, stacklevel=3)
        result = _checked_eigh(xp, xp.astype(a, xp.float64))
        if result is not None:
            return xp.astype(result[0], xp.float32), xp.astype(result[1], xp.float32)
    if result is None:
        raise LinAlgError(
            f"{name}: eigendecomposition of the {tuple(a.shape)} matrix failed (no convergence or "
            "a non-finite result)"
        )
    return result


def _checked_eigh(xp: ModuleType, a: Array) -> tuple[Array, Array] | None:
    try:
        w, q = xp.linalg.eigh(a)
    except Exception:  # numpy.linalg.LinAlgError or torch.linalg.LinAlgError
        return None
    if not (is_all_finite(xp, w) and is_all_finite(xp, q)):
        return None
    return w, q


def cholesky_inverse(xp: ModuleType, L: Array) -> Array:
    """``a⁻¹ = L⁻ᵀ L⁻¹`` from the lower Cholesky factor ``L`` of SPD ``a`` (``n³`` flops)."""
    eye = xp.eye(L.shape[0], dtype=L.dtype, device=device(L))
    L_inv = solve_triangular(xp, L, eye, lower=True)
    inv = L_inv.T @ L_inv
    return (inv + inv.T) / 2


def generalized_eigh(
    xp: ModuleType, L: Array, c: Array, names: tuple[str, str]
) -> tuple[Array, Array]:
    """Solve ``c K = a K diag(s)`` with ``Kᵀ a K = I`` for SPD ``a = L Lᵀ`` and symmetric ``c``.

    Takes the Cholesky factor ``L`` (callers often need it for other work too):
    ``L⁻¹ c L⁻ᵀ = E diag(s) Eᵀ`` and ``K = L⁻ᵀ E`` (paper App. I; spec §7.1).
    Returns ``(s, K)`` with ascending ``s``.
    """
    M = solve_triangular(xp, L, c, lower=True)  # L⁻¹ c
    M = solve_triangular(xp, L, M.T, lower=True)  # L⁻¹ (L⁻¹ c)ᵀ = L⁻¹ c L⁻ᵀ
    s, E = eigh(xp, (M + M.T) / 2, f"{names[0]}^(-1/2) {names[1]} {names[0]}^(-T/2)")
    K = solve_triangular(xp, L.T, E, lower=False)
    return s, K
