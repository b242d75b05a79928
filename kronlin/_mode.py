r"""Mode products: the engine behind every Kronecker-structured apply.

``(F₁ ⊗ … ⊗ Fₙ) X`` for a block ``X`` of shape ``(c₁⋯cₙ, k)`` is computed without forming the
Kronecker product: view ``X`` as a tensor of shape ``(c₁, …, cₙ, k)`` and multiply it by ``Fⱼ``
along axis ``j`` for every ``j``: ``n`` GEMMs in all, instead of the ``2k·∏rⱼ·∏cⱼ`` flops of the
dense product. Row-major layout makes the result equal ``np.kron``.

How: a :class:`~kronlin._plan.KronPlan` chosen by the cost model of :mod:`kronlin._plan` (or
given by the caller) names a kernel and a grouping of consecutive factors into their Kronecker
products; :class:`KronMatmat` runs it:

- ``"rotate"`` (:func:`_rotate`): one GEMM per group on a transposed view, ``T ←
  reshape(T, (c, −1))ᵀ Fᵀ``, which consumes the leading axis and appends the new one; after all
  groups the axes are back in order with ``k`` in front, i.e. the transposed result, which one
  parallel copy turns around when the caller needs ``X``'s layout. A column-major ``X`` runs the
  mirror image from the last axis (``T ← F reshape(T, (−1, c))ᵀ``).
- ``"modes"`` (:func:`_mode_products`): the mode products in place. On axis ``j`` the product is
  one GEMM when the axis is outermost, one GEMM from the right when it is innermost, and a batch
  of GEMMs on strided views otherwise (no transpose is ever copied). NumPy runs a batch one GEMM
  at a time, each on one core when it is too small for BLAS's threads; such batches are split
  among the threads (:func:`split_batch`; NumPy releases the GIL in ``matmul``).
- ``"numba"``: the fused Numba passes of :mod:`kronlin._mode_numba` (NumPy only).

Layouts. The tensor view is free for a row-major ``X``; for a column-major ``X`` (``Xᵀ``
row-major, as ``x @ op`` hands it over), ``Xᵀ`` is viewed as ``(k, c₁, …, cₙ)`` instead. The
result has ``X``'s layout unless the caller asks for another (``layout=``): products applied
back to back (``KronEigen``'s ``K diag(s) Kᵀ``) accept either and skip the copies.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Literal

import array_api_compat

from ._backend import Array, device, dtype_name
from ._plan import BLAS_THREADING_WORK, KERNELS, KronPlan, Problem, choose, machine

Layout = Literal["row", "column", "any"]

KernelRequest = Any  # "auto", a kernel name of kronlin._plan.KERNELS, or a KronPlan

SPLIT_MIN_FLOPS = 2**21
"""Least work of a batch of GEMMs worth dividing among threads (a dispatch costs ~10 µs)."""


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


def split_batch(r: int, c: int, after: int, before: int, threads: int) -> bool:
    """Whether a NumPy batch of ``before`` GEMMs ``(r × c) @ (c × after)`` is divided among threads.

    Only batches that BLAS runs on one core (each GEMM at most ``BLAS_THREADING_WORK``), large
    enough to pay for the dispatch, and with a GEMM for every thread.
    """
    return (threads > 1 and before >= threads and r * c * after <= BLAS_THREADING_WORK
            and 2 * r * c * after * before >= SPLIT_MIN_FLOPS)


class KronMatmat:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` (or with every ``Fⱼ`` transposed) for one list of factors.

    Args:
        xp: the array namespace of the factors.
        factors: matrices ``Fⱼ`` of shape ``(rⱼ, cⱼ)``, one dtype, one device.
        kernel: ``"auto"`` (the cost model chooses kernel and grouping per block shape), a
            kernel name (``"rotate"``, ``"modes"``, ``"numba"``: the cost model chooses the
            grouping) or a :class:`~kronlin._plan.KronPlan` (used as given).

    The merged factors of a grouping are computed once and kept (the factors are immutable).

    Raises:
        ValueError: an unknown kernel, or a plan for another number of factors.
        TypeError: ``"numba"`` with arrays that are not NumPy arrays.

    """

    def __init__(self, xp: ModuleType, factors: Sequence[Array], kernel: KernelRequest = "auto"):
        self.xp = xp
        self.factors = tuple(factors)
        self.kernel = check_kernel(kernel, len(self.factors), xp)
        self._backend = _backend(xp, self.factors[0])
        self._merged: dict[tuple[tuple[int, ...], ...], list[Array]] = {}
        self._lock = threading.Lock()

    def plan(self, k: int, *, dtype: Any = None, transpose: bool = False, column_major: bool = False,
             layout: Layout | None = None) -> KronPlan:
        """The plan for a block of ``k`` vectors of ``dtype`` (default: the factors')."""
        shapes = tuple((int(f.shape[1]), int(f.shape[0])) if transpose else (int(f.shape[0]), int(f.shape[1]))
                       for f in self.factors)
        column_major = column_major and k > 1
        want = ("column" if column_major else "row") if layout is None else layout
        problem = Problem(shapes, int(k), dtype_name(self.factors[0].dtype if dtype is None else dtype),
                          self._backend, column_major, "any" if k == 1 else want)
        if isinstance(self.kernel, KronPlan):
            from ._plan import estimate

            seconds = estimate(self.kernel, problem, machine(self._backend))
            return KronPlan(self.kernel.kernel, self.kernel.groups, seconds)
        return choose(problem, self.kernel)

    def __call__(self, X: Array, *, transpose: bool = False, layout: Layout | None = None) -> Array:
        """``(F₁ ⊗ … ⊗ Fₙ) X`` for ``X`` of shape ``(∏cⱼ, k)`` (``(∏rⱼ, k)`` with ``transpose``).

        Args:
            X: the block, any memory layout, of the factors' backend and device.
            transpose: apply ``F₁ᵀ ⊗ … ⊗ Fₙᵀ`` (views, no copies).
            layout: the result's layout: ``None`` as ``X``, ``"row"``, ``"column"`` or ``"any"``.

        Returns:
            Shape ``(∏rⱼ, k)`` (``(∏cⱼ, k)`` with ``transpose``), the dtype of ``X``.

        """
        column_major = X.shape[1] > 1 and is_column_major(X)
        plan = self.plan(X.shape[1], dtype=X.dtype, transpose=transpose, column_major=column_major,
                         layout=layout)
        mats = self._merged_factors(plan.groups)
        mats = [m.T for m in mats] if transpose else mats
        want = layout or ("column" if column_major else "row")
        if plan.kernel == "rotate":
            return _rotate(self.xp, mats, X, column_major, want)
        if plan.kernel == "numba":
            return _numba(mats, X, column_major, want)
        Y = _modes(self.xp, mats, X, column_major)
        return _relayout(self.xp, Y, column_major, want)

    def _merged_factors(self, groups: tuple[tuple[int, ...], ...]) -> list[Array]:
        with self._lock:
            if groups not in self._merged:
                self._merged[groups] = [merge(self.xp, [self.factors[j] for j in g]) for g in groups]
            return self._merged[groups]


