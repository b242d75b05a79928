r"""The map between the layers' parameters and kronlin's flat vectors.

Layer ``i`` has the parameter matrix :math:`[W_i \mid b_i]` of shape ``(d_out, d_in + 1)``
(``(d_out, d_in)`` without bias; the bias is the homogeneous coordinate, paper §2). kronlin
operators act on the row-major flattening of that matrix, on which the paper's Fisher block
:math:`\bar A \otimes G` (column-stacking ``vec``) is ``Kron(G, A)``. The vector of all
layers is the concatenation in layer order, which is the order of the operators in
``BlockDiag`` / ``BlockTridiagInverse``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor, nn

__all__ = ["ParameterLayout"]


class ParameterLayout:
    """Pack per-layer ``(W, b)`` pairs into one flat vector and unpack it again.

    Args:
        layers: the ``nn.Linear`` layers, in the order of the flat vector.

    """

    def __init__(self, layers: Sequence[nn.Linear]):
        self.layers = list(layers)
        self.has_bias = [m.bias is not None for m in self.layers]
        self.shapes = [(m.out_features, m.in_features + b)
                       for m, b in zip(self.layers, self.has_bias, strict=True)]
        self.offsets = [0, *accumulate(r * c for r, c in self.shapes)]

    @property
    def size(self) -> int:
        """``P``, the total number of parameters."""
        return self.offsets[-1]

    def pack(self, pairs: Sequence[tuple[Tensor, Tensor | None]]) -> Tensor:
        """The flat vector of ``[(W_i, b_i)]`` (``b_i`` ignored for layers without bias)."""
        W0 = pairs[0][0]
        flat = torch.empty(self.size, dtype=W0.dtype, device=W0.device)
        for M, (W, b), bias in zip(self.split(flat), pairs, self.has_bias, strict=True):
            if bias:
                M[:, :-1].copy_(W)
                M[:, -1].copy_(b)
            else:
                M.copy_(W)
        return flat

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` (shape ``(P,)``) as the matrices ``[W_i | b_i]``."""
        return [flat[lo:hi].view(shape) for lo, hi, shape in
                zip(self.offsets[:-1], self.offsets[1:], self.shapes, strict=True)]

    def unpack(self, flat: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Views ``(W_i, b_i)`` of ``flat`` (``b_i`` is ``None`` without bias)."""
        return [(M[:, :-1], M[:, -1]) if bias else (M, None)
                for M, bias in zip(self.split(flat), self.has_bias, strict=True)]

    def unstack(self, rows: Tensor) -> list[Tensor]:
        """Per layer, the matrices ``[dW | db]`` of the rows: ``(K, d_out, d_in + 1)`` from ``(K, P)``."""
        return [rows[:, lo:hi].reshape(rows.shape[0], r, c)
                for lo, hi, (r, c) in zip(self.offsets[:-1], self.offsets[1:], self.shapes,
                                          strict=True)]

    def named_tensors(self, flat: Tensor, names: dict[int, str]) -> dict[str, Tensor]:
        """``{parameter name: view of flat}`` for ``torch.func.functional_call``.

        Args:
            flat: a flat vector of shape ``(P,)``.
            names: ``id(parameter) → name`` in the model.

        """
        out = {}
        for (W, b), (dW, db) in zip(self.parameters(), self.unpack(flat), strict=True):
            out[names[id(W)]] = dW
            if b is not None:
                out[names[id(b)]] = db
        return out

    def parameters(self) -> list[tuple[Tensor, Tensor | None]]:
        """The layers' ``(weight, bias)`` parameters."""
        return [(m.weight, m.bias) for m in self.layers]

    def flat_parameters(self) -> Tensor:
        """The current parameters as one flat vector (a copy)."""
        with torch.no_grad():
            return self.pack(self.parameters())

    def add_(self, flat: Tensor) -> None:
        """``θ ← θ + flat`` in place on the layers' parameters."""
        with torch.no_grad():
            for (W, b), (dW, db) in zip(self.parameters(), self.unpack(flat), strict=True):
                W.add_(dW)
                if b is not None:
                    b.add_(db)
