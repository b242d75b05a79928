"""Numba kernels for the ``"numba"`` plans of small Kronecker factors on NumPy arrays (CPU).

Every mode product streams the whole tensor through memory once, and with small factors that
traffic, not the flops, is the cost. :func:`pair_product` applies two factors on adjacent axes in
one pass while a tile of the tensor sits in cache, so four factors cost two passes over memory
instead of four; one parallel loop per pass, no packing. A factor left alone runs as a BLAS mode
product (:func:`_blas_pass`): for a single axis the traffic is the same either way and BLAS's
kernels are faster than these loops. The intermediates alternate between two buffers (two
allocations per chain, not one per factor). :mod:`kronlin._plan` decides when these plans are
used; ``tests/kronlin/test_mode_numba.py`` keeps the NumPy expression as the reference.
:func:`transpose_into` is the parallel transposed copy of the other kernels.

Compile time: the kernels compile on their first call for each dtype (about 10 s for float32
and again for float64 on the 2-core development machine) and are cached on disk
(``cache=True``: ``kronlin/__pycache__``, or Numba's user cache directory where that is not
writable, or ``NUMBA_CACHE_DIR``), so later processes load them in about a second. Benchmarks
call them once in their setup, outside the timed region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
from numba import prange

PAIR_MIN_WIDTH = 8
"""Fewest entries after a pair's axes for a fused pass: its vector loops run along them."""

PAIR_ROWS = 1024
"""Most rows (``c·r`` of the two factors) of the in-cache tile of :func:`pair_product`."""

PAIR_TILE_ENTRIES = 65536
"""Entries of that tile (512 KiB in float64, one L2 cache here): its width is this / rows."""

TRANSPOSE_ROWS = 8
"""Rows of ``A`` per task of :func:`transpose_into` (one cache line of ``out`` per column)."""

_FASTMATH = {"contract"}  # fused multiply-adds; no reassociation beyond what is written

# NumPy scalars rather than Python literals as call arguments: Numba compiles one version of a
# helper per combination of literal arguments (and took a minute to compile these kernels)
_NO_SWAP, _SWAP, _ZERO = np.bool_(False), np.bool_(True), np.intp(0)


@numba.njit(inline="always")
def _row(X, swap, b, j, lo, hi):
    """Row ``j`` of batch ``b`` of a 3-D array: ``X[b, j, lo:hi]``, or ``X[j, b, lo:hi]`` if ``swap``."""
    if swap:
        return X[j, b, lo:hi]
    return X[b, j, lo:hi]


@numba.njit(inline="always")
def _store(o, a, value, first):
    """``o[a] = value`` for the first source rows, ``o[a] += value`` after: no zeroing pass.

    ``first`` is loop-invariant, so LLVM unswitches the vector loop on it.
    """
    if first:
        o[a] = value
    else:
        o[a] += value


