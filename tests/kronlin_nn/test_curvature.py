import math
import warnings

import pytest
import torch

from kronlin_nn.curvature import (
    FactorError,
    KFACWarning,
    blockdiag_inverses,
    damped_inverses,
    tridiag_blocks,
    tridiag_inverse,
)
from kronlin_nn.damping import pi_scales

from ..kronlin.helpers import assert_close


def _joint_moments(dims_a, dims_g, n=200, seed=0):
    """Consistent diagonal and cross moments of random 'activations' and 'gradients'."""
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, d, generator=g, dtype=torch.float64) for d in dims_a]
    gr = [torch.randn(n, d, generator=g, dtype=torch.float64) for d in dims_g]
    for i in range(1, len(a)):  # correlate consecutive layers
        a[i][:, : min(dims_a[i], dims_a[i - 1])] += a[i - 1][:, : min(dims_a[i], dims_a[i - 1])]
        gr[i][:, : min(dims_g[i], dims_g[i - 1])] += gr[i - 1][:, : min(dims_g[i], dims_g[i - 1])]
    A = [x.T @ x / n for x in a]
    G = [x.T @ x / n for x in gr]
    A_cross = [a[i].T @ a[i + 1] / n for i in range(len(a) - 1)]
    G_cross = [gr[i].T @ gr[i + 1] / n for i in range(len(gr) - 1)]
    return A, G, A_cross, G_cross


def test_blockdiag_inverses_match_dense_damped_kronecker_inverses():
    """Bound (units of u): the factor-wise Cholesky inverse and the dense reference's inverse
    each err by a few rounding errors times cond(F̃): 10·cond (seen: ≤ 4 u, cond ≈ 7)."""
    A, G, _, _ = _joint_moments([4, 3], [3, 2])
    pis = pi_scales(A, G)
    gammas = [0.1, 0.3]
    ops, kept = blockdiag_inverses(A, G, pis, gammas)
    assert kept == gammas
    for op, gamma in zip(ops, gammas, strict=True):
        blocks = [torch.kron(g + gamma / pi * torch.eye(g.shape[0], dtype=g.dtype),
                             a + gamma * pi * torch.eye(a.shape[0], dtype=a.dtype))
                  for a, g, pi in zip(A, G, pis, strict=True)]
        dense = torch.block_diag(*blocks)
        assert_close(op.to_dense(), torch.linalg.inv(dense), dtype="float64",
                     bound=10 * torch.linalg.cond(dense).item(), label="blockdiag_inverses")


def test_tridiag_inverse_reproduces_the_damped_tridiagonal_blocks():
    """Spec §13: inverting Ξᵀ Λ Ξ gives the damped F̃ on the tridiagonal, undamped cross blocks.

    Bound (units of u): the structured inverse and its dense re-inversion each err by a few
    rounding errors times cond(F̂⁻¹): 10·cond (seen: ≤ 9 u, cond ≈ 34).
    """
    A, G, A_cross, G_cross = _joint_moments([4, 3, 5, 2], [3, 5, 2, 3])
    pis = pi_scales(A, G)
    gamma = 0.2
    diag, offdiag = tridiag_blocks(A, G, A_cross, G_cross, pis, gamma)
    inverse = tridiag_inverse(diag, offdiag).to_dense()
    F_hat = torch.linalg.inv(inverse)
    bound = 10 * torch.linalg.cond(inverse).item()
    sizes = [a.shape[0] * g.shape[0] for a, g in zip(A, G, strict=True)]
    offs = [0, *torch.cumsum(torch.tensor(sizes), 0).tolist()]

    def block(i, j):
        return F_hat[offs[i]:offs[i + 1], offs[j]:offs[j + 1]]

    for i, (a, g, pi) in enumerate(zip(A, G, pis, strict=True)):
        damped = torch.kron(g + gamma / pi * torch.eye(g.shape[0], dtype=g.dtype),
                            a + gamma * pi * torch.eye(a.shape[0], dtype=a.dtype))
        assert_close(block(i, i), damped, dtype="float64", bound=bound, label="tridiag diagonal")
    for i in range(len(A) - 1):
        # row-major: block (i, i+1) = G_{i,i+1} ⊗ Ā_{i-1,i}
        assert_close(block(i, i + 1), torch.kron(G_cross[i], A_cross[i]), dtype="float64",
                     bound=bound, label="tridiag cross")


