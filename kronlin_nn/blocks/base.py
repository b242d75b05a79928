r"""The curvature-block protocol: what every block of :math:`\tilde F` says about itself.

K-FAC approximates the Fisher by a matrix that is block-diagonal over groups of parameters
(paper §4.2). A *block* covers the parameters of one module and says four things:

1. **which parameters it owns**, and how they map to its segment of the flat parameter
   vector (:meth:`CurvatureBlock.parameter_views`, :meth:`~CurvatureBlock.segment_views`);
2. **how recorded calls become statistics**: :meth:`~CurvatureBlock.batch_statistics` turns
   the module's recorded inputs and outputs (:class:`~kronlin_nn.capture.LayerIO`) and the
   gradients backpropagated to its outputs into per-case expectations, a flat list of
   tensors named by :attr:`~CurvatureBlock.statistics` (e.g. ``("A", "G")``); the optimizer
   keeps their moving averages;
3. **the structure handed to kronlin**: :meth:`~CurvatureBlock.inverses` turns averaged
   statistics into the damped inverse, a kronlin operator, for every damping candidate γ
   (*refresh*); applying it to a gradient is ``op @ x`` (*apply*), and
   :meth:`~CurvatureBlock.inverse_tensors` / :meth:`~CurvatureBlock.inverse_operator` move
   the inverse to and from plain tensors (checkpoints, and broadcasting it to other ranks);
4. **its tangent map** for the quadratic model: :meth:`~CurvatureBlock.tangent_forward`
   replaces the module's forward by one that returns the recorded output and its
   forward-mode tangent, or ``None`` when the generic ``torch.func`` path must be used.

Conventions: statistics are per-case expectations *without* the loss's reduction scale
:math:`\kappa` (:mod:`kronlin_nn.factors`), which is applied when inverting; the damping of a
block for γ is the factored Tikhonov damping of Kronecker blocks (paper §6.3) and
:math:`\gamma^2 I` for diagonal ones.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from torch import Tensor, nn

if TYPE_CHECKING:
    import kronlin

    from ..capture import LayerIO
    from ..curvature import Candidates

__all__ = ["CurvatureBlock", "DiagonalFactors", "FactoredBlock", "KroneckerFactors", "module_path",
           "repeat_rows"]


class KroneckerFactors(NamedTuple):
    r"""A Kronecker-factored block :math:`A \otimes G` (paper order; ``Kron(G, A)`` on ``[W | b]``).

    ``A`` is ``(d_a, d_a)``, or a vector ``(d_a,)`` when the factor is diagonal (embeddings).
    """

    A: Tensor
    G: Tensor


class DiagonalFactors(NamedTuple):
    """A diagonal block: the Fisher's diagonal for each parameter, shaped like the parameter."""

    diagonals: dict[str, Tensor]


