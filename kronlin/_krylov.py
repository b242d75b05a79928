r"""Krylov solvers that run in the operator's backend: conjugate gradients and Lanczos.

SciPy's ``cg`` and ``eigsh`` need NumPy arrays; these run on whatever the operator holds (NumPy,
torch on CPU or CUDA), so a GPU operator is never copied to the host. Only scalars cross: one
host synchronization per iteration for the convergence test, and the small projected matrix of
Lanczos. Both follow SciPy's conventions (arguments, defaults, stopping rules), so a NumPy twin
solved by SciPy is their test oracle.

- :func:`cg`: conjugate gradients (Hestenes & Stiefel 1952) for SPD ``A``, optionally
  preconditioned; a block of right-hand sides is ``k`` independent CG runs in lockstep, one
  operator product per iteration for all of them.
- :func:`lanczos`: the extreme eigenpairs of a symmetric ``A`` by thick-restart Lanczos
  (Wu & Simon 2000) with full reorthogonalization; the projected matrix is exactly
  :math:`V^\top A V` of the current basis, so restarts are a Rayleigh–Ritz step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ._backend import Array, dtype_name, to_numpy
from ._validation import check_scalar
from .operator import LinearOperator

Which = Literal["LM", "LA", "SA"]

_FLOOR = 100
"""Lanczos residuals are only resolved down to ``_FLOOR · eps · ‖A‖`` (rounding in ``VᵀAV``)."""


def cg(
    A: Any,
    b: Array,
    *,
    x0: Array | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    callback: Callable[[Array], None] | None = None,
) -> tuple[Array, int]:
    r"""Solve :math:`A x = b` for SPD ``A`` by conjugate gradients, in ``A``'s backend and device.

    Args:
        A: a square kronlin :class:`~kronlin.LinearOperator`, or a dense ``(n, n)`` array of its
            backend (wrapped as ``Kron(A)``); symmetric positive definite (not checked).
        b: ``(n,)``, or ``(n, k)`` for ``k`` right-hand sides solved together.
        x0: the starting guess, shaped as ``b`` (default zero).
        rtol: relative tolerance: stop when :math:`\lVert b - A x\rVert <
            \max(\mathrm{rtol}\,\lVert b\rVert, \mathrm{atol})` (per column), as
            ``scipy.sparse.linalg.cg``.
        atol: absolute tolerance, as above.
        maxiter: iterations at most (default ``10 n``, as SciPy).
        M: a preconditioner approximating :math:`A^{-1}` (an operator or array as ``A``),
            applied as ``M @ r``; SPD.
        callback: called with the current iterate after every iteration.

    Returns:
        ``(x, info)``: the solution, shaped as ``b``, and ``0`` if every column converged,
        else the number of iterations run.

    Cost: one product with ``A`` (and one with ``M``) per iteration on all columns, plus
    ``O(nk)`` vector work; one host synchronization per iteration (the stopping test).

    Raises:
        TypeError: ``A`` or ``M`` is neither an operator nor an array; backends mix.
        ValueError: ``A`` is not square; shapes disagree; ``rtol``/``atol`` negative or not
            finite; ``maxiter`` not a positive integer.

    """
    A = _operator(A, "A")
    n = A.shape[0]
    rtol = check_scalar(rtol, "rtol", minimum=0.0)
    atol = check_scalar(atol, "atol", minimum=0.0)
    maxiter = _count(10 * n if maxiter is None else maxiter, "maxiter")
    Mop = None if M is None else _operator(M, "M")
    if Mop is not None and Mop.shape != A.shape:
        raise ValueError(f"M: expected shape {A.shape} (as A), got {Mop.shape}")
    b = A._operand(b, n, "b")
    xp = A.xp
    B = b[:, None] if b.ndim == 1 else b
    if x0 is None:
        X, R = xp.zeros_like(B), B
    else:
        X = A._operand(x0, n, "x0")
        if tuple(X.shape) != tuple(b.shape):
            raise ValueError(f"x0: expected shape {tuple(b.shape)} (as b), got {tuple(X.shape)}")
        X = xp.astype(X[:, None] if X.ndim == 1 else X, B.dtype)
        R = B - A._matmat(X)
    b_norms = _column_norms(xp, B)
    tol = xp.maximum(rtol * b_norms, xp.full_like(b_norms, atol))
    solvable = b_norms > 0  # b = 0 has the solution 0 (SciPy returns it at once)

    def unconverged(R: Array) -> Array:
        return (_column_norms(xp, R) >= tol) & solvable

    def result(X: Array) -> Array:
        X = xp.where(solvable, X, xp.zeros_like(X))
        return X[:, 0] if b.ndim == 1 else X

    Z = R if Mop is None else Mop._matmat(R)
    P, rz = Z, xp.sum(R * Z, axis=0)
    zero = xp.zeros_like(rz)
    for _ in range(maxiter):
        active = unconverged(R)
        if not bool(xp.any(active)):
            return result(X), 0
        AP = A._matmat(P)
        alpha = xp.where(active, rz / _nonzero(xp, xp.sum(P * AP, axis=0)), zero)
        X = X + alpha * P
        R = R - alpha * AP
        Z = R if Mop is None else Mop._matmat(R)
        rz_next = xp.sum(R * Z, axis=0)
        P = Z + xp.where(active, rz_next / _nonzero(xp, rz), zero) * P
        rz = rz_next
        if callback is not None:
            callback(result(X))
    return result(X), 0 if not bool(xp.any(unconverged(R))) else maxiter


def lanczos(
    A: Any,
    k: int = 6,
    *,
    which: Which = "LM",
    v0: Array | None = None,
    ncv: int | None = None,
    maxiter: int | None = None,
    tol: float = 0.0,
    return_eigenvectors: bool = True,
) -> Array | tuple[Array, Array]:
    r"""``k`` extreme eigenpairs of a symmetric ``A`` by thick-restart Lanczos, in ``A``'s backend.

    The contract of ``scipy.sparse.linalg.eigsh`` (no shift-invert): a basis of ``ncv``
    Lanczos vectors, fully reorthogonalized (classical Gram–Schmidt twice), is built; the
    Ritz pairs of :math:`V^\top A V` are tested, and the ``k + (ncv − k)/2`` most wanted are kept
    for the next cycle (Wu & Simon's thick restart) until every wanted Ritz pair
    :math:`(\theta, y)` has residual :math:`\lVert A y - \theta y\rVert \le
    \mathrm{tol}\cdot\max(\varepsilon^{2/3}, \lvert\theta\rvert)` (ARPACK's rule).

    Args:
        A: a square symmetric kronlin operator, or a dense array of its backend (symmetry is
            not checked).
        k: the number of eigenpairs, ``1 ≤ k < n``.
        which: ``"LM"`` largest magnitude (SciPy's default), ``"LA"`` largest, ``"SA"``
            smallest algebraic.
        v0: the starting vector ``(n,)`` (default: a fixed pseudo-random vector, the same on
            every backend).
        ncv: the basis size, ``k < ncv ≤ n`` (default ``min(n, max(2k + 1, 20))``, as SciPy).
        maxiter: restarts at most (default ``10 n``, as SciPy).
        tol: relative accuracy (default 0: the dtype's machine epsilon).
        return_eigenvectors: also return the eigenvectors.

    Returns:
        The eigenvalues ``(k,)`` in ascending order, and with ``return_eigenvectors`` the
        orthonormal eigenvectors as the columns of an ``(n, k)`` array; in ``A``'s backend,
        device and dtype.

    Cost: one product with ``A`` per Lanczos step, ``O(n·ncv)`` per step for the
    reorthogonalization, an ``ncv × ncv`` eigendecomposition on the host per restart.

    Raises:
        TypeError: ``A`` is neither an operator nor an array.
        ValueError: ``A`` not square; ``k``, ``ncv``, ``maxiter``, ``which`` or ``tol`` out of range.
        kronlin.LinAlgError: no convergence within ``maxiter`` restarts.

    """
    from .errors import LinAlgError

    A = _operator(A, "A")
    n = A.shape[0]
    k = _count(k, "k")
    if k >= n:
        raise ValueError(f"k: expected 1 ≤ k < n = {n}, got {k}")
    if which not in ("LM", "LA", "SA"):
        raise ValueError(f"which: expected 'LM', 'LA' or 'SA', got {which!r}")
    ncv = _count(min(n, max(2 * k + 1, 20)) if ncv is None else ncv, "ncv")
    if not k < ncv <= n:
        raise ValueError(f"ncv: expected k < ncv ≤ n, i.e. {k} < ncv ≤ {n}, got {ncv}")
    maxiter = _count(10 * n if maxiter is None else maxiter, "maxiter")
    eps = float(np.finfo(dtype_name(A.dtype)).eps)
    tol = check_scalar(tol, "tol", minimum=0.0) or eps
    xp, rng = A.xp, np.random.default_rng(0)
    if v0 is None:
        v0 = xp.asarray(rng.standard_normal(n), dtype=A.dtype, device=A.device)
    v = A._operand(v0, n, "v0")
    if v.ndim != 1:
        raise ValueError(f"v0: expected shape ({n},), got {tuple(v.shape)}")
    V = xp.zeros((ncv + 1, n), dtype=v.dtype, device=A.device)  # basis vectors as rows
    V[0] = v / _norm(xp, v)
    H = np.zeros((ncv, ncv))  # V[:ncv] A V[:ncv]ᵀ, on the host
    kept = 0
    for _ in range(maxiter):
        residual = _extend(A, V, H, kept, rng, eps)
        theta, Y = np.linalg.eigh(H)
        order = _wanted_first(theta, which)
        wanted = order[:k]
        errors = np.abs(residual * Y[-1, wanted])
        # the projections carry rounding errors of order eps·‖A‖: no residual estimate goes below
        if np.all(errors <= np.maximum(tol * np.abs(theta[wanted]), _FLOOR * eps * np.abs(theta).max())):
            break
        kept = min(ncv - 1, k + (ncv - k) // 2)
        keep = order[:kept]
        Yk = xp.asarray(np.ascontiguousarray(Y[:, keep].T), dtype=V.dtype, device=A.device)
        V[:kept] = Yk @ V[:ncv]
        V[kept] = V[ncv]
        H[:] = 0
        H[np.arange(kept), np.arange(kept)] = theta[keep]
    else:
        raise LinAlgError(f"lanczos: no convergence of {k} eigenpairs ({which}) in {maxiter} restarts")
    ascending = wanted[np.argsort(theta[wanted])]
    values = xp.asarray(theta[ascending], dtype=V.dtype, device=A.device)
    if not return_eigenvectors:
        return values
    Yw = xp.asarray(np.ascontiguousarray(Y[:, ascending]), dtype=V.dtype, device=A.device)
    return values, V[:ncv].T @ Yw


def _extend(A: LinearOperator, V: Array, H: np.ndarray, start: int, rng, eps: float) -> float:
    """Lanczos steps ``start … ncv−1``: fill rows ``start + 1 …`` of ``V`` and ``H``; the last β.

    Each new vector ``w = A vⱼ`` is orthogonalized against every basis vector twice; its
    projections are column ``j`` of ``H``. A vanishing ``w`` means an invariant subspace: the
    basis continues with a random vector orthogonal to it (coupling 0), as ARPACK does.
    """
    xp, ncv = A.xp, H.shape[0]
    beta = 0.0
    for j in range(start, ncv):
        w = A._matmat(V[j][:, None])[:, 0]
        h = V[: j + 1] @ w
        w = w - h @ V[: j + 1]
        h2 = V[: j + 1] @ w
        w = w - h2 @ V[: j + 1]
        column = to_numpy(h + h2).astype(np.float64)
        H[: j + 1, j] = column
        H[j, : j + 1] = column
        beta = float(_norm(xp, w))
        if beta <= eps * max(float(np.abs(column).max()), eps):
            beta, w = 0.0, _random_orthogonal(xp, V[: j + 1], rng)
        V[j + 1] = w / _norm(xp, w)
        if j + 1 < ncv:
            H[j + 1, j] = H[j, j + 1] = beta
    return beta


def _random_orthogonal(xp, V: Array, rng) -> Array:
    """A pseudo-random vector orthogonal to the rows of ``V``."""
    w = xp.asarray(rng.standard_normal(V.shape[1]), dtype=V.dtype, device=V.device)
    for _ in range(2):
        w = w - (V @ w) @ V
    return w


def _wanted_first(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of the Ritz values ``theta`` (ascending), the most wanted first."""
    if which == "LA":
        return np.arange(len(theta))[::-1]
    if which == "SA":
        return np.arange(len(theta))
    return np.argsort(-np.abs(theta), kind="stable")


def _operator(A: Any, name: str) -> LinearOperator:
    """``A`` as a square kronlin operator (a dense array is wrapped as ``Kron(A)``)."""
    from .kron import Kron

    if not isinstance(A, LinearOperator):
        try:
            A = Kron(A)
        except TypeError as err:
            raise TypeError(f"{name}: expected a kronlin LinearOperator or a 2-D array ({err})") from None
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name}: expected a square operator, got shape {A.shape}")
    return A


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _column_norms(xp, X: Array) -> Array:
    return xp.sqrt(xp.sum(X * X, axis=0))


def _norm(xp, v: Array) -> Array:
    return xp.sqrt(xp.sum(v * v))


def _nonzero(xp, x: Array) -> Array:
    """``x`` with zeros replaced by ones (for divisions whose result is masked out)."""
    return xp.where(x == 0, xp.ones_like(x), x)
