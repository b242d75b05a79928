"""Random test matrices, error bounds and error bookkeeping for the operator tests.

Tolerances are first-order rounding-error bounds, stated in units of the unit roundoff
``u`` of the dtype (``2⁻²⁴`` in float32, ``2⁻⁵³`` in float64; Higham, *Accuracy and Stability
of Numerical Algorithms*, §2–3). Each check passes ``bound``: the number of rounding errors
that can reach one result entry times the condition number of the problem, e.g.

- an entry of a Kronecker product of two float32 copies of float64 factors: ``3`` (two input
  roundings and one product);
- ``y = A x`` by dot products of length ``n``: ``(n + 1)·κ(A, x)``, with
  ``κ(A, x) = ‖|A||x|‖ / ‖A x‖`` (:func:`product_condition`);
- an inverse or a solve computed through a backward-stable factorization: ``c·cond(A)``.

The references are float64 dense computations (``np.kron``, ``np.linalg``): their own error
is counted too. A bound that could not catch an error 100 times smaller than the bound is a
weak test; the session summary prints, per operator and dtype, the largest error and the
largest ratio bound / error ("slack") seen, so a loose bound shows up.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24}

# Largest relative error and largest slack (bound / error) seen per (operator, dtype); printed
# at the end of the session.
MAX_ERRORS: dict[tuple[str, str], float] = {}
MAX_SLACK: dict[tuple[str, str], float] = {}


def spd(rng: np.random.Generator, n: int, *, ridge: float = 0.1) -> np.ndarray:
    """A sample covariance plus a ridge: SPD with condition number of order 10–100."""
    M = rng.standard_normal((n, 2 * n + 3))
    return M @ M.T / M.shape[1] + ridge * np.eye(n)


def relative_error(result: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(result - reference) / max(np.linalg.norm(reference), 1e-300))


def product_condition(A: np.ndarray, X: np.ndarray, absolute: np.ndarray | None = None) -> float:
    """``‖|A||X|‖_F / ‖A X‖_F``: how much rounding in the terms of ``A X`` can be amplified.

    ``absolute`` replaces ``|A|`` when ``A`` is computed as a product or a difference of
    matrices (``|K| diag|S| |K|ᵀ`` for ``K diag(S) Kᵀ``), whose terms may cancel.
    """
    absolute = np.abs(A) if absolute is None else absolute
    X = np.asarray(X, dtype=np.float64)
    return float(np.linalg.norm(absolute @ np.abs(X)) / max(np.linalg.norm(A @ X), 1e-300))


def logdet_bound(dense: np.ndarray) -> float:
    """Bound on the error of ``log det A`` for SPD ``A`` whose entries are rounded by ``u``.

    ``δ log det A = tr(A⁻¹ δA)`` and ``|tr(A⁻¹ δA)| ≤ n·u·cond(A)`` for ``|δA| ≤ u|A|``; relative
    to ``|log det A|`` when that exceeds 1 (see :func:`assert_close`).
    """
    value = np.linalg.slogdet(dense)[1]
    return dense.shape[0] * np.linalg.cond(dense) / max(abs(value), 1.0)


def tolerance(dtype: str, bound: float) -> float:
    """The relative tolerance ``bound · u`` of a check."""
    return bound * UNIT_ROUNDOFF[dtype]


def assert_close(result, reference, *, dtype: str, bound: float, label: str) -> None:
    """Relative Frobenius error ``‖result − reference‖ / ‖reference‖ ≤ bound · u`` (see above).

    A scalar reference below 1 in magnitude (a log-determinant near 0) is compared in absolute terms.
    """
    from ..conftest import to_numpy

    result = to_numpy(result).astype(np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 1:
        err = float(np.abs(result - reference).max() / max(np.abs(reference).max(), 1.0))
    else:
        err = relative_error(result, reference)
    tol = tolerance(dtype, bound)
    key = (label, dtype)
    MAX_ERRORS[key] = max(MAX_ERRORS.get(key, 0.0), err)
    if err > 0:
        MAX_SLACK[key] = max(MAX_SLACK.get(key, 0.0), tol / err)
    assert err <= tol, f"{label}: relative error {err:.3g} > {tol:.3g} ({dtype}, bound {bound:.3g} u)"
