"""``BlockDiag``: a block-diagonal operator of operators (K-FAC's block-diagonal F̆, paper §4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from ._backend import Array
from .operator import LinearOperator, common_properties, list_terms


class BlockDiag(LinearOperator):
    r""":math:`\operatorname{diag}(M_1, \dots, M_b)`, acting on concatenated vectors.

    Args:
        ops: ``b ≥ 1`` :class:`LinearOperator` blocks (one backend and device); block ``i`` has
            shape ``(mᵢ, nᵢ)``, the operator ``(Σmᵢ, Σnᵢ)``.

    Apply costs the sum of the blocks' applies. ``inv``, ``solve``, ``logdet``, ``trace`` and
    ``diagonal`` map over the blocks and need each block to provide them.

    Raises:
        TypeError: a block is not a LinearOperator, or backends mix.
        ValueError: no blocks, or blocks on different devices.

    """

    def __init__(self, ops: Sequence[LinearOperator]):
        ops = list(ops)
        if not ops:
            raise ValueError("ops: expected at least one block, got none")
        for i, op in enumerate(ops):
            if not isinstance(op, LinearOperator):
                raise TypeError(f"ops[{i}]: expected a kronlin LinearOperator, got {type(op).__name__}")
        shape = (sum(op.shape[0] for op in ops), sum(op.shape[1] for op in ops))
        super().__init__(shape, **common_properties(ops, "ops"))
        self._blocks = tuple(ops)
        self._row_splits = [0, *accumulate(op.shape[0] for op in ops)]
        self._col_splits = [0, *accumulate(op.shape[1] for op in ops)]

    @property
    def blocks(self) -> tuple[LinearOperator, ...]:
        """The diagonal blocks."""
        return self._blocks

    def _apply(self, X: Array, splits: list[int], method: str) -> Array:
        parts = [
            getattr(op, method)(X[lo:hi])
            for op, lo, hi in zip(self._blocks, splits[:-1], splits[1:], strict=True)
        ]
        return self.xp.concat(parts, axis=0)

    def _matmat(self, X: Array) -> Array:
        return self._apply(X, self._col_splits, "_matmat")

    def _rmatmat(self, X: Array) -> Array:
        return self._apply(X, self._row_splits, "_rmatmat")

    def _transpose(self) -> BlockDiag:
        return BlockDiag([op.T for op in self._blocks])

    def _term(self) -> str:
        return f"BlockDiag({list_terms(self._blocks, ', ')})"

    def inv(self) -> BlockDiag:
        """``diag(M₁⁻¹, …, M_b⁻¹)``."""
        return BlockDiag([op.inv() for op in self._blocks])

    def solve(self, b: Array) -> Array:
        """Solve blockwise; ``b`` of shape ``(N,)`` or ``(N, k)``."""
        return self._solve_with(self.inv, b)

    def logdet(self) -> Array:
        """``Σᵢ log det Mᵢ``."""
        return sum(op.logdet() for op in self._blocks)

    def trace(self) -> Array:
        """``Σᵢ tr Mᵢ``."""
        return sum(op.trace() for op in self._blocks)

    def diagonal(self) -> Array:
        """The concatenated block diagonals, shape ``(N,)``."""
        return self.xp.concat([op.diagonal() for op in self._blocks], axis=0)