def test_damped_inverses_retry_float32_in_float64():
    """The float64 retry's inverse, returned in float32.

    Bound (units of u₃₂): the float64 Cholesky inverse errs by ≈ cond·u₆₄ (cond = 2·10⁹ here,
    3.7 u₃₂), plus the rounding to float32 (1 u₃₂): 2 + 2·cond·u₆₄/u₃₂.
    """
    M = torch.ones(2, 2, dtype=torch.float32)  # singular; 1 + 1e-9 rounds to 1 in float32
    shift = torch.tensor([1e-9], dtype=torch.float32)
    with pytest.warns(KFACWarning, match="float64"):
        inv, ok = damped_inverses(M, shift, "A[0]")
    assert ok.tolist() == [True] and inv.dtype == torch.float32
    damped = M.double() + shift.double() * torch.eye(2, dtype=torch.float64)
    cond = torch.linalg.cond(damped).item()
    assert_close(inv[0], torch.linalg.inv(damped), dtype="float32",
                 bound=2 + 2 * cond * 2.0**-53 / 2.0**-24, label="damped_inverses float64 retry")


def test_indefinite_or_non_finite_factors_raise_factor_error():
    A, G, A_cross, G_cross = _joint_moments([3, 2], [2, 2])
    pis = pi_scales(A, G)
    bad = [-torch.eye(3, dtype=torch.float64), A[1]]
    with pytest.raises(FactorError, match="positive definite"):
        blockdiag_inverses(bad, G, pis, [0.1])
    with pytest.raises(FactorError, match="NaN"):
        blockdiag_inverses([A[0] * math.nan, A[1]], G, pis, [0.1])
    diag, offdiag = tridiag_blocks(bad, G, A_cross, G_cross, pis, 0.1)
    with pytest.raises(FactorError, match="block-tridiagonal"):
        tridiag_inverse(diag, offdiag)


def test_blockdiag_drops_only_the_failing_candidates():
    A, G, _, _ = _joint_moments([3], [2])
    A = [A[0] - (torch.linalg.eigvalsh(A[0])[0] + 1) * torch.eye(3, dtype=torch.float64)]
    pis = [torch.tensor(1.0, dtype=torch.float64)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops, kept = blockdiag_inverses(A, G, pis, [1e-6, 10.0])
    assert kept == [10.0] and len(ops) == 1


def test_the_float64_retry_warning_names_the_factor():
    """blockdiag_inverses labels each block by its position: the warning says which factor."""
    A = [torch.eye(2, dtype=torch.float32), torch.ones(2, 2, dtype=torch.float32)]
    G = [torch.eye(2, dtype=torch.float32)] * 2
    pis = [torch.tensor(1.0)] * 2
    with pytest.warns(KFACWarning) as caught:
        blockdiag_inverses(A, G, pis, [1e-9])  # 1 + 1e-9 rounds to 1 in float32: singular
    assert [str(w.message) for w in caught] == ["A[1]: float32 Cholesky failed; retried in float64"]


def test_diagonal_candidates_keep_only_positive_finite_damped_diagonals():
    """diag(D + γ²)⁻¹ exists where every entry of D + γ² is positive and finite."""
    from kronlin_nn.curvature import diagonal_candidates

    D = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64)
    gammas = torch.tensor([0.0, 0.5], dtype=torch.float64)
    found = diagonal_candidates(D, gammas)
    assert found.ok.tolist() == [False, True]  # γ = 0 leaves a zero entry
    torch.testing.assert_close(found.build(1).to_dense(), torch.diag(1 / (D + 0.25)),
                               rtol=2.0**-52, atol=0)
    assert diagonal_candidates(torch.tensor([1.0, math.inf], dtype=torch.float64),
                               gammas).ok.tolist() == [False, False]

