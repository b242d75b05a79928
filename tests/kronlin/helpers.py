"""Random test matrices and error bookkeeping for the operator tests."""

from __future__ import annotations

import numpy as np

EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}

# Largest relative error seen per (operator, dtype); printed at the end of the session.
MAX_ERRORS: dict[tuple[str, str], float] = {}


def spd(rng: np.random.Generator, n: int, *, ridge: float = 0.1) -> np.ndarray:
    """A sample covariance plus a ridge: SPD with condition number of order 10–100."""
    M = rng.standard_normal((n, 2 * n + 3))
    return M @ M.T / M.shape[1] + ridge * np.eye(n)


def relative_error(result: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(result - reference) / max(np.linalg.norm(reference), 1e-300))


def assert_close(result, reference, *, dtype: str, cond: float = 1.0, label: str = "") -> None:
    """Relative Frobenius error ≤ 200·eps·cond (cond: the problem's condition number)."""
    from ..conftest import to_numpy

    result = to_numpy(result).astype(np.float64)
    err = relative_error(result, np.asarray(reference, dtype=np.float64))
    key = (label or "unlabelled", dtype)
    MAX_ERRORS[key] = max(MAX_ERRORS.get(key, 0.0), err)
    tol = 200 * EPS[dtype] * cond
    assert err <= tol, f"{label}: relative error {err:.3g} > {tol:.3g} ({dtype}, cond {cond:.3g})"
