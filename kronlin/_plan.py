r"""How ``(F₁ ⊗ … ⊗ Fₙ) X`` is computed: the plans, and the cost model that chooses one.

A :class:`KronPlan` names a *kernel* and a *grouping*. The grouping merges runs of consecutive
factors into their Kronecker product (``F₁ ⊗ F₂`` is one ``r₁r₂ × c₁c₂`` factor): fewer passes
over the data for more flops. The kernels (:mod:`kronlin._mode`):

- ``"rotate"``: one GEMM per group, each consuming the leading axis of the tensor and appending
  the new one (``T ← reshape(T, (c, −1))ᵀ Fᵀ``, the "shuffle" algorithm): every pass is a single
  large GEMM, which BLAS runs on all cores; with ``k > 1`` vectors the result comes out
  transposed and costs one parallel transposed copy, unless the caller accepts either layout.
- ``"modes"``: the mode products in place, one GEMM (or a batch of GEMMs on strided views) per
  group, layout kept; batches of GEMMs too small for BLAS to thread are split across threads.
- ``"numba"``: the fused Numba passes of :mod:`kronlin._mode_numba` (NumPy, row-major blocks):
  two adjacent groups per pass while a tile sits in cache; a group left alone runs as a BLAS
  mode product.

The cost model (:func:`estimate`) predicts a plan's time from a few machine constants
(:class:`Machine`): per pass, the larger of its flops over the GEMM rate (an efficiency that falls
with the GEMM's smallest dimension, divided among the threads BLAS would use) and its bytes over
the memory bandwidth, plus per-call overheads. :func:`choose` enumerates every grouping of every
allowed kernel and keeps the cheapest. The constants were fitted to single-core measurements on
the development machine (``benchmarks/calibrate_kron.py`` prints the fit's inputs); they only
have to rank plans, and ``Kron(..., kernel=...)`` overrides the choice.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

KernelName = Literal["rotate", "modes", "numba"]
KERNELS: tuple[KernelName, ...] = ("rotate", "modes", "numba")

MAX_GROUP_SIDE = 1024
"""Largest side of a merged group: beyond, its flops grow faster than any pass it saves."""

BLAS_THREADING_WORK = 2**18
"""OpenBLAS runs a GEMM on one thread when ``m·n·k`` is at most this (``interface/gemm.c``)."""


@dataclass(frozen=True)
class KronPlan:
    """How ``Kron(F₁, …, Fₙ) @ X`` is computed: a kernel and a grouping of the factors.

    ``Kron.plan(k)`` returns the plan the cost model chose for a block of ``k`` vectors, with its
    estimate; ``Kron(..., kernel=KronPlan(...))`` imposes one. See the Kronecker guide, section
    "Kernels", for the kernels and the cost model.

    Args:
        kernel: ``"rotate"`` (one GEMM per group on a transposed view, the "shuffle"
            algorithm), ``"modes"`` (mode products in place; batches of small GEMMs split
            among threads) or ``"numba"`` (fused Numba passes over pairs of groups; NumPy only).
        groups: runs of consecutive factor indices (0-based) that cover ``0 … n−1`` in order;
            each run is merged into one factor, its Kronecker product (more flops, fewer passes).
        seconds: the cost model's estimate (``None`` for a plan written by hand).

    Raises:
        ValueError: an unknown kernel, or groups that are not consecutive runs covering the
            factors in order.

    """

    kernel: KernelName
    groups: tuple[tuple[int, ...], ...]
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {self.kernel!r}")
        try:
            groups = tuple(tuple(int(j) for j in g) for g in self.groups)
        except TypeError:
            groups = None
        flat = [j for group in groups or () for j in group]
        if not groups or any(not g for g in groups) or flat != list(range(len(flat))):
            raise ValueError(
                f"groups: expected runs of consecutive factor indices covering 0 … n−1 in order, "
                f"got {self.groups!r}"
            )
        object.__setattr__(self, "groups", groups)

    def __str__(self) -> str:
        terms = ", ".join("⊗".join(f"F{j + 1}" for j in group) for group in self.groups)
        estimate = "" if self.seconds is None else f" (estimated {self.seconds * 1e3:.3g} ms)"
        return f"{self.kernel} [{terms}]{estimate}"


@dataclass(frozen=True)
class Machine:
    """The constants of the cost model (per core unless said otherwise), fitted on the 2-core dev VM.

    Attributes:
        threads: cores used by BLAS and by kronlin's own parallel loops.
        gemm_flops: single-core GEMM peak rate per dtype, flop/s.
        gemm_half: the GEMM's smallest dimension at which it reaches half its peak.
        batch_half: the trailing width ``after`` at which a batched small GEMM reaches half its
            peak (the BLAS small-matrix kernels need no packing).
        numba_flops: the Numba kernels' peak rate per dtype and core (register-blocked loops).
        numba_half: the trailing width at which the Numba kernels reach half their peak.
        cache_bytes: data up to this size streams at ``cache_bandwidth``.
        cache_bandwidth: bytes/s per core within cache.
        memory_bandwidth: bytes/s from memory: one core, and all cores together.
        call_seconds: Python and BLAS entry per GEMM call.
        view_seconds: extra per GEMM of ``"rotate"``, whose left operand is a transposed view
            (``xᵀ @ Fᵀ`` took 1.75 µs where ``F @ x`` took 1.4 on a 64×64 factor). It breaks
            the near ties of ``k = 1`` toward ``"modes"``, measured as fast or faster on two
            factors (``300×200 ⊗ 20×10``: 33 µs against 43).
        gemv_efficiency: a matrix-vector product (a GEMM with a dimension 1) streams the
            matrix from cache: this fraction of the GEMM peak (measured 0.35–0.38 at 256–1024,
            where the saturating curve would say 0.11).
        batch_call_seconds: per GEMM of a batched call (NumPy's loop over the batch).
        parallel_seconds: waking the threads of a parallel kernel (Numba, the split batches).
            Threads that slept since the last call take tens of microseconds to wake (far more
            on a loaded machine), so parallel kernels are chosen only where they save more.
        thread_seconds: a GEMM that BLAS runs on several threads waits for all of them: tens of
            microseconds on an idle machine, milliseconds where other processes hold the
            cores. Charged per call, it makes the model prefer a few large threaded GEMMs to a
            batch of many (a batch of 256 threaded GEMMs took 13 s instead of 2 on the loaded
            development machine); on an idle one the two cost about the same.

    """

    threads: int
    gemm_flops: tuple[tuple[str, float], ...] = (("float64", 50e9), ("float32", 100e9))
    gemm_half: float = 8.0
    batch_half: float = 3.0
    numba_flops: tuple[tuple[str, float], ...] = (("float64", 40e9), ("float32", 80e9))
    numba_half: float = 16.0
    cache_bytes: float = 1.5e6
    cache_bandwidth: float = 60e9
    memory_bandwidth: tuple[float, float] = (14e9, 20e9)
    call_seconds: float = 1.2e-6
    view_seconds: float = 1e-7
    gemv_efficiency: float = 0.35
    batch_call_seconds: float = 4e-8
    parallel_seconds: float = 5e-5
    thread_seconds: float = 1e-4

    def flops(self, dtype: str, numba: bool = False) -> float:
        return dict(self.numba_flops if numba else self.gemm_flops)[dtype]

    def bandwidth(self, nbytes: float, threads: int) -> float:
        """The bandwidth for a pass that moves ``nbytes`` on ``threads`` cores."""
        if nbytes <= self.cache_bytes * threads:
            return self.cache_bandwidth * threads
        single, total = self.memory_bandwidth
        return single if threads == 1 else total


def machine(backend: str = "numpy") -> Machine:
    """The cost-model constants for this process and backend (see :func:`thread_count`)."""
    return Machine(threads=thread_count(backend))


def thread_count(backend: str = "numpy") -> int:
    """The threads kronlin's parallel loops use: torch's for torch, Numba's for NumPy.

    Numba's count is read without importing Numba when it is not loaded yet (its default: the
    ``NUMBA_NUM_THREADS`` variable, else the CPUs this process may run on). Importing Numba is
    avoided on purpose: it takes a second, and it changes torch's CPU results in the last bits.
    """
    if backend != "numpy":
        import torch

        return int(torch.get_num_threads())
    numba = sys.modules.get("numba")
    if numba is not None:
        parallel = sys.modules.get("numba.np.ufunc.parallel")
        if parallel is not None and getattr(parallel, "_is_initialized", False):
            # numba.get_num_threads() without its two locks (10 µs a call): the thread-local count
            return int(parallel._get_num_threads())
        return int(numba.get_num_threads())
    return _numba_default_threads()


@functools.cache
def _numba_default_threads() -> int:
    """Numba's default thread count, which Numba too reads once (when it is imported)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(os.environ.get("NUMBA_NUM_THREADS", cpus))


