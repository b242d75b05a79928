import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert, to_numpy
from .chains import chain, dense_tridiagonal
from .helpers import assert_close
from .operator_contract import OperatorContract

SHAPES = {
    "one block": ([3], [2]),
    "two blocks": ([3, 4], [2, 3]),
    "four blocks": ([3, 4, 2, 3], [2, 3, 4, 2]),
}


def as_backend(pairs, backend, dtype):
    return [tuple(convert(M, backend, dtype) for M in p) for p in pairs]


def reference_inverse(diag, offdiag):
    """F̂⁻¹ by dense algebra: chain rule of the Gaussian graphical model, from scratch."""
    F, sizes = dense_tridiagonal(diag, offdiag)
    s = np.cumsum([0, *sizes])
    b = len(sizes)
    Xi = np.eye(s[-1])
    Lam = np.zeros_like(Xi)
    for i in range(b):
        Fii = F[s[i] : s[i + 1], s[i] : s[i + 1]]
        if i < b - 1:
            Fij = F[s[i] : s[i + 1], s[i + 1] : s[i + 2]]
            Fjj = F[s[i + 1] : s[i + 2], s[i + 1] : s[i + 2]]
            Psi = Fij @ np.linalg.inv(Fjj)
            Xi[s[i] : s[i + 1], s[i + 1] : s[i + 2]] = -Psi
            Sigma = Fii - Psi @ Fjj @ Psi.T
        else:
            Sigma = Fii
        Lam[s[i] : s[i + 1], s[i] : s[i + 1]] = np.linalg.inv(Sigma)
    return Xi.T @ Lam @ Xi


@pytest.mark.parametrize("shape", SHAPES)
class TestBlockTridiagInverse(OperatorContract):
    label = "BlockTridiagInverse"
    symmetric = True

    @pytest.fixture
    def case(self, backend, dtype, shape):
        rng = np.random.default_rng(len(shape))
        diag, offdiag = chain(rng, *SHAPES[shape])
        op = kl.BlockTridiagInverse(as_backend(diag, backend, dtype), as_backend(offdiag, backend, dtype))
        dense = reference_inverse(diag, offdiag)
        return op, dense, np.linalg.cond(dense), rng, backend, dtype


@pytest.mark.parametrize("shape", SHAPES)
def test_inverse_reproduces_every_given_block_and_is_block_tridiagonal(backend, dtype, shape):
    rng = np.random.default_rng(21)
    diag, offdiag = chain(rng, *SHAPES[shape])
    op = kl.BlockTridiagInverse(as_backend(diag, backend, dtype), as_backend(offdiag, backend, dtype))
    inv_f = to_numpy(op.to_dense()).astype(np.float64)
    F_tridiag, sizes = dense_tridiagonal(diag, offdiag)
    s = np.cumsum([0, *sizes])
    cond = np.linalg.cond(inv_f)
    # off-band blocks of F̂⁻¹ vanish
    for i in range(len(sizes)):
        for j in range(len(sizes)):
            if abs(i - j) > 1:
                assert np.abs(inv_f[s[i] : s[i + 1], s[j] : s[j + 1]]).max() <= 1e-12
    # F̂ = (F̂⁻¹)⁻¹ agrees with every given block on the tridiagonal
    F_hat = np.linalg.inv(inv_f)
    for i in range(len(sizes)):
        for j in range(max(0, i - 1), min(len(sizes), i + 2)):
            assert_close(F_hat[s[i] : s[i + 1], s[j] : s[j + 1]], F_tridiag[s[i] : s[i + 1], s[j] : s[j + 1]],
                         dtype=dtype, cond=cond, label="BlockTridiagInverse")


def test_one_block_is_plain_kronecker_inverse():
    rng = np.random.default_rng(22)
    (L, R), = chain(rng, [3], [4])[0]
    op = kl.BlockTridiagInverse([(L, R)], [])
    np.testing.assert_allclose(op.to_dense(), np.linalg.inv(np.kron(L, R)), rtol=1e-10, atol=1e-12)


