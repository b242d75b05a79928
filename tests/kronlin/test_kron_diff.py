import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert
from .chains import blocks, joint_covariance
from .helpers import assert_close, spd
from .operator_contract import ErrorModel, InvertibleOperatorContract


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
        # two Kronecker applies (dot products of lengths m + n each), their difference, and the
        # rounding of the four factors and of X; the terms of the difference may cancel
        absolute = np.kron(np.abs(A), np.abs(B)) + np.kron(np.abs(C), np.abs(D))
        return op, dense, ErrorModel(2 * (A.shape[0] + B.shape[0]) + 8, absolute)


def test_inverse_is_kron_eigen_and_matches_dense_solve(backend, dtype):
    rng = np.random.default_rng(11)
    A, B, C, D = paper_difference(rng, 5, 2)
    dense = np.kron(A, B) - np.kron(C, D)
    inv = kl.KronDiff(*(convert(M, backend, dtype) for M in (A, B, C, D))).inv()
    assert isinstance(inv, kl.KronEigen)
    v = rng.standard_normal(10)
    # two Cholesky factorizations, two eigh and the apply, each backward stable: 10·cond
    assert_close(inv @ convert(v, backend, dtype), np.linalg.solve(dense, v), dtype=dtype,
                 bound=10 * np.linalg.cond(dense), label="KronDiff")


def test_near_singular_denominator_is_detected_and_damping_regularizes():
    # C⊗D → A⊗B: denominators 1 − s1·s2 → 0
    rng = np.random.default_rng(12)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = A * (1 - 1e-15), B.copy()
    with pytest.raises(kl.SingularDenominatorError, match=r"smallest denominator .* pass damping > 0"):
        kl.KronDiff(A, B, C, D).inv()
    damped = kl.KronDiff(A, B, C, D).inv(damping=0.1)
    dense = np.kron(A, B) - np.kron(C, D) + 0.1 * np.kron(A, B)
    assert_close(damped.to_dense(), np.linalg.inv(dense), dtype="float64", bound=10 * np.linalg.cond(dense),
                 label="KronDiff")


def test_rtol_sets_the_smallest_tolerated_denominator(dtype):
    # C = (1 − 10⁻³)·A, D = B: every denominator 1 − s1·s2 equals 10⁻³
    rng = np.random.default_rng(17)
    A, B = spd(rng, 3), spd(rng, 2)
    args = [convert(M, "numpy", dtype) for M in (A, B, (1 - 1e-3) * A, B)]
    op = kl.KronDiff(*args)
    with pytest.raises(kl.SingularDenominatorError, match=r"is 0\.001 ≤ rtol = 0\.002"):
        op.inv(rtol=2e-3)
    dense = np.kron(A, B) * 1e-3
    # rounding C to the dtype moves the denominators by u·‖A⊗B‖, i.e. by 10³·u relative to 10⁻³
    assert_close(op.inv(rtol=5e-4).to_dense(), np.linalg.inv(dense), dtype=dtype,
                 bound=10 * 1e3 * np.linalg.cond(dense), label="KronDiff(near-singular)")


def test_default_rtol_is_a_hundred_machine_epsilons_of_the_dtype():
    # denominators 10⁻⁸: far above 100·eps in float64 (2.2e-14), below it in float32 (1.2e-5)
    rng = np.random.default_rng(18)
    A, B = spd(rng, 3), spd(rng, 2)
    C = (1 - 1e-8) * A
    kl.KronDiff(A, B, C, B).inv()
    with pytest.raises(kl.SingularDenominatorError, match=r"rtol = 1\.19e-05"):
        kl.KronDiff(*(M.astype(np.float32) for M in (A, B, A, B))).inv()
    # rtol=0 accepts any nonzero denominator
    kl.KronDiff(*(M.astype(np.float32) for M in (A, B, (1 - 1e-3) * A, B))).inv(rtol=0.0)


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
    assert_close(x, np.linalg.solve(dense, v), dtype="float64", bound=10 * cond, label="KronDiff(near-singular)")


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
    assert_close(inv.to_dense(), np.linalg.inv(dense), dtype="float32", bound=10 * np.linalg.cond(dense),
                 label="KronDiff")


def test_eigh_failure_in_float64_raises_naming_the_matrix(monkeypatch):
    import array_api_compat.numpy as xp_numpy

    monkeypatch.setattr(xp_numpy.linalg, "eigh", lambda a: (np.full(len(a), np.nan), np.eye(len(a))))
    rng = np.random.default_rng(16)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(np.linalg.LinAlgError, match=r"A\^\(-1/2\) C A\^\(-T/2\): eigendecomposition of the \(3, 3\) matrix failed"):
        kl.KronDiff(A, B, 0.3 * A, 0.3 * B).inv()


@pytest.mark.parametrize("position", range(4))
def test_every_argument_is_checked_and_named(position):
    rng = np.random.default_rng(19)
    args = [spd(rng, 3), spd(rng, 2), 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)]
    name = "ABCD"[position]
    bad = list(args)
    bad[position] = args[position].tolist()
    with pytest.raises(TypeError, match=f"^{name}: expected a NumPy array or a torch tensor, got list$"):
        kl.KronDiff(*bad)
    # one float64 argument among float32 ones promotes the operator
    mixed = [M.astype(np.float32) for M in args]
    mixed[position] = args[position]
    assert kl.KronDiff(*mixed).dtype == np.float64


def test_shape_errors_and_the_inverse_declaration():
    rng = np.random.default_rng(20)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(ValueError, match=r"^D: expected shape \(2, 2\) \(as B\), got \(3, 3\)$"):
        kl.KronDiff(A, B, A, A)
    inv = kl.KronDiff(A, B, 0.3 * A, 0.3 * B).inv()
    assert inv.orthonormal is False  # K₁ ⊗ K₂ is A-orthogonal, not orthogonal


def test_eigh_failure_names_the_second_pair(monkeypatch):
    import array_api_compat.numpy as xp_numpy

    real = xp_numpy.linalg.eigh
    monkeypatch.setattr(xp_numpy.linalg, "eigh",
                        lambda a: (np.full(len(a), np.nan), np.eye(len(a))) if len(a) == 2 else real(a))
    rng = np.random.default_rng(21)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(np.linalg.LinAlgError, match=r"^B\^\(-1/2\) D B\^\(-T/2\): eigendecomposition of the \(2, 2\)"):
        kl.KronDiff(A, B, 0.3 * A, 0.3 * B).inv()
