r"""The damped inverses :math:`\breve F_\gamma^{-1}`, :math:`\hat F_\gamma^{-1}` as kronlin operators.

Kronecker block ``i``'s damped factors are (paper §6.3; spec §3.2, §8)

.. math::
    \bar A^\gamma_i = \bar A_i + \pi_i\gamma I, \qquad G^\gamma_i = \kappa\tilde G_i + (\gamma/\pi_i) I,

with :math:`\pi_i` from the undamped factors (:func:`kronlin_nn.damping.pi_scales`); a
diagonal block's is :math:`\kappa D + \gamma^2 I`. Each curvature block
(:mod:`kronlin_nn.blocks`) builds its own damped inverses for all γ candidates at once
(:class:`Candidates`); this module holds the shared factorizations and assembles the blocks:

- Block-diagonal (paper §4.2): ``BlockDiag`` of the blocks' inverses, e.g.
  ``BlockDiag([Kron((G^γ_i)⁻¹, (Ā^γ_i)⁻¹)])`` for linear layers
  (:func:`blockdiag_candidates`, :func:`blockdiag_inverses`). The factor
  inverses come from batched Cholesky factorizations, all γ candidates of a factor in one
  call. We measured this cheaper than one ``eigh`` per factor shared by the candidates:
  ``eigh`` of a 1000×1000 matrix costs ~3.5 Cholesky inverses on a 2-core CPU, and more on
  GPUs, and the eigenbasis route still needs one GEMM per candidate and factor to form the
  inverse (applying ``KronEigen`` instead would cost four GEMMs per step, not two).
- Block-tridiagonal (paper §4.3): ``BlockTridiagInverse`` over a chain of linear or
  convolution blocks, with the damped diagonal factors and the *undamped* cross moments
  :math:`\kappa\tilde G_{i,i+1}`, :math:`\bar A_{i-1,i}` (:func:`tridiag_blocks`,
  :func:`tridiag_inverse`); the other blocks sit on its block diagonal.

Failures (non-finite or indefinite factors, a float32 factorization that fails even in
float64) raise :class:`FactorError`; the optimizer then keeps its last good inverses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import kronlin

from .operators import Diagonal

__all__ = [
    "Candidates",
    "FactorError",
    "KFACWarning",
    "blockdiag_candidates",
    "blockdiag_inverses",
    "diagonal_candidates",
    "kronecker_candidates",
    "tridiag_blocks",
    "tridiag_inverse",
]


class FactorError(RuntimeError):
    """The factors cannot be inverted: non-finite entries or not positive definite after damping."""


class KFACWarning(UserWarning):
    """A recoverable numerical problem in K-FAC (a skipped refresh, a float64 retry, …)."""


def symmetrized(M: Tensor) -> Tensor:
    """``(M + Mᵀ)/2``: statistics are symmetric in exact arithmetic only."""
    return (M + M.T) / 2


def damped_inverses(M: Tensor, shifts: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``(M + c_j I)⁻¹`` for every shift ``c_j``, and which of them succeeded.

    One batched Cholesky factorization; a float32 failure retries in float64 with a warning
    (float32 only: the retry decision costs a host sync).

    Args:
        M: a symmetric PSD factor, shape ``(d, d)``.
        shifts: the damping values, shape ``(c,)``.
        name: the factor's name, for the warning.

    Returns:
        ``(inverses, ok)``: shape ``(c, d, d)`` and a boolean tensor of shape ``(c,)``; where
        ``ok`` is false (not positive definite even in float64) the inverse is the identity.

    """
    L, info = _damped_cholesky(M, shifts)
    if M.dtype == torch.float32 and bool((info != 0).any()):
        L, info = _damped_cholesky(M.double(), shifts.double())
        if bool((info == 0).any()):
            warnings.warn(f"{name}: float32 Cholesky failed; retried in float64", KFACWarning,
                          stacklevel=3)
    ok = info == 0
    eye = torch.eye(M.shape[0], dtype=L.dtype, device=L.device)
    L = torch.where(ok[:, None, None], L, eye)  # keeps the inverse defined where ok is false
    return _inverse_from_cholesky(L, eye).to(M.dtype), ok