def test_logdet(backend):
    rng = np.random.default_rng(23)
    diag, offdiag = chain(rng, *SHAPES["four blocks"])
    op = kl.BlockTridiagInverse(as_backend(diag, backend, "float64"), as_backend(offdiag, backend, "float64"))
    expected = np.linalg.slogdet(reference_inverse(diag, offdiag))[1]
    assert_close(np.array([to_numpy(op.logdet())]), [expected], dtype="float64", cond=100,
                 label="BlockTridiagInverse")


def test_errors():
    rng = np.random.default_rng(24)
    diag, offdiag = chain(rng, [3, 4], [2, 3])
    with pytest.raises(ValueError, match="offdiag: expected 1 pairs for 2 diagonal blocks, got 0"):
        kl.BlockTridiagInverse(diag, [])
    with pytest.raises(ValueError, match="diag: expected at least one"):
        kl.BlockTridiagInverse([], [])
    bad = [(offdiag[0][0].T, offdiag[0][1])]
    with pytest.raises(ValueError, match=r"offdiag\[0\]\[0\]: expected shape \(3, 4\) to couple blocks 0 and 1, got \(4, 3\)"):
        kl.BlockTridiagInverse(diag, bad)
    indefinite = [(-diag[0][0], diag[0][1]), diag[1]]
    with pytest.raises(kl.NotPositiveDefiniteError, match=r"diag\[0\]\[0\]: expected a symmetric positive definite"):
        kl.BlockTridiagInverse(indefinite, offdiag)
    # cross moments as large as the diagonal make Σ_{0|1} singular
    L, R = diag[0]
    with pytest.raises(kl.SingularDenominatorError, match="block 0"):
        kl.BlockTridiagInverse([(L, R), (L, R)], [(L, R)])
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"mixed array backends .*offdiag\[0\]\[1\] is torch"):
        kl.BlockTridiagInverse(diag, [(offdiag[0][0], torch.as_tensor(offdiag[0][1]))])


@pytest.mark.parametrize("shape", SHAPES)
def test_rebuilt_from_its_parts_as_plain_arrays_it_applies_as_the_original(backend, shape):
    rng = np.random.default_rng(25)
    diag, offdiag = chain(rng, *SHAPES[shape])
    op = kl.BlockTridiagInverse(as_backend(diag, backend, "float64"), as_backend(offdiag, backend, "float64"))
    # the parts as arrays only, as another process receives them, then the operators again
    couplings = [tuple(M.copy() if backend == "numpy" else M.clone() for M in p) for p in op.couplings]
    last = op.conditionals[-1]
    conditionals = [kl.KronEigen(c.bases, c.values) for c in op.conditionals[:-1]]
    rebuilt = kl.BlockTridiagInverse.from_parts(couplings, [*conditionals, kl.Kron(*last.factors)])
    assert rebuilt.shape == op.shape and rebuilt.n_blocks == op.n_blocks
    np.testing.assert_array_equal(to_numpy(rebuilt.to_dense()), to_numpy(op.to_dense()))
    np.testing.assert_allclose(to_numpy(rebuilt.to_dense()), reference_inverse(diag, offdiag),
                               rtol=1e-8, atol=1e-10)


def test_from_parts_refuses_parts_that_do_not_link():
    rng = np.random.default_rng(26)
    op = kl.BlockTridiagInverse(*chain(rng, [3, 4], [2, 3]))
    with pytest.raises(ValueError, match="couplings: expected one pair per link of the 2 conditionals"):
        kl.BlockTridiagInverse.from_parts([], op.conditionals)
    P, Q = op.couplings[0]
    with pytest.raises(ValueError, match=r"couplings\[0\]: expected factors whose Kronecker product is 6 x 12"):
        kl.BlockTridiagInverse.from_parts([(P.T, Q)], op.conditionals)
    with pytest.raises(ValueError, match=r"conditionals\[1\]: expected a square operator"):
        kl.BlockTridiagInverse.from_parts(op.couplings, [op.conditionals[0], kl.Kron(P, Q)])