@numba.njit(fastmath=_FASTMATH)
def _four_rows(F, i, src, s_swap, s_lo, dst, d_swap, d_lo, b, w):
    """Rows ``i … i+3`` of ``dst`` (batch ``b``) ``= F[i:i+4] @`` the rows of ``src`` (batch ``b``).

    Register blocking: every loaded source entry feeds four output rows, and four source rows
    are summed per output entry before it is stored, so the vector loop issues about one load
    per FMA instead of the three (source, accumulator load and store) of a plain ``axpy``.
    """
    c = F.shape[1]
    o0 = _row(dst, d_swap, b, i, d_lo, d_lo + w)
    o1 = _row(dst, d_swap, b, i + 1, d_lo, d_lo + w)
    o2 = _row(dst, d_swap, b, i + 2, d_lo, d_lo + w)
    o3 = _row(dst, d_swap, b, i + 3, d_lo, d_lo + w)
    c4 = c - c % 4
    for j in range(0, c4, 4):
        s0 = _row(src, s_swap, b, j, s_lo, s_lo + w)
        s1 = _row(src, s_swap, b, j + 1, s_lo, s_lo + w)
        s2 = _row(src, s_swap, b, j + 2, s_lo, s_lo + w)
        s3 = _row(src, s_swap, b, j + 3, s_lo, s_lo + w)
        a0, a1, a2, a3 = F[i, j], F[i, j + 1], F[i, j + 2], F[i, j + 3]
        b0, b1, b2, b3 = F[i + 1, j], F[i + 1, j + 1], F[i + 1, j + 2], F[i + 1, j + 3]
        c0, c1, c2, c3 = F[i + 2, j], F[i + 2, j + 1], F[i + 2, j + 2], F[i + 2, j + 3]
        d0, d1, d2, d3 = F[i + 3, j], F[i + 3, j + 1], F[i + 3, j + 2], F[i + 3, j + 3]
        first = j == 0
        for a in range(w):
            x0, x1, x2, x3 = s0[a], s1[a], s2[a], s3[a]
            _store(o0, a, (a0 * x0 + a1 * x1) + (a2 * x2 + a3 * x3), first)
            _store(o1, a, (b0 * x0 + b1 * x1) + (b2 * x2 + b3 * x3), first)
            _store(o2, a, (c0 * x0 + c1 * x1) + (c2 * x2 + c3 * x3), first)
            _store(o3, a, (d0 * x0 + d1 * x1) + (d2 * x2 + d3 * x3), first)
    for j in range(c4, c):
        s = _row(src, s_swap, b, j, s_lo, s_lo + w)
        f0, f1, f2, f3 = F[i, j], F[i + 1, j], F[i + 2, j], F[i + 3, j]
        first = j == 0
        for a in range(w):
            x = s[a]
            _store(o0, a, f0 * x, first)
            _store(o1, a, f1 * x, first)
            _store(o2, a, f2 * x, first)
            _store(o3, a, f3 * x, first)


@numba.njit(fastmath=_FASTMATH)
def _one_row(F, i, src, s_swap, s_lo, dst, d_swap, d_lo, b, w):
    """Row ``i`` of ``dst`` (batch ``b``) ``= F[i] @`` the rows of ``src`` (the rows left over by fours)."""
    o = _row(dst, d_swap, b, i, d_lo, d_lo + w)
    for j in range(F.shape[1]):
        s = _row(src, s_swap, b, j, s_lo, s_lo + w)
        f = F[i, j]
        first = j == 0
        for a in range(w):
            _store(o, a, f * s[a], first)


@numba.njit(fastmath=_FASTMATH)
def _product(F, src, s_swap, s_lo, dst, d_swap, d_lo, b, w):
    """``dst`` rows ``= F @ src`` rows for batch ``b``, on ``w`` entries from ``s_lo``/``d_lo``."""
    r = F.shape[0]
    r4 = r - r % 4
    for i in range(0, r4, 4):
        _four_rows(F, i, src, s_swap, s_lo, dst, d_swap, d_lo, b, w)
    for i in range(r4, r):
        _one_row(F, i, src, s_swap, s_lo, dst, d_swap, d_lo, b, w)


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def pair_product(F_lo, F_hi, hi_first, T, out, scratch):
    r"""Multiply ``F_lo`` and ``F_hi`` into the two middle axes of ``T`` in one pass.

    ``out[p] = (F_lo ⊗ F_hi) T[p]`` as mode products: for each ``p`` and each tile of ``width``
    entries of the last axis, the first factor's product goes to a per-thread scratch tile in
    cache and the second's from there to ``out``.

    Args:
        F_lo: shape ``(r_lo, c_lo)``, C-contiguous.
        F_hi: shape ``(r_hi, c_hi)``, C-contiguous.
        hi_first: apply ``F_hi`` first (the cheaper order is chosen by the caller).
        T: shape ``(P, c_lo, c_hi, Q)``, C-contiguous.
        out: shape ``(P, r_lo, r_hi, Q)``, C-contiguous; overwritten.
        scratch: shape ``(threads, rows·width)`` with ``rows = max(c_lo·r_hi, r_lo·c_hi)``: one
            tile of ``width`` entries of the last axis per thread (``numba.get_num_threads()``).

    Cost: the flops of the two mode products, one read of ``T`` and one write of ``out``.

    """
    P, c_lo, c_hi, Q = T.shape
    r_lo, r_hi = F_lo.shape[0], F_hi.shape[0]
    width = scratch.shape[1] // max(c_lo * r_hi, r_lo * c_hi)
    tiles = (Q + width - 1) // width
    for task in prange(P * tiles):
        p = task // tiles
        lo = (task - p * tiles) * width
        w = min(width, Q - lo)
        src, dst = T[p], out[p]
        if hi_first:
            # tmp[a] = F_hi @ src[a, :, tile];  dst[:, h, tile] = F_lo @ tmp[:, h]
            tmp = scratch[numba.get_thread_id(), : c_lo * r_hi * width].reshape(c_lo, r_hi, width)
            for a in range(c_lo):
                _product(F_hi, src, _NO_SWAP, lo, tmp, _NO_SWAP, _ZERO, a, w)
            for h in range(r_hi):
                _product(F_lo, tmp, _SWAP, _ZERO, dst, _SWAP, lo, h, w)
        else:
            # tmp[:, h] = F_lo @ src[:, h, tile];  dst[i, :, tile] = F_hi @ tmp[i]
            tmp = scratch[numba.get_thread_id(), : r_lo * c_hi * width].reshape(r_lo, c_hi, width)
            for h in range(c_hi):
                _product(F_lo, src, _SWAP, lo, tmp, _SWAP, _ZERO, h, w)
            for i in range(r_lo):
                _product(F_hi, tmp, _NO_SWAP, _ZERO, dst, _NO_SWAP, lo, i, w)