def _inverse_from_cholesky(L: Tensor, eye: Tensor) -> Tensor:
    """``(L Lᵀ)⁻¹`` for a batch of lower Cholesky factors.

    On CPU, LAPACK's ``potri`` (``torch.cholesky_inverse``, ``n³/3`` flops after the
    factorization); on CUDA, a triangular solve and a GEMM, ``L⁻ᵀ L⁻¹``: more flops but about
    twice as fast as cuSOLVER's ``potri`` on an H200 for ``n`` = 500–1000 (measured, batch 3).
    Both compute the same matrix up to rounding.
    """
    if L.device.type == "cpu":
        return torch.cholesky_inverse(L)
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    return L_inv.transpose(-1, -2) @ L_inv


def _damped_cholesky(M: Tensor, shifts: Tensor) -> tuple[Tensor, Tensor]:
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    return torch.linalg.cholesky_ex(M + shifts[:, None, None] * eye)


def check_finite(factors: Sequence[Tensor]) -> None:
    """Raise :class:`FactorError` unless every factor is finite (one host sync)."""
    total = torch.stack([f.sum() for f in factors]).sum()
    if not bool(torch.isfinite(total)):
        raise FactorError("the curvature statistics contain NaN or inf")


@dataclass
class Candidates:
    """One block's damped inverses for ``c`` damping candidates, built once they are kept.

    Attributes:
        ok: shape ``(c,)``, whether candidate ``j``'s damped curvature is positive definite.
        build: ``build(j)`` returns candidate ``j``'s inverse as a kronlin operator.

    """

    ok: Tensor
    build: Callable[[int], kronlin.LinearOperator]


def kronecker_candidates(A: Tensor, G: Tensor, pi: Tensor, gammas: Tensor,
                         label: str = "") -> Candidates:
    r"""``Kron((G + γ/π I)⁻¹, (A + γπ I)⁻¹)`` for each γ of ``gammas`` (paper §6.3).

    Args:
        A: an undamped input factor :math:`\bar A`, ``(d_a, d_a)``.
        G: an undamped output factor :math:`\kappa\tilde G`, ``(d_g, d_g)``.
        pi: :math:`\pi`, a 0-d tensor.
        gammas: the damping candidates, shape ``(c,)``.
        label: the block's label in warnings (``A[label]``, ``G[label]``).

    """
    A_inv, ok_a = damped_inverses(symmetrized(A), gammas * pi, f"A[{label}]")
    G_inv, ok_g = damped_inverses(symmetrized(G), gammas / pi, f"G[{label}]")
    return Candidates(ok_a & ok_g, lambda j: kronlin.Kron(G_inv[j], A_inv[j]))


def diagonal_candidates(D: Tensor, gammas: Tensor) -> Candidates:
    r"""``diag(D + γ²)⁻¹`` for each γ of ``gammas``: a diagonal block's damped inverse.

    :math:`\gamma^2` is the diagonal analogue of factored Tikhonov damping, whose
    :math:`\gamma^2 I` term is the whole damping for a block with no Kronecker structure
    (γ = √(λ + η)).

    Args:
        D: the block's curvature diagonal, κ included, shape ``(size,)``.
        gammas: the damping candidates, shape ``(c,)``.

    """
    damped = D[None, :] + torch.square(gammas)[:, None]
    ok = ((damped > 0) & torch.isfinite(damped)).all(1)
    inverse = 1 / damped
    return Candidates(ok, lambda j: Diagonal(inverse[j]))


def blockdiag_candidates(
    blocks: Sequence[Candidates], gammas: Sequence[float]
) -> tuple[list[kronlin.BlockDiag], list[float]]:
    """The block-diagonal inverse for each γ that every block could factor (one host sync).

    Args:
        blocks: per block, its damped inverses for ``gammas``, in the flat vector's order.
        gammas: the damping candidates.

    Returns:
        ``(operators, kept)``: one ``BlockDiag`` per kept γ, and those γ.

    Raises:
        FactorError: no γ gives positive definite damped curvature in every block.

    """
    ok = torch.stack([b.ok for b in blocks]).all(0)
    kept = [j for j, good in enumerate(ok.tolist()) if good]
    if not kept:
        raise FactorError(f"no damping in gamma={list(gammas)} makes the factors positive definite")
    ops = [kronlin.BlockDiag([b.build(j) for b in blocks]) for j in kept]
    return ops, [gammas[j] for j in kept]