class CurvatureBlock(ABC):
    """The curvature block of the trainable parameters of one module.

    Args:
        name: the module's name in the model (``""`` for the model itself).
        module: the module whose calls the block's statistics come from.
        params: the parameters it owns, in segment order (``None`` for an absent bias).
        param_names: their names in the model (``None`` where ``params`` has ``None``).

    Class attributes:
        kind: a short label (``"linear"``, ``"conv2d"``, …), saved in checkpoints.
        statistics: the names of the tensors that :meth:`batch_statistics` returns.
        chainable: whether the block may be a link of a block-tridiagonal chain (paper §4.3).
        recorded: whether the block needs its module's calls recorded.
        cached_tangents: whether :meth:`tangent_forward` gives a forward (else ``None``).
        symmetric_inverses: whether the square matrices of :meth:`inverse_tensors` are symmetric.

    """

    kind: ClassVar[str]
    statistics: ClassVar[tuple[str, ...]]
    chainable: ClassVar[bool] = False
    recorded: ClassVar[bool] = True
    cached_tangents: ClassVar[bool] = False
    symmetric_inverses: ClassVar[bool] = False

    def __init__(self, name: str, module: nn.Module, params: Sequence[nn.Parameter | None],
                 param_names: Sequence[str | None]):
        self.name, self.module = name, module
        self.params, self.param_names = tuple(params), tuple(param_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {type(self.module).__name__}, shape={self.shape})"

    # -- layout ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The geometry of the block's segment: ``(d_out, d_a)`` for Kronecker blocks."""

    @property
    def size(self) -> int:
        """The number of parameters in the block."""
        return math.prod(self.shape)

    @abstractmethod
    def parameter_views(self) -> list[Tensor | None]:
        """The live parameters, each viewed in the segment's geometry (aligned with ``params``)."""

    @abstractmethod
    def segment_views(self, segment: Tensor) -> list[Tensor | None]:
        """Views of a flat ``(size,)`` segment matching :meth:`parameter_views`."""

    def unpack(self, segment: Tensor) -> tuple[Tensor | None, ...]:
        """The segment ``(…, size)`` as tensors ``(…, *param.shape)`` (views where possible)."""
        lead = segment.shape[:-1]
        return tuple(None if p is None else v.reshape(*lead, *p.shape)
                     for p, v in zip(self.params, self.segment_views(segment), strict=True))

    def unstack(self, rows: Tensor) -> Tensor:
        """``K`` stacked segments ``(K, size)`` as ``(K, *shape)``."""
        return rows.reshape(rows.shape[0], *self.shape)

    # -- statistics ----------------------------------------------------------------------------
    def check(self, calls: Sequence[LayerIO]) -> None:  # noqa: B027 - most blocks accept any call
        """Refuse calls this block cannot handle exactly (shapes, modes); called after a forward."""

    @abstractmethod
    def batch_statistics(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                         n: int, weights: Tensor | None = None) -> list[Tensor]:
        """The batch's statistics, one tensor per name in :attr:`statistics`.

        Args:
            calls: the module's calls in one forward pass on ``n`` cases.
            grads: per call, the gradients backpropagated to its output from ``K`` output
                vectors, shape ``(K·n, *output.shape[1:])`` (vector-major).
            n: the number of cases.
            weights: the loss's per-case weights of expectations over the layer's inputs,
                ``(n,)`` with mean 1 (``None``: uniform;
                :attr:`~kronlin_nn.losses.SubBatchWeights.inputs`). The output-side weights
                are already in ``grads``.

        """

    @abstractmethod
    def factors(self, stats: Sequence[Tensor], kappa: float) -> tuple:
        """The block's factors as :func:`~kronlin_nn.kfac_factors` returns them (κ applied)."""

    @abstractmethod
    def kronecker_pair(self, stats: Sequence[Tensor], kappa: float) -> tuple[Tensor, Tensor] | None:
        """The block's curvature as one Kronecker pair ``(L, R)``, or ``None`` if it has none.

        ``L`` or ``R`` may be a vector (a diagonal); scale estimates such as the initial λ use it.
        """

    # -- curvature -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def refresh_cost(self) -> float:
        """An estimate of the flops of one refresh (per γ candidate): ``n³`` per dense factor."""

    @abstractmethod
    def inverses(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                 pi: str) -> Candidates:
        r"""The damped inverse for each candidate γ (``gammas``, shape ``(c,)``) (*refresh*).

        Args:
            stats: the averaged statistics, as :meth:`batch_statistics` names them.
            kappa: the loss's reduction scale :math:`\kappa`.
            gammas: the damping candidates.
            pi: the π rule of factored damping (:func:`~kronlin_nn.damping.pi_scales`).

        """

    @abstractmethod
    def inverse_tensors(self, op: kronlin.LinearOperator) -> list[Tensor]:
        """The tensors that define an inverse of :meth:`inverses` (to save or broadcast it)."""

    @abstractmethod
    def inverse_operator(self, tensors: Sequence[Tensor]) -> kronlin.LinearOperator:
        """Rebuild the inverse from :meth:`inverse_tensors`."""

    # -- the quadratic model -------------------------------------------------------------------
    def tangent_forward(self, calls: Sequence[LayerIO],
                        tangent: Tensor) -> Callable[..., Tensor] | None:
        r"""A forward for the module that returns the recorded output with its tangent.

        The model is re-run in forward-mode AD on its inputs repeated ``K`` times (rows
        case-major: case ``i``, tangent ``k`` at row ``iK + k``); the returned function is
        called in place of the module's forward, once per recorded call in order, and returns
        a dual tensor: primal the recorded output (repeated), tangent
        :math:`\dot s = \partial s/\partial\theta\,\dot\theta_k + \partial s/\partial a\,\dot a`.

        Args:
            calls: the module's calls recorded on the cases.
            tangent: the ``K`` parameter tangents, ``(K, *shape)`` (:meth:`unstack`).

        Returns:
            The replacement forward, or ``None`` if the block has none (the optimizer then
            computes every product with ``torch.func.jvp``).

        """
        return None


class FactoredBlock(CurvatureBlock):
    r"""A block :math:`A \otimes G` whose statistics are the per-case factors ``[A, G̃]``."""

    statistics: ClassVar[tuple[str, ...]] = ("A", "G")

    def factors(self, stats: Sequence[Tensor], kappa: float) -> KroneckerFactors:
        """``(A, κG̃)``."""
        return KroneckerFactors(stats[0], kappa * stats[1])

    def kronecker_pair(self, stats: Sequence[Tensor], kappa: float) -> tuple[Tensor, Tensor]:
        """``(A, κG̃)``."""
        return stats[0], kappa * stats[1]


def module_path(name: str) -> str:
    """How messages name a module: ``model.features.0``, or ``model`` for the model itself."""
    return f"model.{name}" if name else "model"


def repeat_rows(x: Tensor, K: int) -> Tensor:
    """Each row of ``x`` ``K`` times in a row (``repeat_interleave`` without its host sync)."""
    return x.unsqueeze(1).expand(x.shape[0], K, *x.shape[1:]).reshape(-1, *x.shape[1:])


class CallCursor:
    """Hands out the recorded calls of a module in order, one per call of a tangent forward."""

    def __init__(self, calls: Sequence[LayerIO]):
        self._calls, self._next = list(calls), 0

    def __call__(self) -> LayerIO:
        if self._next >= len(self._calls):
            raise RuntimeError(
                f"layer {self._calls[0].layer}: called more often in the quadratic model's pass "
                f"than in the recorded forward pass ({len(self._calls)} calls); the forward pass "
                f"must not depend on anything but the inputs and the parameters"
            )
        call = self._calls[self._next]
        self._next += 1
        return call