# -- the cost of one plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What a plan is chosen for: factor shapes, block width, dtype, backend and layouts.

    ``backend`` is ``"numpy"``, ``"torch"`` (CPU) or ``"cuda"``; ``column_major`` says how ``X``
    is laid out (``x @ op`` hands over ``Xᵀ`` of a row-major block); ``layout`` the result's
    required layout, ``"row"``, ``"column"`` or ``"any"`` (an internal caller that applies
    another product next takes either).
    """

    shapes: tuple[tuple[int, int], ...]
    k: int
    dtype: str
    backend: str
    column_major: bool = False
    layout: str = "row"

    def copies(self, natural: str) -> int:
        """Transposed copies to turn a result of layout ``natural`` into the required one."""
        return int(self.k > 1 and self.layout not in ("any", natural))


def estimate(plan: KronPlan, problem: Problem, m: Machine) -> float:
    """The predicted seconds of ``plan`` on ``problem`` (``inf`` where the kernel does not apply)."""
    shapes = merged_shapes(problem.shapes, plan.groups)
    if plan.kernel == "numba":
        if problem.backend != "numpy":
            return math.inf
        return _numba_seconds(shapes, problem, m)
    if plan.kernel == "rotate":
        return _rotate_seconds(shapes, problem, m)
    return _modes_seconds(shapes, problem, m)


def merged_shapes(shapes: Sequence[tuple[int, int]], groups) -> list[tuple[int, int]]:
    """The ``(rows, cols)`` of each group's Kronecker product."""
    return [(math.prod(shapes[j][0] for j in g), math.prod(shapes[j][1] for j in g)) for g in groups]


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 8


