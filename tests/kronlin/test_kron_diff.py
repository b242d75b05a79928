import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert
from .chains import blocks, joint_covariance
from .helpers import assert_close, spd
from .operator_contract import InvertibleOperatorContract


def paper_difference(rng, m, n):
    """A, B, C, D as in the paper's Σ_{i|i+1}: C = Ā_{i-1,i} Ā_{i,i}⁻¹ Ā_{i-1,i}ᵀ from a real covariance."""
    cov_a = joint_covariance(rng, [m, m + 1])
    cov_g = joint_covariance(rng, [n, n + 2])
    A, A_next, A_cross = blocks(cov_a, [m, m + 1], 0, 0), blocks(cov_a, [m, m + 1], 1, 1), blocks(cov_a, [m, m + 1], 0, 1)
    B, B_next, B_cross = blocks(cov_g, [n, n + 2], 0, 0), blocks(cov_g, [n, n + 2], 1, 1), blocks(cov_g, [n, n + 2], 0, 1)
    C = A_cross @ np.linalg.solve(A_next, A_cross.T)
    D = B_cross @ np.linalg.solve(B_next, B_cross.T)
    return A, B, (C + C.T) / 2, (D + D.T) / 2


class TestKronDiffPaperConstruction(InvertibleOperatorContract):
    label = "KronDiff"
    symmetric = True

    def build(self, rng, backend, dtype):
        A, B, C, D = paper_difference(rng, 4, 3)
        dense = np.kron(A, B) - np.kron(C, D)
        op = kl.KronDiff(*(convert(M, backend, dtype) for M in (A, B, C, D)))
        return op, dense, np.linalg.cond(dense)


def test_inverse_is_kron_eigen_and_matches_dense_solve(backend, dtype):
    rng = np.random.default_rng(11)
    A, B, C, D = paper_difference(rng, 5, 2)
    dense = np.kron(A, B) - np.kron(C, D)
    inv = kl.KronDiff(*(convert(M, backend, dtype) for M in (A, B, C, D))).inv()
    assert isinstance(inv, kl.KronEigen)
    v = rng.standard_normal(10)
    assert_close(inv @ convert(v, backend, dtype), np.linalg.solve(dense, v), dtype=dtype,
                 cond=np.linalg.cond(dense), label="KronDiff")


def test_near_singular_denominator_is_detected_and_damping_regularizes():
    # C⊗D → A⊗B: denominators 1 − s1·s2 → 0
    rng = np.random.default_rng(12)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = A * (1 - 1e-15), B.copy()
    with pytest.raises(kl.SingularDenominatorError, match=r"smallest denominator .* pass damping > 0"):
        kl.KronDiff(A, B, C, D).inv()
    damped = kl.KronDiff(A, B, C, D).inv(damping=0.1)
    dense = np.kron(A, B) - np.kron(C, D) + 0.1 * np.kron(A, B)
    np.testing.assert_allclose(damped.to_dense(), np.linalg.inv(dense), rtol=1e-8, atol=1e-8)


def test_close_to_singular_but_solvable():
    # min denominator ~1e-8 stays exact in float64 up to the condition number
    rng = np.random.default_rng(13)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = A * (1 - 1e-8), B.copy()
    dense = np.kron(A, B) - np.kron(C, D)
    v = rng.standard_normal(6)
    x = kl.KronDiff(A, B, C, D).solve(v)
    # the difference loses 8 digits to cancellation (relative to A⊗B), in kronlin and in the
    # dense reference alike
    cond = np.linalg.cond(np.kron(A, B)) / 1e-8
    assert_close(x, np.linalg.solve(dense, v), dtype="float64", cond=cond, label="KronDiff(near-singular)")


def test_errors():
    rng = np.random.default_rng(14)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(kl.NotPositiveDefiniteError, match=r"^A: expected a symmetric positive definite matrix .* add damping"):
        kl.KronDiff(-A, B, A, B).inv()
    with pytest.raises(kl.NotPositiveDefiniteError, match=r"^B: expected a symmetric positive definite"):
        kl.KronDiff(A, -B, A, B).inv()
    with pytest.raises(ValueError, match=r"C: expected shape \(3, 3\) \(as A\), got \(2, 2\)"):
        kl.KronDiff(A, B, B, B)
    nonsym = A.copy()
    nonsym[0, 1] += 1.0
    with pytest.raises(ValueError, match="D: expected a symmetric matrix"):
        kl.KronDiff(A, B, A, np.triu(B) + 1.0)
    with pytest.raises(ValueError, match="A: expected a symmetric matrix"):
        kl.KronDiff(nonsym, B, A, B)
    with pytest.raises(ValueError, match="B: expected finite entries"):
        kl.KronDiff(A, np.full((2, 2), np.inf), A, B)


def test_float32_eigh_failure_retries_in_float64(monkeypatch):
    # some LAPACK builds return NaN from float32 eigh instead of raising: retry, say so, be exact
    real_eigh = np.linalg.eigh

    def flaky_eigh(a):
        w, q = real_eigh(a)
        return (w * np.nan, q) if a.dtype == np.float32 else (w, q)

    rng = np.random.default_rng(15)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)
    import array_api_compat.numpy as xp_numpy

    monkeypatch.setattr(xp_numpy.linalg, "eigh", flaky_eigh)
    with pytest.warns(RuntimeWarning, match="float32 eigh failed; retrying in float64"):
        inv = kl.KronDiff(*(M.astype(np.float32) for M in (A, B, C, D))).inv()
    assert inv.dtype == np.float32
    dense = np.kron(A, B) - np.kron(C, D)
    assert_close(inv.to_dense(), np.linalg.inv(dense), dtype="float32", cond=np.linalg.cond(dense), label="KronDiff")


def test_eigh_failure_in_float64_raises_naming_the_matrix(monkeypatch):
    import array_api_compat.numpy as xp_numpy

    monkeypatch.setattr(xp_numpy.linalg, "eigh", lambda a: (np.full(len(a), np.nan), np.eye(len(a))))
    rng = np.random.default_rng(16)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(np.linalg.LinAlgError, match=r"A\^\(-1/2\) C A\^\(-T/2\): eigendecomposition of the \(3, 3\) matrix failed"):
        kl.KronDiff(A, B, 0.3 * A, 0.3 * B).inv()
