"""Inputs shared by the asv benchmarks: arrays of one backend and dtype, SPD factors, chains.

Every benchmark class takes the parameters ``dtype`` and ``backend``; a backend that is not
installed makes ``setup`` raise ``NotImplementedError``, which asv reports as skipped.
"""

from __future__ import annotations

import numpy as np

DTYPES = ["float64", "float32"]
BACKENDS = ["numpy", "torch"]


def on(backend: str, dtype: str, *arrays: np.ndarray):
    """``arrays`` as ``backend`` arrays of ``dtype`` (torch on CPU: asv times the CPU)."""
    arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    if backend == "numpy":
        return arrays
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    return [torch.from_numpy(a) for a in arrays]


def spd(rng: np.random.Generator, n: int, ridge: float = 0.1) -> np.ndarray:
    """A sample covariance plus a ridge (as K-FAC's damped factors)."""
    M = rng.standard_normal((n, 2 * n))
    return M @ M.T / (2 * n) + ridge * np.eye(n)


def chain(rng: np.random.Generator, left: list[int], right: list[int], ridge: float = 0.1):
    """``diag`` and ``offdiag`` Kronecker factor pairs of a block-tridiagonal Fisher (K-FAC-like).

    The factors are blocks of two joint sample covariances (sides ``left`` and ``right``), so
    every conditional covariance is well posed.
    """
    left_blocks, right_blocks = _covariance_blocks(rng, left, ridge), _covariance_blocks(rng, right, ridge)
    diag = [(left_blocks[i][i], right_blocks[i][i]) for i in range(len(left))]
    offdiag = [(left_blocks[i][i + 1], right_blocks[i][i + 1]) for i in range(len(left) - 1)]
    return diag, offdiag


def _covariance_blocks(rng: np.random.Generator, sizes: list[int], ridge: float):
    """Blocks ``[i][j]`` of a sample covariance with neighbour correlations, ridge on the diagonal."""
    total = sum(sizes)
    Z = rng.standard_normal((4 * total, total)) @ (np.eye(total) + 0.5 * np.eye(total, k=1))
    C = Z.T @ Z / len(Z) + ridge * np.eye(total)
    edges = np.cumsum([0, *sizes])
    return [[C[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] for j in range(len(sizes))]
            for i in range(len(sizes))]