def kron_matmat(factors: Sequence[np.ndarray], X: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` for a NumPy block ``X`` of shape ``(∏cⱼ, k)``, mode products in ``order``.

    One call of :func:`chain_program` (see there).
    """
    return chain_program([np.ascontiguousarray(f, dtype=X.dtype) for f in factors], order, X.shape[1])(X)


def chain_program(mats: Sequence[np.ndarray], order: Sequence[int], trail: int):
    """The chain ``X ↦ (F₁ ⊗ … ⊗ Fₙ) X`` for blocks of ``trail`` columns, planned once.

    Consecutive steps of ``order`` on adjacent axes whose tile fits :data:`PAIR_ROWS`, with at
    least :data:`PAIR_MIN_WIDTH` entries after them, run as one :func:`pair_product` pass; the
    others as BLAS mode products (:func:`_blas_pass`: a single-axis pass streams the tensor once
    either way, and BLAS's kernels are faster than these loops on one axis). Passes alternate
    between two buffers, the last one writing the result, of shape ``(∏rⱼ, trail)``.

    Args:
        mats: C-contiguous factors of the blocks' dtype.
        order: the order in which the factors are applied.
        trail: the block width ``k``.

    """
    from ._mode import split_batch
    from ._plan import thread_count

    shapes = [m.shape for m in mats]
    passes = pass_plan(shapes, [c for _, c in shapes], order, trail)
    sizes = [math.prod(p[2]) * trail for p in passes]  # entries written by each pass
    n = len(passes)
    # pass s writes buffer (n - s) % 2, so the last pass writes buffer 1: the result
    widths = [max((size for s, size in enumerate(sizes) if (n - s) % 2 == w), default=0) for w in (0, 1)]
    threads = thread_count()
    steps = []
    for s, (axes, dims, _) in enumerate(passes):
        buffer, size = (n - s) % 2, sizes[s]
        if len(axes) == 1:
            (j,) = axes
            before, after = math.prod(dims[:j]), math.prod(dims[j + 1 :]) * trail
            r, c = shapes[j]
            split = before > 1 and after > 1 and split_batch(r, c, after, before, threads)
            steps.append((buffer, size, _blas_pass(mats[j], before, c, after, split, threads)))
        else:
            lo, hi = sorted(axes)
            before, after = math.prod(dims[:lo]), math.prod(dims[hi + 1 :]) * trail
            steps.append((buffer, size, _pair_pass(mats, lo, hi, axes[0] == hi, before, dims, after)))

    def run(X: np.ndarray) -> np.ndarray:
        buffers = [np.empty(width, X.dtype) for width in widths]
        T = np.ascontiguousarray(X)
        for buffer, size, step in steps:
            T = step(T, buffers[buffer][:size])
        return T.reshape(-1, trail)

    return run


def pass_plan(shapes, dims, order, trail=1):
    """Plan the passes: ``(axes, dims in, dims out)`` each, ``axes`` one axis or an adjacent pair.

    Args:
        shapes: the factors' ``(rows, cols)``.
        dims: the tensor's axis lengths before the first pass (the factors' columns).
        order: the order in which the factors are applied.
        trail: entries after the last axis (the block width ``k``).

    """
    dims = list(dims)
    passes = []
    s = 0
    while s < len(order):
        j = order[s]
        pair = order[s : s + 2] if s + 1 < len(order) else [j]
        if (len(pair) == 2 and abs(pair[0] - pair[1]) == 1 and _pair_rows(shapes, pair) <= PAIR_ROWS
                and math.prod(dims[max(pair) + 1 :]) * trail >= PAIR_MIN_WIDTH):
            axes = tuple(pair)
        else:
            axes = (j,)
        before = list(dims)
        for a in axes:
            dims[a] = shapes[a][0]
        passes.append((axes, before, list(dims)))
        s += len(axes)
    return passes


def _pair_rows(shapes, pair):
    """Rows of the scratch tile of a pair pass (the larger of its two orders)."""
    lo, hi = sorted(pair)
    (r_lo, c_lo), (r_hi, c_hi) = shapes[lo], shapes[hi]
    return max(c_lo * r_hi, r_lo * c_hi)


def _pair_pass(mats, lo, hi, hi_first, before, dims, after):
    """One :func:`pair_product` pass on axes ``lo``, ``hi`` of ``(before, dims…, after)``.

    Returns the step ``(T, out) ↦ out``.
    """
    F_lo, F_hi = mats[lo], mats[hi]
    shape_in = (before, dims[lo], dims[hi], after)
    shape_out = (before, F_lo.shape[0], F_hi.shape[0], after)
    rows = max(F_lo.shape[1] * F_hi.shape[0], F_lo.shape[0] * F_hi.shape[1])
    tile = rows * max(16, PAIR_TILE_ENTRIES // rows)

    def step(T, out):
        out4 = out.reshape(shape_out)
        scratch = np.empty((numba.get_num_threads(), tile), T.dtype)
        pair_product(F_lo, F_hi, hi_first, T.reshape(shape_in), out4, scratch)
        return out4

    return step


def _blas_pass(F, before, c, after, split, threads):
    """``F`` multiplied into the middle axis of ``T`` viewed as ``(before, c, after)``, by BLAS.

    Returns the step ``(T, out) ↦ out``.
    """
    r = F.shape[0]
    shape_in, shape_out = (before, c, after), (before, r, after)
    if before == 1:
        return lambda T, out: np.matmul(F, T.reshape(c, after), out=out.reshape(r, after))
    if after == 1:
        Ft = F.T
        return lambda T, out: np.matmul(T.reshape(before, c), Ft, out=out.reshape(before, r))
    if split:
        from ._mode import _split_matmul

        return lambda T, out: _split_matmul(F, T.reshape(shape_in), threads, out.reshape(shape_out))
    return lambda T, out: np.matmul(F, T.reshape(shape_in), out=out.reshape(shape_out))


@numba.njit(parallel=True, cache=True)
def transpose_into(A, out):
    """``out[:] = A.T`` for a C-contiguous ``A`` of shape ``(m, n)`` and ``out`` of shape ``(n, m)``.

    One parallel task per band of :data:`TRANSPOSE_ROWS` rows of ``A``: it walks the band's rows
    together, column by column, so it reads that many contiguous streams and writes
    :data:`TRANSPOSE_ROWS` adjacent entries of each row of ``out``. NumPy's own
    ``ascontiguousarray(A.T)`` is single-threaded and, on these shapes, 2–4× slower per thread.
    """
    m, n = A.shape
    t = TRANSPOSE_ROWS
    for band in prange((m + t - 1) // t):
        i0 = band * t
        i1 = min(i0 + t, m)
        if i1 - i0 == t:
            for j in range(n):
                row = out[j]
                for i in range(t):  # a constant trip count: unrolled
                    row[i0 + i] = A[i0 + i, j]
        else:
            for j in range(n):
                for i in range(i0, i1):
                    out[j, i] = A[i, j]
