"""One-shot functions for callers that do not need an operator object, and Krylov solvers.

``kron_matmul``, ``kron_solve`` and ``kron_diff_solve`` build the operator and apply it once.
``cg`` and ``lanczos`` (:mod:`kronlin._krylov`) solve and eigendecompose any kronlin operator in
its own backend and device, torch on a GPU included, with SciPy's conventions; for SciPy's
own solvers, use :meth:`kronlin.LinearOperator.to_scipy`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._backend import Array
from ._krylov import cg, lanczos
from ._plan import KronPlan
from ._validation import check_scalar
from .kron import Kron
from .kron_diff import KronDiff

__all__ = ["cg", "kron_diff_solve", "kron_matmul", "kron_solve", "lanczos"]


def kron_matmul(factors: Sequence[Array], x: Array, *, kernel: str | KronPlan = "auto") -> Array:
    """``(F₁ ⊗ … ⊗ Fₙ) x`` for ``x`` of shape ``(∏cⱼ,)`` or ``(∏cⱼ, k)``; ``kernel`` as for :class:`Kron`."""
    return Kron(*factors, kernel=kernel) @ x


def kron_solve(factors: Sequence[Array], b: Array, *, damping: float = 0.0) -> Array:
    r"""Solve ``(F₁ ⊗ … ⊗ Fₙ + damping·I) x = b``.

    With ``damping = 0`` the factors are inverted one by one (``Σ nⱼ³``); otherwise the factors
    must be symmetric and the solve goes through their eigendecompositions
    (:meth:`Kron.eigh`), the only exact route for a damped Kronecker product.
    """
    damping = check_scalar(damping, "damping", minimum=0.0)
    op = Kron(*factors)
    if damping == 0:
        return op.solve(b)
    return op.eigh().shift(damping).inv() @ b


def kron_diff_solve(
    A: Array, B: Array, C: Array, D: Array, b: Array, *, damping: float = 0.0
) -> Array:
    """Solve ``(A⊗B − C⊗D) x = b`` exactly; see :class:`KronDiff`."""
    return KronDiff(A, B, C, D).solve(b, damping=damping)
