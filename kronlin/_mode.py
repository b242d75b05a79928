r"""Mode products: the engine behind every Kronecker-structured apply.

``(F₁ ⊗ … ⊗ Fₙ) X`` for a block ``X`` of shape ``(c₁⋯cₙ, k)`` is computed without forming the
Kronecker product: view ``X`` as a tensor of shape ``(c₁, …, cₙ, k)`` and multiply it by ``Fⱼ``
along axis ``j`` for every ``j``: ``n`` GEMMs in all, instead of the ``2k·∏rⱼ·∏cⱼ`` flops of the
dense product. Row-major layout makes the result equal ``np.kron``.

Layout. The tensor view is free for a row-major ``X``. For a column-major ``X`` (``Xᵀ`` row-major,
as ``x @ op`` hands it over), ``Xᵀ`` is viewed instead as ``(k, c₁, …, cₙ)``. In either view the
mode product on axis ``j`` is one GEMM when the axis is outermost, one GEMM from the right when it
is innermost, and a batch of GEMMs on strided views otherwise: no transpose is ever copied. For
two factors and a column-major ``X`` this is exactly the batched ``A @ X @ B.T``; for a row-major
``X`` it is one GEMM and one batch of GEMMs of the same total size.

Kernels. Arrays of the array API (NumPy, torch on CPU or CUDA) go through ``xp.matmul``: BLAS or
cuBLAS does the work, asynchronously on GPU (nothing here reads a tensor value). One exception,
documented because it is a switch: a row-major NumPy block of at least :data:`NUMBA_MIN_RHS`
columns and :data:`NUMBA_MIN_ENTRIES` entries whose factors all have at most
:data:`NUMBA_MAX_FACTOR` rows and columns goes to the Numba kernels of :mod:`kronlin._mode_numba`
(the same products up to rounding order; 1.6–2× faster there on 2 cores, where BLAS spends its
time packing tiny operands; measured with ``benchmarks/compare.py``). Pass ``kernel="xp"`` to
:func:`kron_matmat` to force the array-API path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import array_api_compat

from ._backend import Array

NUMBA_MAX_FACTOR = 16
"""Largest factor side sent to the Numba kernel (measured: BLAS is as fast or faster from 32 on)."""

NUMBA_MIN_RHS = 32
"""Fewest right-hand sides for the Numba kernel: its vector loops run along them."""

NUMBA_MIN_ENTRIES = 2**20
"""Fewest entries ``∏cⱼ·k`` of ``X`` for the Numba kernel: below, waking its threads (up to a few
milliseconds after an idle spell) costs more than the kernel saves."""

Kernel = Literal["auto", "xp", "numba"]


def application_order(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """The order in which to apply factors of the given ``(rows, cols)`` shapes.

    Mode products commute. Applying factor ``j`` to a tensor of ``S`` entries costs ``2S·rⱼ``
    flops and leaves ``S·rⱼ/cⱼ`` entries, so applying ``i`` just before ``j`` is no worse than
    the reverse iff ``rᵢ + (rᵢ/cᵢ)·rⱼ ≤ rⱼ + (rⱼ/cⱼ)·rᵢ``, i.e. iff ``1/cᵢ − 1/rᵢ ≤ 1/cⱼ − 1/rⱼ``.
    That exchange rule is a total order, so sorting by ``1/cⱼ − 1/rⱼ`` minimizes the total
    flops over all ``n!`` orders (shrinking factors first, most shrinking per row first). Ties
    (e.g. square factors) keep the given order.
    """
    return sorted(range(len(shapes)), key=lambda j: 1 / shapes[j][1] - 1 / shapes[j][0])


def chain_flops(shapes: Sequence[tuple[int, int]], order: Sequence[int], k: int) -> int:
    """Flops of the mode products of factors ``shapes`` applied in ``order`` to ``k`` vectors."""
    size = math.prod(c for _, c in shapes) * k
    flops = 0
    for j in order:
        r, c = shapes[j]
        flops += 2 * size * r
        size = size // c * r
    return flops


def kron_matmat(
    xp: ModuleType,
    factors: Sequence[Array],
    X: Array,
    *,
    transpose: bool = False,
    kernel: Kernel = "auto",
) -> Array:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` (or with every ``Fⱼ`` transposed) for ``X`` of shape ``(∏cⱼ, k)``.

    Args:
        xp: the array namespace of ``factors`` and ``X``.
        factors: matrices ``Fⱼ`` of shape ``(rⱼ, cⱼ)`` (``(cⱼ, rⱼ)`` with ``transpose``), of
            ``X``'s dtype.
        X: shape ``(∏cⱼ, k)``, any memory layout.
        transpose: apply ``F₁ᵀ ⊗ … ⊗ Fₙᵀ`` (no copy of the factors on the GEMM path).
        kernel: ``"auto"`` (see the module docstring), ``"xp"`` (always ``xp.matmul``) or
            ``"numba"`` (NumPy only, any factor size; for tests and benchmarks).

    Returns:
        Shape ``(∏rⱼ, k)``, the dtype of ``X``, row-major or column-major like ``X``.

    Cost: one (batched) GEMM per factor, :func:`chain_flops` in :func:`application_order`.

    Raises:
        ValueError: an unknown ``kernel``.
        TypeError: ``kernel="numba"`` with arrays that are not NumPy arrays.

    """
    if kernel not in ("auto", "xp", "numba"):
        raise ValueError(f"kernel: expected 'auto', 'xp' or 'numba', got {kernel!r}")
    if kernel == "numba" and not array_api_compat.is_numpy_array(X):
        raise TypeError(f"kernel='numba' needs NumPy arrays, got {type(X).__name__}")
    mats = [f.T for f in factors] if transpose else list(factors)
    order = application_order([tuple(m.shape) for m in mats])
    if kernel == "numba" or (kernel == "auto" and _numba_pays(mats, X)):
        from . import _mode_numba

        return _mode_numba.kron_matmat(mats, X, order)
    k = X.shape[1]
    rows = math.prod(m.shape[0] for m in mats)
    if k > 1 and _is_column_major(X):
        # Xᵀ is the row-major tensor (k, c₁, …, cₙ): k leads, nothing trails
        Y = _mode_products(xp, mats, X.T, order, lead=k, trail=1)
        return xp.reshape(Y, (k, rows)).T
    return xp.reshape(_mode_products(xp, mats, X, order, lead=1, trail=k), (rows, k))


