r"""Mode products: the engine behind every Kronecker-structured apply.

``(F₁ ⊗ … ⊗ Fₙ) X`` for a block ``X`` of shape ``(c₁⋯cₙ, k)`` is computed without forming the
Kronecker product: view ``X`` as a tensor of shape ``(c₁, …, cₙ, k)`` and multiply it by ``Fⱼ``
along axis ``j`` for every ``j``: ``n`` GEMMs in all, instead of the ``2k·∏rⱼ·∏cⱼ`` flops of the
dense product. Row-major layout makes the result equal ``np.kron``.

How: a :class:`~kronlin._plan.KronPlan` chosen by the cost model of :mod:`kronlin._plan` (or
given by the caller) names a kernel and a grouping of consecutive factors into their Kronecker
products; :class:`KronMatmat` runs it:

- ``"rotate"`` (:func:`_rotate_program`): one GEMM per group on a transposed view, ``T ←
  reshape(T, (c, −1))ᵀ Fᵀ``, which consumes the leading axis and appends the new one; after all
  groups the axes are back in order with ``k`` in front, i.e. the transposed result, which one
  parallel copy turns around when the caller needs ``X``'s layout. A column-major ``X`` runs the
  mirror image from the last axis (``T ← F reshape(T, (−1, c))ᵀ``).
- ``"modes"`` (:func:`_modes_program`): the mode products in place. On axis ``j`` the product is
  one GEMM when the axis is outermost, one GEMM from the right when it is innermost, and a batch
  of GEMMs on strided views otherwise (no transpose is ever copied). NumPy runs a batch one GEMM
  at a time, each on one core when it is too small for BLAS's threads; such batches are split
  among the threads (:func:`split_batch`; NumPy releases the GIL in ``matmul``).
- ``"numba"``: the fused Numba passes of :mod:`kronlin._mode_numba` (NumPy only).

Products use the arrays' own ``reshape``, ``.T`` and ``@`` (the same for NumPy arrays and torch
tensors), not the array-API wrappers: for small blocks the wrappers' checks cost more than the
GEMMs.

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
from ._plan import BLAS_THREADING_WORK, KERNELS, KronPlan, Problem, choose, machine, thread_count

Layout = Literal["row", "column", "any"]

KernelRequest = Any  # "auto", a kernel name of kronlin._plan.KERNELS, or a KronPlan

SCRATCH_BYTES = 32 * 2**20
"""Intermediates below glibc's largest ``mmap`` threshold (32 MiB) are recycled by the allocator
at no cost; only larger ones get reusable buffers (measured: 30 % off a memory-bound GEMM)."""

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
        self._merged: dict[tuple, list[Array]] = {}
        self._programs: dict[tuple, Any] = {}
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
        k = X.shape[1]
        return self.program(k, X.dtype, transpose=transpose, column_major=k > 1 and is_column_major(X),
                            layout=layout)(X)

    def program(self, k: int, dtype: Any, *, transpose: bool = False, column_major: bool = False,
                layout: Layout | None = None):
        """The compiled product for blocks of ``k`` vectors of ``dtype`` and this layout: ``X ↦ Y``.

        Compiled once per kind of block and thread count, then looked up (one dictionary access).
        """
        key = (k, dtype, transpose, column_major, layout, thread_count(self._backend))
        run = self._programs.get(key)
        if run is None:
            run = self._programs[key] = self._compile(k, dtype, transpose, column_major, layout)
        return run

    def _compile(self, k: int, dtype: Any, transpose: bool, column_major: bool, layout: Layout | None):
        """The plan for these blocks as a function of ``X``, every shape worked out in advance.

        For small blocks the Python around the GEMMs is most of the time: none is left per call
        but the loop over the steps.
        """
        plan = self.plan(k, dtype=dtype, transpose=transpose, column_major=column_major, layout=layout)
        mats = self._merged_factors(plan.groups, dtype)
        mats = [m.T for m in mats] if transpose else mats
        want = layout or ("column" if column_major else "row")
        if plan.kernel == "rotate":
            return _rotate_program(self.xp, mats, k, column_major, want)
        if plan.kernel == "numba":
            return _numba_program(mats, k, dtype, column_major, want)
        return _modes_program(self.xp, mats, k, column_major, want)

    def _merged_factors(self, groups: tuple[tuple[int, ...], ...], dtype: Any) -> list[Array]:
        """The groups' Kronecker products in ``dtype`` (the block's: torch does not promote)."""
        key = (groups, dtype)
        with self._lock:
            if key not in self._merged:
                merged = [merge(self.xp, [self.factors[j] for j in g]) for g in groups]
                self._merged[key] = [m if m.dtype == dtype else self.xp.astype(m, dtype) for m in merged]
            return self._merged[key]


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


def _rotate_program(xp: ModuleType, mats: list[Array], k: int, column_major: bool, want: Layout):
    """The ``"rotate"`` kernel: one GEMM per factor on a transposed view (see the module docstring)."""
    natural = "row" if column_major else "column"
    relayout = k > 1 and want not in ("any", natural)
    if not column_major:
        # (c₁, …, cₙ, k), row-major: consume the leading axis, append the new one
        steps = [(F.shape[1], F.T) for F in mats]
    else:
        # Xᵀ is (k, c₁, …, cₙ), row-major: consume the trailing axis, prepend the new one
        steps = [(F.shape[1], F) for F in reversed(mats)]
    sizes = _chain_sizes([(F.shape[0], F.shape[1]) for F in (mats if not column_major else mats[::-1])],
                         math.prod(F.shape[1] for F in mats) * k)
    scratch_for = _Scratch.factory(xp, sizes, mats[0].dtype, final_in_scratch=relayout)
    column = natural == "column"

    if scratch_for is None and not column_major:
        # the common case of small blocks: nothing per call but the GEMMs and their views
        def run(X: Array) -> Array:
            T = X
            for c, Ft in steps:
                T = T.reshape(c, -1).T @ Ft
            Y = T.reshape(k, -1).T
            return _relayout(xp, Y, column, want) if relayout else Y

        return run

    scratch_for = scratch_for or _plain

    def run(X: Array) -> Array:
        scratch = scratch_for()
        if not column_major:
            T = X
            for step, (c, Ft) in enumerate(steps):
                T = scratch.matmul(step, T.reshape(c, -1).T, Ft)
            Y = T.reshape(k, -1).T
        else:
            T = X.T
            for step, (c, F) in enumerate(steps):
                T = scratch.matmul(step, F, T.reshape(-1, c).T)
            Y = T.reshape(-1, k)
        return _relayout(xp, Y, column, want) if relayout else Y

    return run


def _modes_program(xp: ModuleType, mats: list[Array], k: int, column_major: bool, want: Layout):
    """The ``"modes"`` kernel: the mode products in place, in the flop-optimal factor order.

    On axis ``j`` of the tensor viewed as ``(before, cⱼ, after)`` the product is one GEMM when
    ``before = 1``, one GEMM from the right when ``after = 1``, and a batch of GEMMs otherwise
    (split among the threads where :func:`split_batch` says so).
    """
    order = application_order([tuple(m.shape) for m in mats])
    # Xᵀ of a column-major X is the row-major tensor (k, c₁, …, cₙ): k leads, nothing trails
    lead, trail = (k, 1) if column_major else (1, k)
    numpy = array_api_compat.is_numpy_namespace(xp)
    threads = thread_count() if numpy else 1
    dims = [m.shape[1] for m in mats]
    steps = []
    for j in order:
        F = mats[j]
        (r, c), before, after = F.shape, lead * math.prod(dims[:j]), math.prod(dims[j + 1 :]) * trail
        if before == 1:
            steps.append((_LEFT, F, (c, after)))
        elif after == 1:  # a batch of matrix-vector products is one GEMM from the other side
            steps.append((_RIGHT, F.T, (before, c)))
        elif numpy and split_batch(r, c, after, before, threads):
            steps.append((_SPLIT, F, (before, c, after)))
        else:
            steps.append((_LEFT, F, (before, c, after)))
        dims[j] = r
    rows = math.prod(m.shape[0] for m in mats)
    sizes = _chain_sizes([tuple(mats[j].shape) for j in order], math.prod(m.shape[1] for m in mats) * k)
    scratch_for = _Scratch.factory(xp, sizes, mats[0].dtype, final_in_scratch=False)

    relayout = want not in ("any", "column" if column_major else "row")
    if scratch_for is None:
        # the common case of small blocks: nothing per call but the GEMMs and their views
        def run(X: Array) -> Array:
            T = X.T if column_major else X
            for kind, F, shape in steps:
                if kind is _LEFT:
                    T = F @ T.reshape(shape)
                elif kind is _RIGHT:
                    T = T.reshape(shape) @ F
                else:
                    T = _split_matmul(F, T.reshape(shape), threads)
            Y = T.reshape(k, rows).T if column_major else T.reshape(rows, k)
            return _relayout(xp, Y, column_major, want) if relayout else Y

        return run

    def run(X: Array) -> Array:
        scratch = scratch_for()
        T = X.T if column_major else X
        for step, (kind, F, shape) in enumerate(steps):
            if kind is _RIGHT:
                T = scratch.matmul(step, T.reshape(shape), F)
            elif kind is _SPLIT:
                out = scratch.out(step, (shape[0], F.shape[0], shape[2]))
                T = _split_matmul(F, T.reshape(shape), threads, out)
            else:
                T = scratch.matmul(step, F, T.reshape(shape))
        Y = T.reshape(k, rows).T if column_major else T.reshape(rows, k)
        return _relayout(xp, Y, column_major, want)

    return run


_LEFT, _RIGHT, _SPLIT = "F @ T", "T @ Fᵀ", "split F @ T"
"""The kinds of mode-product steps (compared by identity in the loop)."""


def _chain_sizes(shapes: list[tuple[int, int]], entries: int) -> list[int]:
    """Entries after each step of a chain applying factors of ``shapes`` in turn to ``entries``."""
    sizes = []
    for r, c in shapes:
        entries = entries // c * r
        sizes.append(entries)
    return sizes


def _numba_program(mats: list[Array], k: int, dtype: Any, column_major: bool, want: Layout):
    """The ``"numba"`` kernel (row-major passes, planned once); a column-major ``X`` is copied first."""
    import numpy as np

    from . import _mode_numba

    mats = [np.ascontiguousarray(m, dtype=dtype) for m in mats]
    chain = _mode_numba.chain_program(mats, application_order([m.shape for m in mats]), k)
    relayout = k > 1 and want not in ("any", "row")

    def run(X: Array) -> Array:
        Y = chain(_relayout(np, X, True, "row") if column_major else X)
        return _relayout(np, Y, False, want) if relayout else Y

    return run


class _Scratch:
    """Two buffers that a chain of NumPy GEMMs writes into in turn (``np.matmul(out=)``).

    A chain of ``m`` products allocates two arrays instead of ``m``: arrays above glibc's
    ``mmap`` threshold (up to 32 MiB) come fresh from the kernel, page faults and zeroing
    included, each time. Step ``s`` writes buffer ``s % 2`` and reads step ``s − 1``'s, so no step
    overwrites its own operand; the last step returns a fresh array (the result) unless
    ``final_in_scratch`` (the caller copies it on). Chains of smaller arrays (:data:`SCRATCH_BYTES`)
    and torch tensors (torch keeps its own allocation cache) use plain products.
    """

    def __init__(self, buffers: list, last: int):
        self._buffers = buffers
        self._last = last

    @classmethod
    def factory(cls, xp: ModuleType, sizes: list[int], dtype, *, final_in_scratch: bool):
        """A function giving each call of a chain that writes ``sizes`` entries in turn its scratch.

        ``None`` when the chain needs none (plain products).
        """
        last = len(sizes) if final_in_scratch else len(sizes) - 1
        numpy = array_api_compat.is_numpy_namespace(xp)
        if not numpy or last <= 0 or max(sizes[:last]) * _itemsize(dtype) < SCRATCH_BYTES:
            return None
        import numpy as np

        widths = [max((n for s, n in enumerate(sizes[:last]) if s % 2 == w), default=0) for w in (0, 1)]
        return lambda: cls([np.empty(n, dtype) for n in widths], last)

    def out(self, step: int, shape: tuple[int, ...]):
        """The buffer of ``step`` as an array of ``shape`` (``None``: the caller allocates)."""
        if step >= self._last:
            return None
        return self._buffers[step % 2][: math.prod(shape)].reshape(shape)

    def matmul(self, step: int, a: Array, b: Array) -> Array:
        """``a @ b`` (matrices, or a matrix times a batch), into the buffer of ``step`` if it has one."""
        if step >= self._last:
            return a @ b
        import numpy as np

        shape = (a.shape[0], b.shape[1]) if b.ndim == 2 else (b.shape[0], a.shape[0], b.shape[2])
        return np.matmul(a, b, out=self.out(step, shape))


_PLAIN = _Scratch([], 0)
"""No buffers: every product allocates its result."""


def _plain() -> _Scratch:
    return _PLAIN

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _itemsize(dtype) -> int:
    return 4 if dtype_name(dtype) == "float32" else 8


def _split_matmul(F, T3, threads: int, out=None):
    """``np.matmul(F, T3)`` with the batch divided into ``threads`` parts run concurrently."""
    import numpy as np

    global _POOL
    before = T3.shape[0]
    if out is None:
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