def check_kernel(kernel: KernelRequest, n: int, xp: ModuleType | None = None) -> KernelRequest:
    """``kernel`` after checking it names a kernel (or fits ``n`` factors, for a plan)."""
    if isinstance(kernel, KronPlan):
        count = sum(len(g) for g in kernel.groups)
        if count != n:
            raise ValueError(f"kernel: the plan covers {count} factors, the operator has {n}")
        name = kernel.kernel
    elif kernel in ("auto", *KERNELS):
        name = kernel
    else:
        raise ValueError(f"kernel: expected 'auto', 'rotate', 'modes', 'numba' or a KronPlan, got {kernel!r}")
    if name == "numba" and xp is not None and not array_api_compat.is_numpy_namespace(xp):
        raise TypeError("kernel='numba' needs NumPy arrays, got torch tensors")
    return kernel


def kron_matmat(
    xp: ModuleType,
    factors: Sequence[Array],
    X: Array,
    *,
    transpose: bool = False,
    kernel: KernelRequest = "auto",
    layout: Layout | None = None,
) -> Array:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` (or with every ``Fⱼ`` transposed) for ``X`` of shape ``(∏cⱼ, k)``.

    One call of a fresh :class:`KronMatmat`; operators keep theirs (and its merged factors).

    Raises:
        ValueError: an unknown ``kernel``.
        TypeError: ``kernel="numba"`` with arrays that are not NumPy arrays.

    """
    if kernel == "numba" and not array_api_compat.is_numpy_array(X):
        raise TypeError(f"kernel='numba' needs NumPy arrays, got {type(X).__name__}")
    return KronMatmat(xp, factors, kernel)(X, transpose=transpose, layout=layout)


def merge(xp: ModuleType, mats: Sequence[Array]) -> Array:
    """The Kronecker product of ``mats`` (a group of a plan), as a dense matrix."""
    out = mats[0]
    for f in mats[1:]:
        out = xp.reshape(out[:, None, :, None] * f[None, :, None, :],
                         (out.shape[0] * f.shape[0], out.shape[1] * f.shape[1]))
    return out


# -- the kernels ----------------------------------------------------------------------------------


def _rotate(xp: ModuleType, mats: list[Array], X: Array, column_major: bool, want: Layout) -> Array:
    """The ``"rotate"`` kernel: one GEMM per factor on a transposed view (see the module docstring)."""
    k = X.shape[1]
    if not column_major:
        T = X  # (c₁, …, cₙ, k), row-major: consume the leading axis, append the new one
        for F in mats:
            T = xp.matmul(xp.reshape(T, (F.shape[1], -1)).T, F.T)
        rows = math.prod(T.shape) // k
        natural = "column"
        Y = xp.reshape(T, (k, rows)).T
    else:
        T = X.T  # (k, c₁, …, cₙ), row-major: consume the trailing axis, prepend the new one
        for F in reversed(mats):
            T = xp.matmul(F, xp.reshape(T, (-1, F.shape[1])).T)
        rows = math.prod(T.shape) // k
        natural = "row"
        Y = xp.reshape(T, (rows, k))
    if k == 1 or want in ("any", natural):
        return Y
    return _relayout(xp, Y, natural == "column", want)


def _modes(xp: ModuleType, mats: list[Array], X: Array, column_major: bool) -> Array:
    """The ``"modes"`` kernel; the result has ``X``'s layout."""
    order = application_order([tuple(m.shape) for m in mats])
    k = X.shape[1]
    rows = math.prod(m.shape[0] for m in mats)
    if column_major:
        # Xᵀ is the row-major tensor (k, c₁, …, cₙ): k leads, nothing trails
        Y = _mode_products(xp, mats, X.T, order, lead=k, trail=1)
        return xp.reshape(Y, (k, rows)).T
    return xp.reshape(_mode_products(xp, mats, X, order, lead=1, trail=k), (rows, k))


def _numba(mats: list[Array], X: Array, column_major: bool, want: Layout) -> Array:
    """The ``"numba"`` kernel (row-major passes); a column-major ``X`` is copied first."""
    import numpy as np

    from . import _mode_numba

    if column_major:
        X = _relayout(np, X, True, "row")
    mats = [np.ascontiguousarray(m, dtype=X.dtype) for m in mats]
    Y = _mode_numba.kron_matmat(mats, X, application_order([m.shape for m in mats]))
    return _relayout(np, Y, False, want) if Y.shape[1] > 1 else Y


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
    T3 = xp.reshape(T, (before, c, after))
    if array_api_compat.is_numpy_namespace(xp):
        threads = machine().threads
        if split_batch(r, c, after, before, threads):
            return _split_matmul(F, T3, threads)
    return xp.matmul(F, T3)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _split_matmul(F, T3, threads: int):
    """``np.matmul(F, T3)`` with the batch divided into ``threads`` parts run concurrently."""
    import numpy as np

    global _POOL
    before = T3.shape[0]
    out = np.empty((before, F.shape[0], T3.shape[2]), np.result_type(F, T3))
    bounds = [before * t // threads for t in range(threads + 1)]
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != threads - 1:
            _POOL = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="kronlin")
        pool = _POOL
    parts = [pool.submit(np.matmul, F, T3[lo:hi], out=out[lo:hi])
             for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True)]
    np.matmul(F, T3[: bounds[1]], out=out[: bounds[1]])
    for part in parts:
        part.result()
    return out


# -- layouts -----------------------------------------------------------------------------------------


def is_column_major(X: Array) -> bool:
    """Whether ``Xᵀ`` is row-contiguous while ``X`` is not (a layout query, no data access)."""
    if array_api_compat.is_torch_array(X):
        return X.T.is_contiguous() and not X.is_contiguous()
    flags = getattr(X, "flags", None)
    return flags is not None and flags.f_contiguous and not flags.c_contiguous


def _relayout(xp: ModuleType, Y: Array, column_major: bool, want: Layout) -> Array:
    """``Y`` (column-major if ``column_major``) in the layout ``want``, by one transposed copy."""
    if want == "any" or want == ("column" if column_major else "row"):
        return Y
    if column_major:  # Yᵀ is row-major: its contiguous transpose is Y row-major
        return transposed_copy(xp, Y.T)
    return transposed_copy(xp, Y).T


def transposed_copy(xp: ModuleType, A: Array) -> Array:
    """``Aᵀ`` as a new row-major array (a parallel Numba copy for NumPy arrays)."""
    if array_api_compat.is_torch_array(A):
        return A.T.contiguous()
    import numpy as np

    from ._mode_numba import transpose_into

    A = np.ascontiguousarray(A)
    out = np.empty((A.shape[1], A.shape[0]), A.dtype)
    transpose_into(A, out)
    return out


def _backend(xp: ModuleType, a: Array) -> str:
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    return "cuda" if str(device(a)).startswith("cuda") else "torch"
