r"""``KronDiff``: the difference of two Kronecker products and its exact inverse.

``A⊗B − C⊗D`` with ``A, B`` symmetric positive definite and ``C, D`` symmetric (PSD in the
paper's use). Its inverse is the paper's App. I construction (spec §7.1): the symmetric
generalized eigenproblems ``C K₁ = A K₁ diag(s₁)``, ``D K₂ = B K₂ diag(s₂)`` with
``Kᵢᵀ A Kᵢ = I`` give ``A⊗B − C⊗D = (K₁⊗K₂)⁻ᵀ (I − s₁⊗s₂) (K₁⊗K₂)⁻¹``, so

.. math:: (A\otimes B - C\otimes D)^{-1} = (K_1\otimes K_2)\,
   \operatorname{diag}\big(1/(1 - s_{1p} s_{2q})\big)\,(K_1\otimes K_2)^\top,

a :class:`~kronlin.KronEigen`. It is the Λ of the block-tridiagonal inverse (paper §3.3).
"""

from __future__ import annotations

from types import ModuleType

from ._backend import Array, device, dtype_name, namespace
from ._factorizations import cholesky, generalized_eigh
from ._mode import KronMatmat
from ._validation import check_same_device, check_scalar, symmetrized
from .errors import SingularDenominatorError
from .kron import outer
from .kron_eigen import KronEigen
from .operator import LinearOperator

_EPS = {"float32": 1.1920929e-07, "float64": 2.220446049250313e-16}


class KronDiff(LinearOperator):
    r"""The matrix :math:`A \otimes B - C \otimes D`.

    Args:
        A: SPD, shape ``(m, m)``.
        B: SPD, shape ``(n, n)``.
        C: symmetric, shape ``(m, m)`` (PSD in K-FAC; the inverse does not need it).
        D: symmetric, shape ``(n, n)``.

    Apply costs two GEMM pairs (one per Kronecker product) on ``k`` vectors; :meth:`inv` costs
    two Cholesky factorizations and two ``eigh`` of sizes ``m`` and ``n`` once, and its apply
    costs two GEMM pairs too.

    Raises:
        TypeError: mixed backends or unsupported dtypes.
        ValueError: non-square, mismatched or non-symmetric factors, non-finite entries.

    """

    def __init__(self, A: Array, B: Array, C: Array, D: Array):
        xp = namespace(A, B, C, D, names=("A", "B", "C", "D"))
        check_same_device((A, B, C, D), "A, B, C, D")
        A, B, C, D = (symmetrized(xp, M, name) for M, name in zip((A, B, C, D), "ABCD", strict=True))
        if C.shape != A.shape:
            raise ValueError(f"C: expected shape {tuple(A.shape)} (as A), got {tuple(C.shape)}")
        if D.shape != B.shape:
            raise ValueError(f"D: expected shape {tuple(B.shape)} (as B), got {tuple(D.shape)}")
        dtype = xp.result_type(A, B, C, D)
        self.A, self.B, self.C, self.D = (xp.astype(M, dtype) for M in (A, B, C, D))
        n = A.shape[0] * B.shape[0]
        super().__init__((n, n), xp=xp, dtype=dtype, device=device(A))
        self._AB, self._CD = KronMatmat(xp, (self.A, self.B)), KronMatmat(xp, (self.C, self.D))

    def _matmat(self, X: Array) -> Array:
        return self._AB(X) - self._CD(X)

    _rmatmat = _matmat  # symmetric

    def _transpose(self) -> KronDiff:
        return self

    def _term(self) -> str:
        (m, _), (n, _) = self.A.shape, self.B.shape
        return f"KronDiff(A⊗B − C⊗D; A, C {m}x{m}; B, D {n}x{n})"

    def inv(self, *, damping: float = 0.0, rtol: float | None = None) -> KronEigen:
        r"""The exact inverse as a :class:`KronEigen` with bases ``(K₁, K₂)``.

        Args:
            damping: ``δ ≥ 0`` adds ``δ·(A⊗B)`` before inverting, i.e. the denominators become
                ``1 + δ − s₁ₚs₂_q``. Use it when ``C⊗D`` can come arbitrarily close to ``A⊗B``.
            rtol: the smallest tolerated ``|1 + δ − s₁ₚs₂_q|``; default ``100·eps`` of the dtype.
                The condition number of the difference relative to ``A⊗B`` is about
                ``1/min|denominator|``.

        Raises:
            TypeError, ValueError: ``damping`` is not a finite number ≥ 0, or ``rtol`` not a
                finite number ≥ 0 (or ``None``).
            NotPositiveDefiniteError: ``A`` or ``B`` is not SPD.
            SingularDenominatorError: some denominator is below ``rtol``; the message names it
                and suggests ``damping``.

        """
        xp = self.xp
        chol = (cholesky(xp, self.A, "A"), cholesky(xp, self.B, "B"))
        return kron_diff_inverse(xp, chol, (self.C, self.D), damping=damping, rtol=rtol)

    def solve(self, b: Array, *, damping: float = 0.0) -> Array:
        """Solve ``(A⊗B − C⊗D + δ A⊗B) x = b`` for ``b`` of shape ``(N,)`` or ``(N, k)``."""
        return self._solve_with(lambda: self.inv(damping=damping), b)


def kron_diff_inverse(
    xp: ModuleType,
    cholesky_factors: tuple[Array, Array],
    subtrahend: tuple[Array, Array],
    *,
    damping: float = 0.0,
    rtol: float | None = None,
) -> KronEigen:
    """``(A⊗B − C⊗D + δ A⊗B)⁻¹`` from the Cholesky factors of ``A``, ``B`` and from ``(C, D)``.

    The work of :meth:`KronDiff.inv` for callers that already hold the Cholesky factors
    (:class:`~kronlin.BlockTridiagInverse` factors each diagonal factor once for everything).
    """
    damping = check_scalar(damping, "damping", minimum=0.0)
    if rtol is not None:
        rtol = check_scalar(rtol, "rtol", minimum=0.0)
    (LA, LB), (C, D) = cholesky_factors, subtrahend
    s1, K1 = generalized_eigh(xp, LA, C, ("A", "C"))
    s2, K2 = generalized_eigh(xp, LB, D, ("B", "D"))
    denominators = (1.0 + damping) - outer(xp, [s1, s2])
    tol = 100 * _EPS[dtype_name(C.dtype)] if rtol is None else rtol
    smallest = float(xp.min(xp.abs(denominators)))
    if smallest <= tol:
        raise SingularDenominatorError(
            f"KronDiff.inv: A⊗B − C⊗D is numerically singular: the smallest denominator "
            f"|1 + damping − s1·s2| is {smallest:.3g} ≤ rtol = {tol:.3g} (damping={damping}); "
            "pass damping > 0 to regularize"
        )
    expression = f"(A⊗B − C⊗D + {damping:g}·A⊗B)⁻¹" if damping else "(A⊗B − C⊗D)⁻¹"
    return KronEigen._trusted((K1, K2), 1 / denominators, xp, orthonormal=False, expression=expression)
