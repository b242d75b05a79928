r"""Diagonal blocks: the Fisher's diagonal for parameters with no Kronecker structure.

For parameters :math:`\theta` of a block, the diagonal of the Fisher of the objective is

.. math::
    \operatorname{diag} F = \kappa\,\frac1n \sum_{i=1}^n
    E\big[(\partial \ell_i/\partial\theta)^{\odot 2}\big],

from **per-case** gradients (the square of the batch gradient is not an estimate of it:
for the empirical and exact Fisher its cross terms do not vanish). The expectation is over the
backpropagated vectors (one sample, the data's target, or the columns of :math:`F_R^{1/2}`),
so with ``fisher="exact"`` the block equals the diagonal of the exact Fisher. The damped
inverse for γ is :math:`(\operatorname{diag}F + \gamma^2 I)^{-1}`.

- :class:`DiagonalBlock`: the shared part; subclasses give the per-case gradients.
- :class:`ParameterDiagonalBlock`: the fallback for any module (``unsupported="diagonal"``):
  per-case gradients of the module's own forward by ``torch.func.vmap`` of its vector–Jacobian
  product, from the recorded inputs and output gradients. It costs about one extra forward
  and backward pass of the module per backpropagated vector on the statistics' cases.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from typing_extensions import override

from ..curvature import Candidates, diagonal_candidates
from ..operators import Diagonal
from .base import CurvatureBlock, DiagonalFactors, module_path

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["DiagonalBlock", "FlatBlock", "ParameterDiagonalBlock"]


class FlatBlock(CurvatureBlock):
    """A block whose segment is its parameters flattened and concatenated, in order."""

    @property
    @override
    def shape(self) -> tuple[int]:
        return (sum(p.numel() for p in self.params),)

    @override
    def parameter_views(self) -> list[Tensor]:
        return [p.view(-1) for p in self.params]

    @override
    def segment_views(self, segment: Tensor) -> list[Tensor]:
        return list(segment.split([p.numel() for p in self.params], dim=-1))


class DiagonalBlock(FlatBlock):
    r"""The block :math:`\operatorname{diag} F` of its parameters; statistic ``D`` of shape ``(size,)``."""

    statistics: ClassVar[tuple[str, ...]] = ("D",)

    @abstractmethod
    def per_case_gradients(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                           n: int) -> list[Tensor]:
        """Per parameter, the gradients of each vector and case: ``(K, n, *param.shape)``."""

    def batch_statistics(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                         n: int, weights: Tensor | None = None) -> list[Tensor]:
        r""":math:`[D]`, :math:`D = \frac1n\sum_{k,i} (\partial_\theta \tilde\ell_{ki})^{\odot 2}`, flat.

        The loss's case weights are in the output gradients (``weights`` is not needed).
        """
        squares = [torch.square(g).sum((0, 1)).reshape(-1)
                   for g in self.per_case_gradients(calls, grads, n)]
        return [torch.cat(squares) / n]

    @override
    def factors(self, stats: Sequence[Tensor], kappa: float) -> DiagonalFactors:
        D = kappa * stats[0]
        return DiagonalFactors({name: d.reshape(p.shape) for name, p, d in
                                zip(self.param_names, self.params, self.segment_views(D),
                                    strict=True)})

    @override
    def kronecker_pair(self, stats: Sequence[Tensor], kappa: float) -> tuple[Tensor, Tensor]:
        return kappa * stats[0], stats[0].new_ones(1)

    @property
    @override
    def refresh_cost(self) -> float:
        return float(self.size)

    @override
    def inverses(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                 pi: str) -> Candidates:
        return diagonal_candidates(kappa * stats[0], gammas)

    @override
    def inverse_tensors(self, op: Diagonal) -> list[Tensor]:
        return [op.d]

    @override
    def inverse_operator(self, tensors: Sequence[Tensor]) -> Diagonal:
        return Diagonal(tensors[0])


class ParameterDiagonalBlock(DiagonalBlock):
    """The diagonal Fisher of a module's direct parameters, for any module (the fallback).

    The module's recorded calls must take their tensor inputs with the cases first, and its
    forward must treat cases independently and be traceable by ``torch.func.vmap``.
    """

    kind: ClassVar[str] = "diagonal"

    def __init__(self, name: str, module: nn.Module, params: Sequence[nn.Parameter],
                 param_names: Sequence[str]):
        super().__init__(name, module, params, param_names)
        prefix = f"{name}." if name else ""
        self._local = [pname.removeprefix(prefix) for pname in param_names]

    @override
    def check(self, calls: Sequence[LayerIO]) -> None:
        n = calls[0].s.shape[0]
        for call in calls:
            shapes = [tuple(x.shape) for x in call.inputs if isinstance(x, Tensor)]
            if any(not shape or shape[0] != n for shape in shapes):
                raise ValueError(
                    f"{module_path(self.name)} ({type(self.module).__name__}): the diagonal "
                    f"block computes per-case gradients of this module, whose tensor inputs must "
                    f"have the {n} cases first; got inputs of shapes {shapes}. Give "
                    f"unsupported='first_order', or freeze its parameters"
                )

    @override
    def per_case_gradients(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                           n: int) -> list[Tensor]:
        values = tuple(p.detach() for p in self.params)
        total = None
        for call, grad in zip(calls, grads, strict=True):
            K = grad.shape[0] // n
            per_case = self._vjp_per_case(call.inputs, values, grad.view(K, n, *grad.shape[1:]))
            total = per_case if total is None else [t + g for t, g in zip(total, per_case,
                                                                          strict=True)]
        return total

    def _vjp_per_case(self, inputs: tuple, values: tuple, cotangents: Tensor) -> list[Tensor]:
        """``(K, n, *param.shape)`` gradients of ``⟨cotangent_ki, module(input_i)⟩`` per case."""
        module, names = self.module, self._local

        def one(case_inputs: tuple, cotangent: Tensor) -> tuple[Tensor, ...]:
            batched = tuple(x[None] if isinstance(x, Tensor) else x for x in case_inputs)

            def f(*params: Tensor) -> Tensor:
                return functional_call(module, dict(zip(names, params, strict=True)), batched)

            return vjp(f, *values)[1](cotangent[None])

        in_dims = tuple(0 if isinstance(x, Tensor) else None for x in inputs)
        per_vector = vmap(one, in_dims=(in_dims, 0))  # over the cases of one vector
        return list(vmap(per_vector, in_dims=(None, 0))(inputs, cotangents))
