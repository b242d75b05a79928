"""Block-tridiagonal test problems built from real sample covariances (as K-FAC builds them)."""

from __future__ import annotations

import numpy as np


def joint_covariance(rng, sizes, n_samples=400, coupling=0.6):
    """Sample covariance of a random Markov-ish chain of vectors with the given block sizes."""
    total = sum(sizes)
    mix = rng.standard_normal((total, total)) / np.sqrt(total)
    mix += coupling * np.eye(total, k=1) + np.eye(total)
    X = rng.standard_normal((n_samples, total)) @ mix
    return X.T @ X / n_samples


def blocks(M, sizes, i, j):
    s = np.cumsum([0, *sizes])
    return M[s[i] : s[i + 1], s[j] : s[j + 1]]


def chain(rng, left_sizes, right_sizes, ridge=0.05):
    """``diag`` and ``offdiag`` pairs from two joint covariances (the ā-like and g-like sides)."""
    L, R = joint_covariance(rng, left_sizes), joint_covariance(rng, right_sizes)
    b = len(left_sizes)
    diag = [
        (blocks(L, left_sizes, i, i) + ridge * np.eye(left_sizes[i]),
         blocks(R, right_sizes, i, i) + ridge * np.eye(right_sizes[i]))
        for i in range(b)
    ]
    offdiag = [(blocks(L, left_sizes, i, i + 1), blocks(R, right_sizes, i, i + 1)) for i in range(b - 1)]
    return diag, offdiag


def dense_tridiagonal(diag, offdiag):
    """The dense matrix with the given Kronecker blocks on the tridiagonal and zeros elsewhere."""
    sizes = [L.shape[0] * R.shape[0] for L, R in diag]
    s = np.cumsum([0, *sizes])
    F = np.zeros((s[-1], s[-1]))
    for i, (L, R) in enumerate(diag):
        F[s[i] : s[i + 1], s[i] : s[i + 1]] = np.kron(L, R)
    for i, (L, R) in enumerate(offdiag):
        F[s[i] : s[i + 1], s[i + 1] : s[i + 2]] = np.kron(L, R)
        F[s[i + 1] : s[i + 2], s[i] : s[i + 1]] = np.kron(L, R).T
    return F, sizes
