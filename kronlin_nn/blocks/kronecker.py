r"""Kronecker-factored blocks of layers that apply a weight matrix at every location.

A linear layer computes :math:`s = W\bar a` at each of its *locations*: one per case for an
``nn.Linear`` on ``(n, d_in)`` inputs, one per sequence position for ``(n, L, d_in)``, one
per output pixel for a convolution, one per call when the layer is called several times.
Treating every location as a case of the shared weight (K-FAC-expand, Eschenhagen et al.
2023; KFC, Grosse & Martens 2016) gives

.. math::
    F \approx \bar A \otimes G, \qquad
    \bar A = \frac{1}{nR}\sum_{i,r} \bar a_{ir} \bar a_{ir}^\top, \qquad
    G = \frac1n \sum_{i,r} E\big[\tilde g_{ir} \tilde g_{ir}^\top\big],

with ``R`` locations per case (the 1/R on :math:`\bar A` keeps its homogeneous entry at 1;
only the product, and so neither the damped block nor π, depends on where it sits). With one
location per case these are the paper's factors (§3). It is exact where the paper's is
(one case, exact Fisher) and, with weight sharing, for deep linear networks whose output
gradients' covariance is the same at every location (e.g. a squared loss at every position).

In kronlin's row-major layout the block acts on ``[W.reshape(d_out, -1) | b]`` as
``Kron(G, A)``; its damped inverse for γ is ``Kron((G + γ/π I)⁻¹, (A + γπ I)⁻¹)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

import kronlin

from ..capture import homogeneous
from ..curvature import Candidates, kronecker_candidates
from ..damping import pi_scales
from .base import FactoredBlock, module_path

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["KroneckerBlock"]


class KroneckerBlock(FactoredBlock):
    r"""The block :math:`\bar A \otimes G` of a layer with ``weight`` (``d_out × …``) and ``bias``.

    Subclasses say how a call's input becomes rows of :math:`a` (one per location) and how
    an output gradient becomes rows of :math:`g`, and give the tangent forward.
    """

    chainable: ClassVar[bool] = True
    cached_tangents: ClassVar[bool] = True
    symmetric_inverses: ClassVar[bool] = True

    def __init__(self, name: str, module: nn.Module, param_names: Sequence[str | None]):
        super().__init__(name, module, (module.weight, module.bias), param_names)
        self.has_bias = module.bias is not None
        self.d_out = module.weight.shape[0]
        self.d_a = module.weight[0].numel() + self.has_bias

    @classmethod
    def owning(cls, name: str, module: nn.Module) -> KroneckerBlock | None:
        """The block of ``module`` if its weight is trainable (``None`` if frozen).

        Raises:
            ValueError: a trainable weight with a frozen bias (the bias is the layer's
                homogeneous coordinate, so the two form one block).

        """
        if not module.weight.requires_grad:
            return None
        if module.bias is not None and not module.bias.requires_grad:
            raise ValueError(
                f"{module_path(name)}: expected the bias to require grad like the weight (the bias is "
                f"the layer's homogeneous coordinate), got a frozen bias"
            )
        prefix = f"{name}." if name else ""
        return cls(name, module, (f"{prefix}weight", f"{prefix}bias" if module.bias is not None
                                  else None))

    # -- layout ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_a)``: the matrix ``[W | b]`` (``d_a`` counts the bias column)."""
        return (self.d_out, self.d_a)

    @override
    def parameter_views(self) -> list[Tensor | None]:
        return [self.module.weight.view(self.d_out, -1), self.module.bias]

    @override
    def segment_views(self, segment: Tensor) -> list[Tensor | None]:
        M = segment.view(*segment.shape[:-1], self.d_out, self.d_a)
        if self.has_bias:
            return [M[..., :-1], M[..., -1]]
        return [M, None]

    # -- statistics ----------------------------------------------------------------------------
    @abstractmethod
    def input_rows(self, call: LayerIO) -> Tensor:
        """The call's inputs as rows of :math:`a` (no bias column): ``(n·R, d_a − bias)``."""

    @abstractmethod
    def gradient_rows(self, grad: Tensor) -> Tensor:
        """A gradient at the call's output as rows of :math:`g`: ``(K·n·R, d_out)``.

        Within each of the ``K`` vectors the rows are in the order of :meth:`input_rows`.
        """

    @abstractmethod
    def locations(self, call: LayerIO) -> int:
        """``R``, the number of locations per case of a call."""

    def rows(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
             weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(ā, g)``: all calls' rows, ``ā`` with the homogeneous coordinate.

        With per-case ``weights`` :math:`w` (``(n,)``), every row of case ``i`` of ``ā`` is
        multiplied by :math:`\sqrt{w_i}`, so that products of rows are weighted expectations.
        """
        rows = [self.input_rows(c) for c in calls]
        a_bar = homogeneous(_cat(rows), self.has_bias)
        if weights is not None:
            root = weights.sqrt()[:, None]  # rows are (case, location)-ordered
            a_bar = a_bar * _cat([root.expand(-1, r.shape[0] // root.shape[0]).reshape(-1, 1)
                                  for r in rows])
        return a_bar, _cat([self.gradient_rows(g) for g in grads])

    def batch_statistics(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                         n: int, weights: Tensor | None = None) -> list[Tensor]:
        r""":math:`[\bar A, \tilde G]` from the rows: :math:`\bar a^\top\bar a/(nR)`, :math:`g^\top g/n`."""
        return self.row_statistics(*self.rows(calls, grads, weights), n)

    @staticmethod
    def row_statistics(a_bar: Tensor, g: Tensor, n: int) -> list[Tensor]:
        r""":math:`[\bar A, \tilde G]` from rows already gathered (see :meth:`rows`)."""
        return [a_bar.T @ a_bar / a_bar.shape[0], g.T @ g / n]

    # -- curvature -----------------------------------------------------------------------------
    @property
    @override
    def refresh_cost(self) -> float:
        return float(self.d_a**3 + self.d_out**3)

    @override
    def inverses(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                 pi: str) -> Candidates:
        A, G = self.kronecker_pair(stats, kappa)
        (p,) = pi_scales([A], [G], pi)
        return kronecker_candidates(A, G, p, gammas, self.name)

    @override
    def inverse_tensors(self, op: kronlin.Kron) -> list[Tensor]:
        return list(op.factors)

    @override
    def inverse_operator(self, tensors: Sequence[Tensor]) -> kronlin.Kron:
        return kronlin.Kron(*tensors)


def _cat(rows: Sequence[Tensor]) -> Tensor:
    """The rows of several calls stacked (no copy for the usual single call)."""
    return rows[0] if len(rows) == 1 else torch.cat(list(rows))
