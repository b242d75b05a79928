r"""The units of an inverse refresh: the independent diagonal blocks of :math:`\tilde F_\gamma^{-1}`.

:math:`\breve F_\gamma^{-1}` (``approx="blockdiag"``, paper §4.2) is block diagonal over the
curvature blocks; :math:`\hat F_\gamma^{-1}` (``"tridiag"``, §4.3) over the block-tridiagonal
chain, whose inverse couples its layers, and the blocks beside it. Each diagonal block of the
inverse is a *unit*:

- it is built from its own statistics only (:attr:`InverseUnit.keys` names them in the groups
  of the moving averages), so it can be refreshed wherever those statistics are: one rank per
  unit in data-parallel training (:mod:`kronlin_nn.distributed`);
- it acts on one contiguous segment ``[start, stop)`` of the flat parameter vector;
- its inverse moves as plain tensors (:meth:`~InverseUnit.tensors`,
  :meth:`~InverseUnit.operator`): to other ranks and into checkpoints.

A unit's refresh does not raise for bad numbers: non-finite statistics, or damped curvature that
is not positive definite, only make that candidate's ``ok`` false, so that every rank can reach
the same decision from the reduced flags.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

import kronlin

from .blocks import CurvatureBlock
from .curvature import Candidates, FactorError, tridiag_blocks, tridiag_inverse
from .damping import pi_scales
from .statistics import SYMMETRIC_GROUPS

__all__ = ["BlockUnit", "ChainUnit", "InverseUnit", "inverse_units"]

Key = tuple[str, int]  # (group of the moving averages, index in the group)


class InverseUnit(ABC):
    """One diagonal block of the damped inverse, refreshed, moved and applied as a whole.

    Args:
        start, stop: its segment of the flat parameter vector.
        keys: the statistics it is built from, ``(group, index)`` in the moving averages.
        cost: the refresh's cost estimate (``n³`` flops per dense factor), which the
            assignment of units to ranks balances.

    """

    def __init__(self, start: int, stop: int, keys: Sequence[Key], cost: float):
        self.start, self.stop, self.keys, self.cost = start, stop, tuple(keys), float(cost)

    @property
    def size(self) -> int:
        """The length of its segment."""
        return self.stop - self.start

    def symmetric_statistics(self) -> list[bool]:
        """Per statistic of :attr:`keys`, whether it is a symmetric matrix."""
        return [name in SYMMETRIC_GROUPS for name, _ in self.keys]

    @abstractmethod
    def candidates(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                   pi: str) -> Candidates:
        """Its damped inverse for each γ of ``gammas`` (``(c,)``), from the statistics of :attr:`keys`."""

    @abstractmethod
    def tensors(self, op: kronlin.LinearOperator) -> list[Tensor]:
        """The tensors that define the inverse ``op``."""

    @abstractmethod
    def symmetric(self, tensors: Sequence[Tensor]) -> list[bool]:
        """Per tensor of :meth:`tensors`, whether it is a symmetric matrix."""

    @abstractmethod
    def operator(self, tensors: Sequence[Tensor]) -> kronlin.LinearOperator:
        """The inverse again, from :meth:`tensors`."""


class BlockUnit(InverseUnit):
    """The unit of one curvature block (its own protocol does the work)."""

    def __init__(self, block: CurvatureBlock, start: int, keys: Sequence[Key]):
        super().__init__(start, start + block.size, keys, block.refresh_cost)
        self.block = block

    def candidates(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                   pi: str) -> Candidates:
        """The block's :meth:`~kronlin_nn.blocks.CurvatureBlock.inverses`, refused where not finite."""
        found = self.block.inverses(stats, kappa, gammas, pi)
        if not stats:
            return found
        finite = torch.isfinite(torch.stack([t.sum() for t in stats]).sum())  # no host sync
        return Candidates(found.ok & finite, found.build)

    def tensors(self, op: kronlin.LinearOperator) -> list[Tensor]:
        """The block's :meth:`~kronlin_nn.blocks.CurvatureBlock.inverse_tensors`."""
        return self.block.inverse_tensors(op)

    def symmetric(self, tensors: Sequence[Tensor]) -> list[bool]:
        """The square matrices, if the block declares them symmetric."""
        return [self.block.symmetric_inverses and _square(t) for t in tensors]

    def operator(self, tensors: Sequence[Tensor]) -> kronlin.LinearOperator:
        """The block's :meth:`~kronlin_nn.blocks.CurvatureBlock.inverse_operator`."""
        return self.block.inverse_operator(tensors)


