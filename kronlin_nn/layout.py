r"""The map between the curvature blocks' parameters and kronlin's flat vectors.

Each block (:mod:`kronlin_nn.blocks`) owns a segment of the flat parameter vector, in the
geometry its operator acts on: for a Kronecker block the row-major flattening of the matrix
:math:`[W \mid b]` of shape ``(d_out, d_a)`` (the bias is the homogeneous coordinate, paper
§2), on which the paper's Fisher block :math:`\bar A \otimes G` (column-stacking ``vec``) is
``Kron(G, A)``; for a diagonal block its parameters flattened and concatenated. The vector of
all blocks is the concatenation in block order, which is the order of the operators in
``BlockDiag`` / ``BlockTridiagInverse``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor, nn

from .blocks import CurvatureBlock, block_for

__all__ = ["ParameterLayout"]


class ParameterLayout:
    """Pack per-block parameter tuples into one flat vector and unpack it again.

    Args:
        blocks: the curvature blocks, in the order of the flat vector (a module stands for
            its registered block, e.g. an ``nn.Linear`` for its ``(W, b)`` block).

    """

    def __init__(self, blocks: Sequence[CurvatureBlock | nn.Module]):
        self.blocks = [b if isinstance(b, CurvatureBlock) else _registered(b) for b in blocks]
        self.shapes = [b.shape for b in self.blocks]
        self.offsets = [0, *accumulate(b.size for b in self.blocks)]

    @property
    def size(self) -> int:
        """``P``, the total number of parameters."""
        return self.offsets[-1]

    def pack(self, tuples: Sequence[Sequence[Tensor | None]]) -> Tensor:
        """The flat vector of per-block tensors shaped like the blocks' parameters.

        ``tuples[i]`` aligns with ``blocks[i].params``; entries for absent parameters (``None``)
        are ignored.
        """
        first = next(t for group in tuples for t in group if t is not None)
        flat = torch.empty(self.size, dtype=first.dtype, device=first.device)
        for block, segment, tensors in zip(self.blocks, self.split(flat), tuples, strict=True):
            for view, t in zip(block.segment_views(segment), tensors, strict=True):
                if view is not None:
                    view.copy_(t.reshape(view.shape))
        return flat

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` (shape ``(P,)``) as the blocks' segments, each ``(size,)``."""
        return [flat[lo:hi] for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def unpack(self, flat: Tensor) -> list[tuple[Tensor | None, ...]]:
        """Per block, ``flat``'s entries shaped like its parameters (``None`` where absent)."""
        return [b.unpack(s) for b, s in zip(self.blocks, self.split(flat), strict=True)]

    def unstack(self, rows: Tensor) -> list[Tensor]:
        """Per block, the rows' segments in its geometry: ``(K, *shape)`` from ``(K, P)``."""
        return [b.unstack(rows[:, lo:hi]) for b, lo, hi in
                zip(self.blocks, self.offsets[:-1], self.offsets[1:], strict=True)]

    def named_tensors(self, flat: Tensor, names: dict[int, str]) -> dict[str, Tensor]:
        """``{parameter name: tensor}`` for ``torch.func.functional_call``.

        Args:
            flat: a flat vector of shape ``(P,)``, or ``K`` of them, ``(K, P)`` (the tensors
                then have a leading ``K`` dimension).
            names: ``id(parameter) → name`` in the model.

        """
        out = {}
        for block, lo, hi in zip(self.blocks, self.offsets[:-1], self.offsets[1:], strict=True):
            for p, t in zip(block.params, block.unpack(flat[..., lo:hi]), strict=True):
                if p is not None:
                    out[names[id(p)]] = t
        return out

    def parameters(self) -> list[tuple[Tensor | None, ...]]:
        """Per block, its parameters (``None`` for an absent bias)."""
        return [b.params for b in self.blocks]

    def trainable(self) -> list[Tensor]:
        """All parameters in flat-vector order."""
        return [p for b in self.blocks for p in b.params if p is not None]

    def regroup(self, tensors: Sequence[Tensor]) -> list[tuple[Tensor | None, ...]]:
        """Tensors in :meth:`trainable` order (e.g. their gradients) as per-block tuples."""
        out, it = [], iter(tensors)
        for block in self.blocks:
            out.append(tuple(None if p is None else next(it) for p in block.params))
        return out

    def flat_parameters(self) -> Tensor:
        """The current parameters as one flat vector (a copy)."""
        with torch.no_grad():
            return self.pack(self.parameters())

    def add_(self, flat: Tensor) -> None:
        """``θ ← θ + flat`` in place on the blocks' parameters."""
        self._update(flat, Tensor.add_)

    def copy_(self, flat: Tensor) -> None:
        """``θ ← flat`` in place on the blocks' parameters."""
        self._update(flat, Tensor.copy_)

    def _update(self, flat: Tensor, op) -> None:
        with torch.no_grad():
            for block, segment in zip(self.blocks, self.split(flat), strict=True):
                for target, view in zip(block.parameter_views(), block.segment_views(segment),
                                        strict=True):
                    if target is not None:
                        op(target, view)


def _registered(module: nn.Module) -> CurvatureBlock:
    block = block_for(module)
    if block is None:
        raise ValueError(f"blocks: {type(module).__name__} has no registered curvature block with "
                         f"trainable parameters")
    return block
