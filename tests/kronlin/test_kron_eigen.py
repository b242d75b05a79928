import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert, to_numpy
from .helpers import assert_close, spd
from .operator_contract import InvertibleOperatorContract


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
        return op, dense_kron_eigen(bases, values), 4.0


class TestKronEigenGeneralBases(InvertibleOperatorContract):
    label = "KronEigen(general)"
    symmetric = True

    def build(self, rng, backend, dtype):
        bases = [rng.standard_normal((n, n)) + 2 * n * np.eye(n) for n in (2, 3, 2)]
        values = rng.uniform(0.5, 2.0, size=(2, 3, 2))
        op = kl.KronEigen([convert(K, backend, dtype) for K in bases], convert(values, backend, dtype))
        return op, dense_kron_eigen(bases, values), 30.0


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
    assert_close(op.diagonal(), np.diag(dense), dtype=dtype, cond=30, label=label)
    assert_close(np.array([to_numpy(op.trace())]), [np.trace(dense)], dtype=dtype, cond=30, label=label)
    assert_close(np.array([to_numpy(op.logdet())]), [np.linalg.slogdet(dense)[1]], dtype=dtype,
                 cond=100, label=label)


def test_damped_kronecker_inverse(backend, dtype):
    # (A⊗B + λI)⁻¹ from Kron.eigh, the K-FAC "exact Tikhonov" block (spec §7.1)
    rng = np.random.default_rng(4)
    A, B = spd(rng, 4), spd(rng, 3)
    op = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype)).eigh().shift(0.5).inv()
    expected = np.linalg.inv(np.kron(A, B) + 0.5 * np.eye(12))
    assert_close(op.to_dense(), expected, dtype=dtype, cond=20, label="KronEigen(orthonormal)")


def test_factored_damping_formula_of_contract():
    # contracts.md: ((G + c/π I) ⊗ (A + cπ I))⁻¹ as KronEigen from the undamped eigenbases
    rng = np.random.default_rng(5)
    G, A, c, pi = spd(rng, 3), spd(rng, 4), 0.7, 1.3
    g, QG = np.linalg.eigh(G)
    a, QA = np.linalg.eigh(A)
    op = kl.KronEigen((QG, QA), 1 / np.outer(g + c / pi, a + c * pi), orthonormal=True)
    expected = np.linalg.inv(np.kron(G + c / pi * np.eye(3), A + c * pi * np.eye(4)))
    np.testing.assert_allclose(op.to_dense(), expected, atol=1e-12)


def test_with_values_keeps_bases():
    rng = np.random.default_rng(6)
    bases = [random_orthogonal(rng, 2), random_orthogonal(rng, 3)]
    op = kl.KronEigen(bases, np.ones((2, 3)), orthonormal=True)
    new = rng.uniform(1, 2, (2, 3))
    np.testing.assert_allclose(op.with_values(new).to_dense(), dense_kron_eigen(bases, new), atol=1e-12)


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