def _gemm_seconds(m_: int, n_: int, kdim: int, problem: Problem, m: Machine, *, calls: int = 1,
                  batched_after: int | None = None, split: bool = False) -> float:
    """``calls`` GEMMs ``(m_ × kdim) @ (kdim × n_)``: compute or memory bound, plus call overheads.

    ``batched_after`` marks a batch of small GEMMs of width ``after`` (one NumPy call); ``split``
    that the batch is divided among the threads.
    """
    flops = 2.0 * m_ * n_ * kdim * calls
    nbytes = (m_ * kdim + kdim * n_ + m_ * n_) * calls * _itemsize(problem.dtype)
    threaded = m.threads > 1 and m_ * n_ * kdim > BLAS_THREADING_WORK  # by BLAS itself
    if batched_after is None:
        smallest = min(m_, n_, kdim)
        efficiency = m.gemv_efficiency if smallest == 1 else _saturating(smallest, m.gemm_half)
        threads = m.threads if threaded else 1
        overhead = (m.call_seconds + threaded * m.thread_seconds) * calls
    elif problem.backend != "numpy":
        # torch runs a batch as one batched GEMM, parallel over the batch
        efficiency = _saturating(min(m_, kdim), m.gemm_half / 4) * _saturating(batched_after, m.batch_half)
        threads = m.threads
        overhead = m.call_seconds + m.thread_seconds
    else:
        efficiency = _saturating(min(m_, kdim), m.gemm_half / 4) * _saturating(batched_after, m.batch_half)
        threads = m.threads if (threaded or (split and calls >= m.threads)) else 1
        overhead = m.call_seconds + (m.batch_call_seconds + threaded * m.thread_seconds) * calls / (
            threads if split else 1)
        if split:
            overhead += m.parallel_seconds
    compute = flops / (m.flops(problem.dtype) * efficiency * threads)
    memory = nbytes / m.bandwidth(nbytes, threads)
    return max(compute, memory) + overhead


def _saturating(x: float, half: float) -> float:
    return x / (x + half)


def _transpose_seconds(entries: int, problem: Problem, m: Machine) -> float:
    """A parallel transposed copy of ``entries`` values (read once, written once)."""
    nbytes = 2 * entries * _itemsize(problem.dtype)
    return nbytes / m.bandwidth(nbytes, m.threads) * 1.5 + m.parallel_seconds