class ChainUnit(InverseUnit):
    r"""The block-tridiagonal chain: one ``BlockTridiagInverse`` over its ``b`` layers.

    Statistics: the layers' :math:`\bar A_i`, then their :math:`\tilde G_i`, then the ``b − 1``
    cross moments :math:`\bar A_{i-1,i}`, then :math:`\tilde G_{i,i+1}`. Tensors: the couplings
    :math:`\Psi_i` (two factors each), each conditional :math:`\Sigma_{i|i+1}^{-1}` as its two
    bases and its eigenvalue array, and the two factors of :math:`\Sigma_b^{-1}`.
    """

    def __init__(self, blocks: Sequence[CurvatureBlock], start: int, keys: Sequence[Key]):
        size = sum(b.size for b in blocks)
        super().__init__(start, start + size, keys, sum(b.refresh_cost for b in blocks))
        self.length = len(blocks)

    def candidates(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                   pi: str) -> Candidates:
        r""":math:`\hat F_\gamma^{-1}` of the chain for each γ (undamped cross moments, spec §8)."""
        b = self.length
        A, G = list(stats[:b]), [kappa * g for g in stats[b: 2 * b]]
        A_cross, G_cross = stats[2 * b: 3 * b - 1], [kappa * g for g in stats[3 * b - 1:]]
        pis = pi_scales(A, G, pi)
        ops: list[kronlin.LinearOperator | None] = []
        for gamma in gammas.tolist():
            try:
                ops.append(tridiag_inverse(*tridiag_blocks(A, G, A_cross, G_cross, pis, gamma)))
            except FactorError:
                ops.append(None)
        ok = torch.tensor([op is not None for op in ops], device=gammas.device)
        return Candidates(ok, ops.__getitem__)

    def tensors(self, op: kronlin.BlockTridiagInverse) -> list[Tensor]:
        """Couplings, the conditionals' bases and values, the last block's factors."""
        out = [M for pair in op.couplings for M in pair]
        for conditional in op.conditionals[:-1]:
            out += [*conditional.bases, conditional.values]
        return out + list(op.conditionals[-1].factors)

    def symmetric(self, tensors: Sequence[Tensor]) -> list[bool]:
        """Only the last block's two factor inverses are symmetric."""
        return [False] * (len(tensors) - 2) + [True, True]

    def operator(self, tensors: Sequence[Tensor]) -> kronlin.BlockTridiagInverse:
        """``BlockTridiagInverse.from_parts`` of the tensors."""
        links = self.length - 1
        couplings = [(tensors[2 * i], tensors[2 * i + 1]) for i in range(links)]
        rest = tensors[2 * links:]
        conditionals = [kronlin.KronEigen(rest[3 * i: 3 * i + 2], rest[3 * i + 2])
                        for i in range(links)]
        return kronlin.BlockTridiagInverse.from_parts(
            couplings, [*conditionals, kronlin.Kron(*rest[3 * links:])])


def inverse_units(blocks: Sequence[CurvatureBlock], offsets: Sequence[int],
                  slots: Sequence[dict[str, int]], chain: int) -> list[InverseUnit]:
    """The units of the damped inverse, in the order of the flat vector.

    Args:
        blocks: the curvature blocks in flat-vector order.
        offsets: where each block's segment starts (:attr:`~kronlin_nn.layout.ParameterLayout.offsets`).
        slots: per block, the index of each of its statistics in its group.
        chain: how many leading blocks form the block-tridiagonal chain (0: block-diagonal).

    """
    units: list[InverseUnit] = []
    if chain:
        keys = ([("A", slots[i]["A"]) for i in range(chain)]
                + [("G", slots[i]["G"]) for i in range(chain)]
                + [("A_cross", i) for i in range(chain - 1)]
                + [("G_cross", i) for i in range(chain - 1)])
        units.append(ChainUnit(blocks[:chain], 0, keys))
    for i in range(chain, len(blocks)):
        block = blocks[i]
        units.append(BlockUnit(block, offsets[i], [(name, slots[i][name])
                                                   for name in block.statistics]))
    return units


def _square(t: Tensor) -> bool:
    return t.ndim == 2 and t.shape[0] == t.shape[1]
