"""Mode products: the engine behind every Kronecker-structured apply.

``(F₁ ⊗ … ⊗ Fₙ) X`` for a block ``X`` of shape ``(c₁⋯cₙ, k)`` is computed without forming the
Kronecker product: view ``X`` as a tensor of shape ``(c₁, …, cₙ, k)`` and multiply it by ``Fⱼ``
along axis ``j`` for every ``j`` — ``n`` GEMMs in all, ``2k·∏dims·Σⱼ rⱼ/cⱼ``-ish flops instead of
the ``2k·∏rⱼ·∏cⱼ`` of the dense product. Row-major layout makes the result equal ``np.kron``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType

from ._backend import Array


def application_order(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """The order in which to apply factors of the given ``(rows, cols)`` shapes.

    Mode products commute, and applying factor ``j`` multiplies the size of the working tensor
    by ``rⱼ/cⱼ``; applying the shrinking factors first (ascending ``rⱼ/cⱼ``) minimizes the flops.
    """
    return sorted(range(len(shapes)), key=lambda j: shapes[j][0] / shapes[j][1])


def kron_matmat(
    xp: ModuleType, factors: Sequence[Array], X: Array, *, transpose: bool = False
) -> Array:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` (or with every ``Fⱼ`` transposed) for ``X`` of shape ``(∏cⱼ, k)``.

    Returns an array of shape ``(∏rⱼ, k)``. Cost: one (batched) GEMM per factor.
    """
    mats = [f.T for f in factors] if transpose else list(factors)
    k = X.shape[1]
    dims = [m.shape[1] for m in mats]
    T = X
    for j in application_order([tuple(m.shape) for m in mats]):
        T = _mode_product(xp, mats[j], T, math.prod(dims[:j]), math.prod(dims[j + 1 :]) * k)
        dims[j] = mats[j].shape[0]
    return xp.reshape(T, (math.prod(dims), k))


def _mode_product(xp: ModuleType, F: Array, T: Array, before: int, after: int) -> Array:
    """Multiply ``F`` (r × c) into the middle axis of ``T`` viewed as ``(before, c, after)``."""
    r, c = F.shape
    if before == 1:
        return xp.matmul(F, xp.reshape(T, (c, after)))
    if after == 1:
        # a batch of matrix-vector products is one GEMM from the other side
        return xp.matmul(xp.reshape(T, (before, c)), F.T)
    return xp.matmul(F, xp.reshape(T, (before, c, after)))