def blockdiag_inverses(
    A: Sequence[Tensor], G: Sequence[Tensor], pis: Sequence[Tensor], gammas: Sequence[float]
) -> tuple[list[kronlin.BlockDiag], list[float]]:
    r"""``BlockDiag([Kron((G_i + γ/π_i I)⁻¹, (A_i + γπ_i I)⁻¹)])`` for each γ in ``gammas``.

    The block-diagonal inverse of a list of Kronecker factors (as
    :func:`~kronlin_nn.kfac_factors` gives them).

    Args:
        A: undamped input factors :math:`\bar A_i`, ``(d_in+1, d_in+1)``.
        G: undamped output factors :math:`\kappa\tilde G_i`, ``(d_out, d_out)``.
        pis: :math:`\pi_i`, 0-d tensors.
        gammas: the damping candidates.

    Returns:
        ``(operators, kept)``: one operator per γ whose damped factors are all positive
        definite, acting on the flat parameter vector (:mod:`kronlin_nn.layout`), and those γ.

    Raises:
        FactorError: non-finite factors, or no γ gives positive definite damped factors.

    """
    check_finite([*A, *G])
    g = torch.tensor(gammas, dtype=A[0].dtype, device=A[0].device)
    blocks = [kronecker_candidates(a, gi, pi, g, str(i))
              for i, (a, gi, pi) in enumerate(zip(A, G, pis, strict=True))]
    return blockdiag_candidates(blocks, gammas)


Pair = tuple[Tensor, Tensor]


def tridiag_blocks(
    A: Sequence[Tensor],
    G: Sequence[Tensor],
    A_cross: Sequence[Tensor],
    G_cross: Sequence[Tensor],
    pis: Sequence[Tensor],
    gamma: float,
) -> tuple[list[Pair], list[Pair]]:
    r"""The blocks of :math:`\hat F_\gamma` for ``BlockTridiagInverse`` (paper §4.3, spec §8).

    Args:
        A: undamped input factors, in chain order.
        G: undamped output factors, in chain order, scaled by :math:`\kappa`.
        A_cross: :math:`\bar A_{i-1,i}`, the input moments of layers ``i`` and ``i+1``.
        G_cross: :math:`\kappa\tilde G_{i,i+1}`.
        pis: :math:`\pi_i`.
        gamma: the damping γ.

    Returns:
        ``(diag, offdiag)``: ``diag[i] = (G_i + γ/π_i I, Ā_i + γπ_i I)`` (damped) and
        ``offdiag[i] = (κG̃_{i,i+1}, Ā_{i-1,i})`` (undamped), so that block ``(i, i+1)`` is
        ``Kron(G_{i,i+1}, Ā_{i-1,i})`` in kronlin's row-major layout.

    """
    diag = [(_shifted(symmetrized(g), gamma / pi), _shifted(symmetrized(a), gamma * pi))
            for a, g, pi in zip(A, G, pis, strict=True)]
    return diag, list(zip(G_cross, A_cross, strict=True))


def tridiag_inverse(diag: Sequence[Pair], offdiag: Sequence[Pair]) -> kronlin.BlockTridiagInverse:
    r""":math:`\hat F_\gamma^{-1}` from the blocks of :func:`tridiag_blocks`.

    Raises:
        FactorError: non-finite blocks, or kronlin could not factor a damped block or a
            conditional covariance.

    """
    check_finite([M for pair in [*diag, *offdiag] for M in pair])
    try:
        return kronlin.BlockTridiagInverse(diag, offdiag)
    except (kronlin.LinAlgError, ValueError) as err:
        raise FactorError(f"block-tridiagonal inverse: {err}") from err


def _shifted(M: Tensor, c: Tensor | float) -> Tensor:
    return M + c * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
