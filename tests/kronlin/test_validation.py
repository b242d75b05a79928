"""Input checks (kronlin/_validation.py): symmetric factors are symmetrized, not trusted.

LAPACK's ``eigh`` and Cholesky read one triangle only, so a factor that is symmetric only up to
rounding (a sample covariance accumulated in another order, a float32 copy) would silently be
replaced by the symmetric matrix of its lower triangle. The contract: every operator that needs
symmetric factors works with ``(F + Fᵀ)/2``. The inputs here are deliberately asymmetric, at half
the tolerated relative asymmetry, so the two readings differ by far more than rounding.
"""

import numpy as np
import pytest

import kronlin as kl
from kronlin._validation import _SYMMETRY_RTOL, symmetrized

from ..conftest import convert
from .chains import chain
from .helpers import assert_close, product_condition, spd, tolerance
from .test_block_tridiag import as_backend, reference_inverse
from .test_kron import kron_eigen_bound


def skewed(rng, S, dtype, fraction=0.5):
    """``S`` plus an antisymmetric part with ``max|F − Fᵀ| = fraction · rtol(dtype) · max|F|``."""
    N = rng.standard_normal(S.shape)
    E = np.triu(N, 1) - np.triu(N, 1).T
    E *= fraction * _SYMMETRY_RTOL[dtype] * np.abs(S).max() / np.abs(2 * E).max()
    return S + E


def lower_reading(F):
    """The symmetric matrix LAPACK would see in ``F``: its lower triangle mirrored."""
    return np.tril(F) + np.tril(F, -1).T


def test_symmetrized_is_the_symmetric_part(dtype):
    rng = np.random.default_rng(71)
    F = skewed(rng, spd(rng, 5), dtype).astype(dtype)
    out = symmetrized(np, F, "F")
    np.testing.assert_array_equal(out, (F + F.T) / 2)
    np.testing.assert_array_equal(out, out.T)


def test_asymmetry_threshold_is_relative_per_dtype(dtype):
    rng = np.random.default_rng(72)
    S = 1e3 * spd(rng, 4)  # the threshold scales with max|F|
    symmetrized(np, skewed(rng, S, dtype, 0.9).astype(dtype), "F")
    with pytest.raises(ValueError, match=r"^F: expected a symmetric matrix, got max\|F - Fᵀ\| = .* \(max\|F\| = "):
        symmetrized(np, skewed(rng, S, dtype, 1.5).astype(dtype), "F")


def test_kron_eigh_decomposes_the_symmetric_part(backend, dtype):
    rng = np.random.default_rng(73)
    A, B = (skewed(rng, spd(rng, n), dtype) for n in (4, 3))
    op = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype)).eigh()
    sym = np.kron((A + A.T) / 2, (B + B.T) / 2)
    fs = [(A + A.T) / 2, (B + B.T) / 2]
    absolute = np.kron(*(abs(q) @ np.diag(w) @ abs(q).T for w, q in map(np.linalg.eigh, fs)))
    bound = kron_eigen_bound(fs) * product_condition(sym, np.eye(12), absolute)
    assert_close(op.to_dense(), sym, dtype=dtype, bound=bound, label="Kron(symmetrized)")
    # the lower-triangle reading differs by much more than the tolerance above
    lower = np.kron(lower_reading(A), lower_reading(B))
    assert np.linalg.norm(lower - sym) > 10 * tolerance(dtype, bound) * np.linalg.norm(sym)


def test_kron_diff_applies_and_inverts_the_symmetric_parts(backend, dtype):
    rng = np.random.default_rng(74)
    A, B = skewed(rng, spd(rng, 3), dtype), skewed(rng, spd(rng, 2), dtype)
    C, D = skewed(rng, 0.3 * spd(rng, 3), dtype), skewed(rng, 0.3 * spd(rng, 2), dtype)
    op = kl.KronDiff(*(convert(M, backend, dtype) for M in (A, B, C, D)))
    sym = [(M + M.T) / 2 for M in (A, B, C, D)]
    dense = np.kron(sym[0], sym[1]) - np.kron(sym[2], sym[3])
    absolute = np.kron(np.abs(sym[0]), np.abs(sym[1])) + np.kron(np.abs(sym[2]), np.abs(sym[3]))
    bound = 18 * product_condition(dense, np.eye(6), absolute)  # as in test_kron_diff's contract
    assert_close(op.to_dense(), dense, dtype=dtype, bound=bound, label="KronDiff(symmetrized)")
    assert_close(op.T.to_dense(), dense, dtype=dtype, bound=bound, label="KronDiff(symmetrized)")
    assert_close(op.inv().to_dense(), np.linalg.inv(dense), dtype=dtype, bound=10 * np.linalg.cond(dense),
                 label="KronDiff(symmetrized)")
    raw = np.kron(A, B) - np.kron(C, D)
    assert np.linalg.norm(raw - dense) > 10 * tolerance(dtype, bound) * np.linalg.norm(dense)


def test_block_tridiag_inverse_uses_the_symmetric_diagonal_blocks(backend, dtype):
    rng = np.random.default_rng(75)
    diag, offdiag = chain(rng, [3, 2], [2, 3])
    skew_diag = [tuple(skewed(rng, M, dtype) for M in pair) for pair in diag]
    op = kl.BlockTridiagInverse(as_backend(skew_diag, backend, dtype), as_backend(offdiag, backend, dtype))
    sym_diag = [tuple((M + M.T) / 2 for M in pair) for pair in skew_diag]
    dense = reference_inverse(sym_diag, offdiag)
    assert_close(op.to_dense(), dense, dtype=dtype, bound=np.linalg.cond(dense), label="BlockTridiagInverse")
    lower = reference_inverse([tuple(lower_reading(M) for M in pair) for pair in skew_diag], offdiag)
    assert np.linalg.norm(lower - dense) > 10 * tolerance(dtype, np.linalg.cond(dense)) * np.linalg.norm(dense)
