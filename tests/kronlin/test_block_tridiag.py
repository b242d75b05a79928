import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert, to_numpy
from .chains import chain, dense_tridiagonal
from .helpers import assert_close, logdet_bound
from .operator_contract import ErrorModel, OperatorContract, stable_seed

SHAPES = {
    "one block": ([3], [2]),
    "two blocks": ([3, 4], [2, 3]),
    "four blocks": ([3, 4, 2, 3], [2, 3, 4, 2]),
}


def as_backend(pairs, backend, dtype):
    return [tuple(convert(M, backend, dtype) for M in p) for p in pairs]


def reference_inverse(diag, offdiag, damping=0.0, with_condition=False):
    """F̂⁻¹ by dense algebra: chain rule of the Gaussian graphical model, from scratch.

    ``damping`` adds ``δ·F_ii`` to every conditional covariance but the last (``Σ_b = F_bb``).
    With ``with_condition``, also the sum of the conditions of the pieces a setup factorizes
    (what amplifies the rounding of the inputs into the operator's error).
    """
    F, sizes = dense_tridiagonal(diag, offdiag)
    s = np.cumsum([0, *sizes])
    b = len(sizes)
    Xi = np.eye(s[-1])
    Lam = np.zeros_like(Xi)
    condition = 0.0
    for i in range(b):
        Fii = F[s[i] : s[i + 1], s[i] : s[i + 1]]
        if i < b - 1:
            Fij = F[s[i] : s[i + 1], s[i + 1] : s[i + 2]]
            Fjj = F[s[i + 1] : s[i + 2], s[i + 1] : s[i + 2]]
            Psi = Fij @ np.linalg.inv(Fjj)
            Xi[s[i] : s[i + 1], s[i + 1] : s[i + 2]] = -Psi
            Sigma = Fii - Psi @ Fjj @ Psi.T + damping * Fii
        else:
            Sigma = Fii
        Lam[s[i] : s[i + 1], s[i] : s[i + 1]] = np.linalg.inv(Sigma)
        L, R = diag[i]
        # Cholesky of Lᵢ and Rᵢ; the conditional's denominators 1 − s₁s₂ ≥ λ_min(Σ)/λ_max(Lᵢ⊗Rᵢ)
        condition += np.linalg.cond(L) + np.linalg.cond(R)
        condition += np.linalg.norm(Fii, 2) / np.linalg.eigvalsh(Sigma)[0] if i < b - 1 else 0.0
    if with_condition:
        return Xi.T @ Lam @ Xi, condition
    return Xi.T @ Lam @ Xi


@pytest.mark.parametrize("shape", SHAPES)
class TestBlockTridiagInverse(OperatorContract):
    label = "BlockTridiagInverse"
    symmetric = True

    @pytest.fixture
    def case(self, backend, dtype, shape):
        rng = np.random.default_rng(stable_seed("BlockTridiagInverse", shape, backend, dtype))
        diag, offdiag = chain(rng, *SHAPES[shape])
        op = kl.BlockTridiagInverse(as_backend(diag, backend, dtype), as_backend(offdiag, backend, dtype))
        dense, condition = reference_inverse(diag, offdiag, with_condition=True)
        # the setup factorizes each Lᵢ, Rᵢ (Cholesky) and each conditional (generalized eigh),
        # all backward stable: its forward error is the inputs' rounding amplified by the sum of
        # their conditions; the float64 reference, computed alike, errs as much (factor 2). One
        # apply: three sweeps of Kronecker products (dot products of lengths lᵢ + rᵢ, twice in Λ)
        sweeps = 4 * sum(sum(M.shape[0] for M in pair) for pair in diag)
        model = ErrorModel(2 * condition, apply=sweeps)
        return op, dense, model, rng, backend, dtype


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
                         dtype=dtype, bound=cond, label="BlockTridiagInverse")


def test_one_block_is_plain_kronecker_inverse():
    rng = np.random.default_rng(22)
    (L, R), = chain(rng, [3], [4])[0]
    op = kl.BlockTridiagInverse([(L, R)], [])
    assert_close(op.to_dense(), np.linalg.inv(np.kron(L, R)), dtype="float64",
                 bound=np.linalg.cond(np.kron(L, R)), label="BlockTridiagInverse")


@pytest.mark.parametrize("damping", [0.05, 1.0])
def test_damping_is_added_to_every_conditional_covariance(backend, dtype, damping):
    rng = np.random.default_rng(25)
    diag, offdiag = chain(rng, *SHAPES["four blocks"])
    op = kl.BlockTridiagInverse(as_backend(diag, backend, dtype), as_backend(offdiag, backend, dtype),
                                damping=damping)
    dense = reference_inverse(diag, offdiag, damping)
    assert_close(op.to_dense(), dense, dtype=dtype, bound=np.linalg.cond(dense), label="BlockTridiagInverse")
    # the damped operator is a different matrix: the check above could not pass with damping ignored
    undamped = reference_inverse(diag, offdiag)
    assert np.linalg.norm(dense - undamped) > 1e-3 * damping * np.linalg.norm(undamped)


def test_damping_rescues_a_singular_conditional():
    rng = np.random.default_rng(26)
    L, R = chain(rng, [3], [2])[0][0]
    # cross moments equal to the diagonal ones: Σ_{0|1} = 0 without damping, δ·L⊗R with it
    op = kl.BlockTridiagInverse([(L, R), (L, R)], [(L, R)], damping=0.5)
    dense = reference_inverse([(L, R), (L, R)], [(L, R)], 0.5)
    assert_close(op.to_dense(), dense, dtype="float64", bound=np.linalg.cond(dense), label="BlockTridiagInverse")


def test_logdet(backend):
    rng = np.random.default_rng(23)
    diag, offdiag = chain(rng, *SHAPES["four blocks"])
    op = kl.BlockTridiagInverse(as_backend(diag, backend, "float64"), as_backend(offdiag, backend, "float64"))
    dense = reference_inverse(diag, offdiag)
    expected = np.linalg.slogdet(dense)[1]
    assert_close(np.array([to_numpy(op.logdet())]), [expected], dtype="float64", bound=logdet_bound(dense),
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
