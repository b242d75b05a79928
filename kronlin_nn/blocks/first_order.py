r"""The first-order block: no curvature estimate, the damping alone (``unsupported="first_order"``).

Its block of :math:`\tilde F_\gamma` is :math:`\gamma^2 I`, so the parameters' part of the
proposal is :math:`\Delta = -\nabla h/\gamma^2`: a gradient step. The update
:math:`\delta = \alpha\Delta + \mu\delta_0` then scales it with the rest, by the α and μ
that minimize the exact-Fisher quadratic model, whose Fisher products include these
parameters. Nothing is recorded or estimated for them; it is the choice for parameters whose
module the diagonal block cannot trace (e.g. modules whose parameters are used by an
enclosing module's own code), in the spirit of kfac-pytorch, which leaves such parameters
to the base optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from ..curvature import Candidates
from ..operators import Diagonal
from .diagonal import FlatBlock

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["FirstOrderBlock"]


class FirstOrderBlock(FlatBlock):
    r"""The block :math:`\gamma^2 I` of a module's direct parameters."""

    kind: ClassVar[str] = "first_order"
    statistics: ClassVar[tuple[str, ...]] = ()
    recorded: ClassVar[bool] = False

    @override
    def batch_statistics(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                         n: int, weights: Tensor | None = None) -> list[Tensor]:
        return []

    def factors(self, stats: Sequence[Tensor], kappa: float) -> None:
        """None: the block has no curvature estimate."""
        return None

    @override
    def kronecker_pair(self, stats: Sequence[Tensor], kappa: float) -> None:
        return None

    @property
    @override
    def refresh_cost(self) -> float:
        return 0.0

    @override
    def inverses(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                 pi: str) -> Candidates:
        scale = 1 / torch.square(gammas)
        return Candidates(torch.isfinite(scale),
                          lambda j: Diagonal(scale[j].expand(self.size)))

    @override
    def inverse_tensors(self, op: Diagonal) -> list[Tensor]:
        return [op.d[:1]]

    @override
    def inverse_operator(self, tensors: Sequence[Tensor]) -> Diagonal:
        return Diagonal(tensors[0].expand(self.size))
