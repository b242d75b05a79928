import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert, to_numpy
from .helpers import assert_close, logdet_bound, spd
from .operator_contract import ErrorModel, InvertibleOperatorContract
from .test_kron import kron_eigen_bound


def random_orthogonal(rng, n):
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def dense_kron_eigen(bases, values):
    K = bases[0]
    for B in bases[1:]:
        K = np.kron(K, B)
    return K @ np.diag(values.reshape(-1)) @ K.T




class TestKronEigenOrthonormalFullValues(InvertibleOperatorContract):
    # S is a full array, not an outer product (EK-FAC's corrected eigenvalues)
    label = "KronEigen(orthonormal)"
    symmetric = True

    def build(self, rng, backend, dtype):
        bases = [random_orthogonal(rng, n) for n in (3, 4)]
        values = rng.uniform(0.5, 2.0, size=(3, 4))
        op = kl.KronEigen([convert(K, backend, dtype) for K in bases], convert(values, backend, dtype),
                          orthonormal=True)
        return op, dense_kron_eigen(bases, values), ErrorModel(
            kron_eigen_bound(bases), dense_kron_eigen([np.abs(K) for K in bases], values))


class TestKronEigenGeneralBases(InvertibleOperatorContract):
    label = "KronEigen(general)"
    symmetric = True

    def build(self, rng, backend, dtype):
        bases = [rng.standard_normal((n, n)) + 2 * n * np.eye(n) for n in (2, 3, 2)]
        values = rng.uniform(0.5, 2.0, size=(2, 3, 2))
        op = kl.KronEigen([convert(K, backend, dtype) for K in bases], convert(values, backend, dtype))
        return op, dense_kron_eigen(bases, values), ErrorModel(
            kron_eigen_bound(bases), dense_kron_eigen([np.abs(K) for K in bases], values))


@pytest.mark.parametrize("orthonormal", [True, False])
def test_structured_methods(backend, dtype, orthonormal):
    rng = np.random.default_rng(3)
    if orthonormal:
        bases = [random_orthogonal(rng, n) for n in (3, 2)]
    else:
        bases = [rng.standard_normal((n, n)) + 2 * n * np.eye(n) for n in (3, 2)]
    values = rng.uniform(0.5, 2.0, size=(3, 2))
    dense = dense_kron_eigen(bases, values)
    op = kl.KronEigen([convert(K, backend, dtype) for K in bases], convert(values, backend, dtype),
                      orthonormal=orthonormal)
    label = "KronEigen(orthonormal)" if orthonormal else "KronEigen(general)"
    # diag = (⊗ Kⱼ∘Kⱼ) vec S: sums of N positive terms (S > 0); the trace sums N of them again
    N = len(dense)
    assert_close(op.diagonal(), np.diag(dense), dtype=dtype, bound=kron_eigen_bound(bases), label=label)
    assert_close(np.array([to_numpy(op.trace())]), [np.trace(dense)], dtype=dtype,
                 bound=kron_eigen_bound(bases) + N, label=label)
    assert_close(np.array([to_numpy(op.logdet())]), [np.linalg.slogdet(dense)[1]], dtype=dtype,
                 bound=logdet_bound(dense), label=label)


def test_damped_kronecker_inverse(backend, dtype):
    # (A⊗B + λI)⁻¹ from Kron.eigh, the K-FAC "exact Tikhonov" block (spec §7.1)
    rng = np.random.default_rng(4)
    A, B = spd(rng, 4), spd(rng, 3)
    op = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype)).eigh().shift(0.5).inv()
    expected = np.linalg.inv(np.kron(A, B) + 0.5 * np.eye(12))
    # eigh backward stable per factor, then the apply, amplified by cond(A⊗B + λI)
    bound = kron_eigen_bound([A, B]) * np.linalg.cond(np.kron(A, B) + 0.5 * np.eye(12))
    assert_close(op.to_dense(), expected, dtype=dtype, bound=bound, label="KronEigen(orthonormal)")


def test_factored_damping_formula_of_contract():
    # contracts.md: ((G + c/π I) ⊗ (A + cπ I))⁻¹ as KronEigen from the undamped eigenbases
    rng = np.random.default_rng(5)
    G, A, c, pi = spd(rng, 3), spd(rng, 4), 0.7, 1.3
    g, QG = np.linalg.eigh(G)
    a, QA = np.linalg.eigh(A)
    op = kl.KronEigen((QG, QA), 1 / np.outer(g + c / pi, a + c * pi), orthonormal=True)
    expected = np.linalg.inv(np.kron(G + c / pi * np.eye(3), A + c * pi * np.eye(4)))
    assert_close(op.to_dense(), expected, dtype="float64", bound=kron_eigen_bound([G, A]) * np.linalg.cond(expected),
                 label="KronEigen(orthonormal)")


