r"""Two kronlin operators for the blocks whose curvature has a diagonal part.

kronlin's :class:`~kronlin.Kron` takes dense factors; an embedding's input factor is diagonal
(the one-hot covariance), with as many entries as the vocabulary, and diagonal blocks are a
diagonal alone. Forming those diagonals as dense matrices would cost :math:`O(V^2)` memory and
an :math:`O(V^2 d)` GEMM; these operators apply them in :math:`O(Vd)` and :math:`O(Vd^2)`.

- :class:`Diagonal`: :math:`\operatorname{diag}(d)`.
- :class:`DiagKron`: :math:`\operatorname{diag}(d) \otimes M` in kronlin's row-major
  convention, i.e. :math:`X \mapsto \operatorname{diag}(d)\, X M^\top` on ``(len(d), M.shape[1])``
  matrices ``X``.

Both are torch-only (they serve kronlin_nn) and symmetric when ``M`` is.
"""

from __future__ import annotations

import array_api_compat
from torch import Tensor

import kronlin

__all__ = ["DiagKron", "Diagonal"]


class Diagonal(kronlin.LinearOperator):
    r""":math:`\operatorname{diag}(d)` for a vector ``d`` of shape ``(n,)``."""

    def __init__(self, d: Tensor):
        super().__init__((d.shape[0], d.shape[0]), xp=array_api_compat.array_namespace(d),
                         dtype=d.dtype, device=d.device)
        self.d = d

    def _matmat(self, X: Tensor) -> Tensor:
        return self.d[:, None] * X

    _rmatmat = _matmat

    def _transpose(self) -> Diagonal:
        return self


class DiagKron(kronlin.LinearOperator):
    r""":math:`\operatorname{diag}(d) \otimes M` for ``d`` of shape ``(r,)`` and ``M`` ``(p, q)``.

    Applied to a block of ``k`` vectors (each the row-major flattening of an ``(r, q)``
    matrix ``X``) it costs one batched GEMM, ``2 r p q k`` flops.
    """

    def __init__(self, d: Tensor, M: Tensor):
        r, (p, q) = d.shape[0], M.shape
        super().__init__((r * p, r * q), xp=array_api_compat.array_namespace(d, M),
                         dtype=M.dtype, device=M.device)
        self.d, self.M = d, M

    def _apply(self, M: Tensor, X: Tensor) -> Tensor:
        r, k = self.d.shape[0], X.shape[1]
        X3 = X.reshape(r, M.shape[1], k)
        return (self.d[:, None, None] * (M @ X3)).reshape(r * M.shape[0], k)

    def _matmat(self, X: Tensor) -> Tensor:
        return self._apply(self.M, X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._apply(self.M.T, X)

    def _transpose(self) -> DiagKron:
        return DiagKron(self.d, self.M.T)