def _rotate_seconds(shapes: list[tuple[int, int]], problem: Problem, m: Machine) -> float:
    size = math.prod(c for _, c in shapes) * problem.k
    seconds = 0.0
    # a column-major block runs the mirror image, from the last factor
    for r, c in (reversed(shapes) if problem.column_major else shapes):
        seconds += _gemm_seconds(size // c, r, c, problem, m) + m.view_seconds
        size = size // c * r
    natural = "row" if problem.column_major else "column"
    return seconds + problem.copies(natural) * _transpose_seconds(size, problem, m)


def _modes_seconds(shapes: list[tuple[int, int]], problem: Problem, m: Machine) -> float:
    from ._mode import application_order

    lead, trail = (problem.k, 1) if problem.column_major and problem.k > 1 else (1, problem.k)
    dims = [c for _, c in shapes]
    seconds = 0.0
    for j in application_order(shapes):
        seconds += _mode_seconds(shapes[j], dims, j, lead, trail, problem, m)
        dims[j] = shapes[j][0]
    natural = "column" if problem.column_major and problem.k > 1 else "row"
    return seconds + problem.copies(natural) * _transpose_seconds(math.prod(dims) * problem.k, problem, m)


def _mode_seconds(shape: tuple[int, int], dims: list[int], j: int, lead: int, trail: int,
                  problem: Problem, m: Machine) -> float:
    """One mode product (``kronlin._mode._mode_product``) on axis ``j`` of ``(lead, *dims, trail)``."""
    from ._mode import split_batch

    r, c = shape
    before = lead * math.prod(dims[:j])
    after = math.prod(dims[j + 1 :]) * trail
    if before == 1:
        return _gemm_seconds(r, after, c, problem, m)
    if after == 1:
        return _gemm_seconds(before, r, c, problem, m)
    split = problem.backend == "numpy" and split_batch(r, c, after, before, m.threads)
    return _gemm_seconds(r, after, c, problem, m, calls=before, batched_after=after, split=split)


def _numba_seconds(shapes: list[tuple[int, int]], problem: Problem, m: Machine) -> float:
    from ._mode import application_order
    from ._mode_numba import pass_plan

    dims = [c for _, c in shapes]
    size_in = math.prod(dims) * problem.k
    seconds = _transpose_seconds(size_in, problem, m) if problem.column_major and problem.k > 1 else 0.0
    for axes, dims_in, dims_out in pass_plan(shapes, dims, application_order(shapes), problem.k):
        if len(axes) == 1:  # a BLAS mode product
            seconds += _mode_seconds(shapes[axes[0]], dims_in, axes[0], 1, problem.k, problem, m)
            continue
        current, flops = list(dims_in), 0.0
        for a in axes:  # in the order the pass applies them
            flops += 2.0 * math.prod(current) * problem.k * shapes[a][0]
            current[a] = shapes[a][0]
        nbytes = (math.prod(dims_in) + math.prod(dims_out)) * problem.k * _itemsize(problem.dtype)
        after = math.prod(dims_in[max(axes) + 1 :]) * problem.k  # the vectorized trailing width
        efficiency = _saturating(after, m.numba_half) * _saturating(min(shapes[a][1] for a in axes), 2.0)
        compute = flops / (m.flops(problem.dtype, numba=True) * efficiency * m.threads)
        memory = nbytes / m.bandwidth(nbytes, m.threads)
        seconds += max(compute, memory) + m.parallel_seconds + m.call_seconds
    size_out = math.prod(r for r, _ in shapes) * problem.k
    return seconds + problem.copies("row") * _transpose_seconds(size_out, problem, m)


# -- choosing ------------------------------------------------------------------------------------------


def groupings(shapes: Sequence[tuple[int, int]]) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every split of the factors into runs of consecutive ones whose product fits MAX_GROUP_SIDE."""
    n = len(shapes)

    def runs(start: int) -> Iterator[tuple[tuple[int, ...], ...]]:
        if start == n:
            yield ()
            return
        rows = cols = 1
        for stop in range(start + 1, n + 1):
            rows *= shapes[stop - 1][0]
            cols *= shapes[stop - 1][1]
            if stop > start + 1 and max(rows, cols) > MAX_GROUP_SIDE:
                break
            for rest in runs(stop):
                yield (tuple(range(start, stop)), *rest)

    yield from runs(0)


def allowed_kernels(request: str, backend: str) -> tuple[KernelName, ...]:
    """The kernels ``request`` (``"auto"`` or a kernel name) lets :func:`choose` consider."""
    if request == "auto":
        return KERNELS if backend == "numpy" else ("rotate", "modes")
    return (request,)


def choose(problem: Problem, request: str = "auto", threads: int | None = None) -> KronPlan:
    """The cheapest plan under the cost model among the ``request``-ed kernels and all groupings.

    ``threads`` defaults to :func:`thread_count` now (plans are cached per thread count). Ties
    keep the first candidate: fewer merged factors, then the order of :data:`KERNELS`.
    """
    return _choose(problem, request, thread_count(problem.backend) if threads is None else threads)


@functools.lru_cache(maxsize=4096)
def _choose(problem: Problem, request: str, threads: int) -> KronPlan:
    m = Machine(threads=threads)
    best: KronPlan | None = None
    for kernel in allowed_kernels(request, problem.backend):
        for groups in groupings(problem.shapes):
            seconds = estimate(KronPlan(kernel, groups), problem, m)
            if best is None or seconds < best.seconds:
                best = KronPlan(kernel, groups, seconds)
    return best