def test_with_values_keeps_bases():
    rng = np.random.default_rng(6)
    bases = [random_orthogonal(rng, 2), random_orthogonal(rng, 3)]
    op = kl.KronEigen(bases, np.ones((2, 3)), orthonormal=True)
    new = rng.uniform(1, 2, (2, 3))
    dense = dense_kron_eigen(bases, new)
    kappa = np.linalg.norm(dense_kron_eigen([abs(K) for K in bases], new)) / np.linalg.norm(dense)
    assert_close(op.with_values(new).to_dense(), dense, dtype="float64", bound=kron_eigen_bound(bases) * kappa,
                 label="KronEigen(orthonormal)")


def test_errors():
    with pytest.raises(ValueError, match=r"values: expected shape \(2, 3\), got \(6,\)"):
        kl.KronEigen([np.eye(2), np.eye(3)], np.ones(6))
    with pytest.raises(ValueError, match=r"bases\[1\]: expected a square matrix, got shape \(3, 2\)"):
        kl.KronEigen([np.eye(2), np.ones((3, 2))], np.ones((2, 3)))
    with pytest.raises(ValueError, match="values: expected finite entries"):
        kl.KronEigen([np.eye(2)], np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="shift: needs orthonormal bases"):
        kl.KronEigen([np.eye(2)], np.ones(2)).shift(1.0)
    with pytest.raises(np.linalg.LinAlgError, match="values contain zeros"):
        kl.KronEigen([np.eye(2)], np.array([1.0, 0.0])).inv()
    with pytest.raises(np.linalg.LinAlgError, match="values must be positive"):
        kl.KronEigen([np.eye(2)], np.array([1.0, -1.0])).logdet()


def test_inverse_accepts_unit_values_and_logdet_refuses_zero():
    # 1 is a valid eigenvalue (the identity); 0 is not, for logdet as for inv
    np.testing.assert_array_equal(kl.KronEigen([np.eye(2)], np.ones(2)).inv().to_dense(), np.eye(2))
    with pytest.raises(np.linalg.LinAlgError, match="^KronEigen.logdet: values must be positive$"):
        kl.KronEigen([np.eye(2)], np.array([1.0, 0.0])).logdet()


def test_derived_operators_keep_the_orthonormal_declaration():
    rng = np.random.default_rng(7)
    bases = [random_orthogonal(rng, 2), random_orthogonal(rng, 3)]
    op = kl.KronEigen(bases, rng.uniform(1, 2, (2, 3)), orthonormal=True)
    for derived in (op.shift(0.5), op.inv(), op.with_values(np.ones((2, 3)))):
        assert derived.orthonormal is True
        derived.shift(0.1)  # would raise for a basis not declared orthonormal
    general = kl.KronEigen(bases, np.ones((2, 3)))
    assert general.with_values(np.ones((2, 3))).orthonormal is False
    assert general.inv().orthonormal is False


def test_values_and_bases_promote_to_the_wider_dtype():
    f32, f64 = np.eye(2, dtype=np.float32), np.ones(2)
    assert kl.KronEigen([f32], f64).dtype == np.float64
    assert kl.KronEigen([f64.reshape(2, 1) * np.eye(2)], np.ones(2, np.float32)).dtype == np.float64
    assert kl.KronEigen([f32], np.ones(2, np.float32)).dtype == np.float32


def test_construction_error_messages():
    with pytest.raises(ValueError, match="^bases: expected at least one basis matrix, got none$"):
        kl.KronEigen([], np.ones(1))
    with pytest.raises(TypeError, match="^values: expected a NumPy array or a torch tensor, got list$"):
        kl.KronEigen([np.eye(2)], [1.0, 2.0])
    with pytest.raises(TypeError, match=r"^bases\[0\]: expected a NumPy array or a torch tensor, got list$"):
        kl.KronEigen([[[1.0]]], np.ones(1))
    with pytest.raises(ValueError, match="^values: expected finite entries, got NaN or inf$"):
        kl.KronEigen([np.eye(2)], np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"^KronEigen\.shift: needs orthonormal bases \(orthonormal=True\): with general bases K diag\(S \+ c\) Kᵀ is not M \+ cI$"):
        kl.KronEigen([np.eye(2)], np.ones(2)).shift(1.0)
    with pytest.raises(np.linalg.LinAlgError, match="^KronEigen.inv: values contain zeros; the matrix is singular$"):
        kl.KronEigen([np.eye(2)], np.array([1.0, 0.0])).inv()
    with pytest.raises(np.linalg.LinAlgError, match=r"^KronEigen\.inv: bases\[1\] is singular"):
        kl.KronEigen([np.eye(2), np.zeros((2, 2))], np.ones((2, 2))).inv()
