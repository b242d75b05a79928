"""The Kronecker-matmat grid of issue 15, shared by ``compare.py --grid`` and the asv suite.

Cells: ``n × n`` factors with ``n`` in 8 … 512, 2 to 6 of them, ``N = nᵈ ≤ 2²⁴`` rows, on
``k ∈ {1, 16, 256}`` right-hand sides with at most ``2²⁴`` entries in the block ``X`` (128 MiB
in float64: "total size up to 2²⁴"), in float32 and float64; plus rectangular factors
(shrinking, growing and mixed shapes) and the issue's own cells outside that box (3 × 32×32 on
64 vectors; 6 × 8×8 on 256, a 2²⁶-entry block).

For every cell the same data goes to kronlin (``Kron(*factors) @ X``), to pyfastkron
(``gekmm(factors, X)``, where installed) and to the NumPy/BLAS expressions a user would write
(:func:`numpy_expressions`); the best of those is the NumPy reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_ENTRIES = 2**24
"""Entries of the block ``X`` at most (rows × right-hand sides)."""

SIDES = (8, 16, 32, 64, 128, 256, 512)
COUNTS = (2, 3, 4, 5, 6)
WIDTHS = (1, 16, 256)


@dataclass(frozen=True)
class Cell:
    """One grid cell: factor shapes ``(rows, cols)`` and the block width ``k``."""

    shapes: tuple[tuple[int, int], ...]
    k: int

    @property
    def name(self) -> str:
        sides = {s for s in self.shapes}
        if len(sides) == 1:
            (r, c), = sides
            factors = f"{len(self.shapes)} × {r}×{c}"
        else:
            factors = " ⊗ ".join(f"{r}×{c}" for r, c in self.shapes)
        return f"{factors}, k={self.k}"

    @property
    def key(self) -> str:
        """An ASCII name (asv parameters): ``3x64x64-k1`` or ``128x64-64x128-k16``."""
        if len(set(self.shapes)) == 1:
            (r, c), = set(self.shapes)
            return f"{len(self.shapes)}x{r}x{c}-k{self.k}"
        return "-".join(f"{r}x{c}" for r, c in self.shapes) + f"-k{self.k}"

    @property
    def rows(self) -> int:
        return math.prod(c for _, c in self.shapes)

    def flops(self) -> float:
        """Flops of the mode products in the cheapest order (``kronlin._mode.chain_flops``)."""
        from kronlin._mode import application_order, chain_flops

        return float(chain_flops(self.shapes, application_order(self.shapes), self.k))


def square_cells() -> list[Cell]:
    cells = []
    for n in SIDES:
        for d in COUNTS:
            if n**d > 2**24:
                continue
            for k in WIDTHS:
                if n**d * k <= MAX_ENTRIES:
                    cells.append(Cell(((n, n),) * d, k))
    return cells


RECTANGULAR = (
    ((512, 256), (512, 256)),            # growing: the result has 4× the entries of X
    ((256, 512), (256, 512)),            # shrinking: a quarter
    ((128, 64), (64, 128), (128, 64)),
    ((64, 32), (16, 16), (8, 64)),
    ((16, 8), (8, 16), (16, 8), (8, 16)),
    ((32, 8), (32, 8), (32, 8)),
    ((8, 32), (8, 32), (8, 32), (8, 32)),
    ((300, 200), (20, 10)),              # not powers of two (K-FAC layer shapes)
)

ISSUE_EXTRA = (Cell(((32, 32),) * 3, 64), Cell(((8, 8),) * 6, 256))


def rectangular_cells() -> list[Cell]:
    cells = []
    for shapes in RECTANGULAR:
        for k in WIDTHS:
            entries = max(math.prod(c for _, c in shapes), math.prod(r for r, _ in shapes)) * k
            if entries <= MAX_ENTRIES:
                cells.append(Cell(shapes, k))
    return cells


def all_cells() -> list[Cell]:
    return square_cells() + rectangular_cells() + list(ISSUE_EXTRA)


def data(cell: Cell, dtype: str, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Factors with entries of order ``1/√c`` (products stay of order one) and a row-major block."""
    rng = np.random.default_rng(seed)
    factors = [(rng.standard_normal(s) / math.sqrt(s[1])).astype(dtype) for s in cell.shapes]
    X = rng.standard_normal((cell.rows, cell.k)).astype(dtype)
    return factors, X


def numpy_expressions(factors: list[np.ndarray], X: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """The NumPy/BLAS ways to compute ``(F₁ ⊗ … ⊗ Fₙ) X`` without kronlin, each a closure.

    - ``matmul modes``: the mode products on reshaped views, one ``np.matmul`` per factor;
    - ``shuffle``: ``T = T.reshape(c, -1).T @ F.T`` per factor (one GEMM each), then one copy
      of the transposed result when ``k > 1``;
    - ``tensordot``: ``np.tensordot`` + ``np.moveaxis`` per factor;
    - ``A @ X @ B.T`` (two factors): the batched product on the ``(k, c₁, c₂)`` view of ``Xᵀ``
      (one copy of ``X`` to get there), the result left transposed.
    """
    shapes = [f.shape for f in factors]
    k = X.shape[1]
    cols = [c for _, c in shapes]
    rows = math.prod(r for r, _ in shapes)

    def matmul_modes():
        T = X
        dims = list(cols)
        for j, F in enumerate(factors):
            before, after = math.prod(dims[:j]), math.prod(dims[j + 1:]) * k
            T = np.matmul(F, T.reshape(before, dims[j], after))
            dims[j] = F.shape[0]
        return T.reshape(rows, k)

    def shuffle():
        T = X
        for F in factors:
            T = T.reshape(F.shape[1], -1).T @ F.T
        return T.reshape(rows, 1) if k == 1 else np.ascontiguousarray(T.reshape(k, rows).T)

    def tensordot():
        T = X.reshape(*cols, k)
        for j, F in enumerate(factors):
            T = np.moveaxis(np.tensordot(F, T, axes=(1, j)), 0, j)
        return T.reshape(rows, k)

    out = {"matmul modes": matmul_modes, "shuffle": shuffle, "tensordot": tensordot}
    if len(factors) == 2:
        A, B = factors

        def batched():
            return (A @ X.T.reshape(k, *cols) @ B.T).reshape(k, rows).T

        out["A @ X @ B.T"] = batched
    return out


def pyfastkron():
    """pyfastkron's NumPy module, or ``None`` when it is not installed."""
    try:
        import pyfastkron.fastkronnumpy as fk
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return fk