def _mode_products(
    xp: ModuleType, mats: list[Array], T: Array, order: list[int], *, lead: int, trail: int
) -> Array:
    """Apply every ``mats[j]`` along axis ``j`` of ``T`` viewed as ``(lead, c₁, …, cₙ, trail)``.

    Returns the result with ``lead·∏rⱼ·trail`` entries in that row-major order, in the shape of
    the last GEMM.
    """
    dims = [m.shape[1] for m in mats]
    for j in order:
        before = lead * math.prod(dims[:j])
        after = math.prod(dims[j + 1 :]) * trail
        T = _mode_product(xp, mats[j], T, before, after)
        dims[j] = mats[j].shape[0]
    return T


def _mode_product(xp: ModuleType, F: Array, T: Array, before: int, after: int) -> Array:
    """Multiply ``F`` (r × c) into the middle axis of ``T`` viewed as ``(before, c, after)``."""
    r, c = F.shape
    if before == 1:
        return xp.matmul(F, xp.reshape(T, (c, after)))
    if after == 1:
        # a batch of matrix-vector products is one GEMM from the other side
        return xp.matmul(xp.reshape(T, (before, c)), F.T)
    return xp.matmul(F, xp.reshape(T, (before, c, after)))


def _is_column_major(X: Array) -> bool:
    """Whether ``Xᵀ`` is row-contiguous while ``X`` is not (a layout query, no data access)."""
    if array_api_compat.is_torch_array(X):
        return X.T.is_contiguous() and not X.is_contiguous()
    flags = getattr(X, "flags", None)
    return flags is not None and flags.f_contiguous and not flags.c_contiguous


def _numba_pays(mats: Sequence[Array], X: Array) -> bool:
    """The documented ``kernel="auto"`` rule for the Numba kernel (see the module docstring)."""
    return (
        array_api_compat.is_numpy_array(X)
        and X.shape[1] >= NUMBA_MIN_RHS
        and X.shape[0] * X.shape[1] >= NUMBA_MIN_ENTRIES
        and X.dtype.name in ("float32", "float64")
        and all(m.dtype == X.dtype and max(m.shape) <= NUMBA_MAX_FACTOR for m in mats)
        and not _is_column_major(X)
    )
