r"""Scale-and-shift layers: diagonal blocks for the affine part of normalization layers.

``LayerNorm``, ``RMSNorm``, ``GroupNorm`` and ``BatchNorm`` (in eval mode) compute
:math:`s = \hat x \odot \gamma + \beta`, with :math:`\hat x` the normalized input (no
parameters in it) and :math:`\gamma, \beta` broadcast along the trailing normalized
dimensions (``LayerNorm``, ``RMSNorm``) or along the channel dimension (``GroupNorm``,
``BatchNorm``). As in kfac-jax's scale-and-shift block, their curvature is the diagonal
block (:mod:`kronlin_nn.blocks.diagonal`) with the per-case gradients in closed form,

.. math::
    \partial\tilde\ell_i/\partial\gamma = \textstyle\sum_{\text{positions}} \hat x_i \odot \tilde g_i,
    \qquad \partial\tilde\ell_i/\partial\beta = \textstyle\sum_{\text{positions}} \tilde g_i,

summed over the positions the parameter is broadcast over, from the recorded input
(:math:`\hat x` is recomputed from it) and the output gradients :math:`\tilde g`.

``BatchNorm`` in training mode (or without running statistics) normalizes with the batch's
statistics: the cases are not independent, and K-FAC's extra passes on sub-batches would
also update the running statistics several times per step. It is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from .base import CallCursor, module_path, repeat_rows
from .diagonal import DiagonalBlock
from .registry import register_block

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["ScaleShiftBlock"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register_block(nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, *_BATCH_NORMS)
class ScaleShiftBlock(DiagonalBlock):
    """The diagonal block of a normalization layer's trainable scale and shift."""

    kind: ClassVar[str] = "scale_shift"
    cached_tangents: ClassVar[bool] = True

    def __init__(self, name: str, module: nn.Module, params: Sequence[nn.Parameter],
                 param_names: Sequence[str]):
        super().__init__(name, module, params, param_names)
        self.roles = ["scale" if p is module.weight else "shift" for p in params]
        # LayerNorm, RMSNorm: along the trailing dimensions; GroupNorm, BatchNorm: channels
        self.trailing = isinstance(module, nn.LayerNorm | nn.RMSNorm)

    @classmethod
    def owning(cls, name: str, module: nn.Module) -> ScaleShiftBlock | None:
        """The block of the trainable affine parameters (``None`` if there are none).

        Raises:
            ValueError: a batch normalization that normalizes with batch statistics.

        """
        pairs = [(pname, p) for pname, p in (("weight", module.weight),
                                             ("bias", getattr(module, "bias", None)))
                 if p is not None and p.requires_grad]
        if not pairs:
            return None
        block = cls(name, module, [p for _, p in pairs],
                    [f"{name}.{pname}" if name else pname for pname, _ in pairs])
        block.check(())
        return block

    @override
    def check(self, calls: Sequence[LayerIO]) -> None:
        m = self.module
        if isinstance(m, _BATCH_NORMS) and (m.training or m.running_mean is None):
            raise ValueError(
                f"{module_path(self.name)}: {type(m).__name__} in training mode (or without running "
                f"statistics) normalizes with the batch's statistics, which couples the cases: "
                f"K-FAC evaluates sub-batches and extra passes, and would update the running "
                f"statistics several times per step. Put it in eval mode (module.eval(), running "
                f"statistics) or use GroupNorm or LayerNorm"
            )

    def normalized(self, x: Tensor) -> Tensor:
        r""":math:`\hat x`: the layer's output without its affine part."""
        m = self.module
        if isinstance(m, nn.LayerNorm):
            return F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        if isinstance(m, nn.RMSNorm):
            return F.rms_norm(x, m.normalized_shape, None, m.eps)
        if isinstance(m, nn.GroupNorm):
            return F.group_norm(x, m.num_groups, None, None, m.eps)
        return F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)

    def _broadcast_dims(self, x: Tensor) -> tuple[int, ...]:
        """The dimensions of ``(K, n, *x.shape[1:])`` that a parameter is broadcast over."""
        rest = x.ndim - 1
        if self.trailing:
            return tuple(range(2, 2 + rest - self.params[0].ndim))
        return tuple(range(3, 2 + rest))

    def _expanded(self, p_tangent: Tensor, x: Tensor) -> Tensor:
        """A parameter tangent ``(K, *p.shape)`` shaped to broadcast as ``(1, K, *x.shape[1:])``."""
        K, rest = p_tangent.shape[0], x.ndim - 1
        if self.trailing:
            return p_tangent.view(1, K, *[1] * (rest - p_tangent.ndim + 1), *p_tangent.shape[1:])
        return p_tangent.view(1, K, p_tangent.shape[1], *[1] * (rest - 1))

    @override
    def per_case_gradients(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                           n: int) -> list[Tensor]:
        total = None
        for call, grad in zip(calls, grads, strict=True):
            g = grad.view(grad.shape[0] // n, n, *grad.shape[1:])
            x_hat = self.normalized(call.a) if "scale" in self.roles else None
            dims = self._broadcast_dims(call.a)
            per_case = [_summed(g * x_hat if role == "scale" else g, dims) for role in self.roles]
            total = per_case if total is None else [t + p for t, p in zip(total, per_case,
                                                                          strict=True)]
        return total

    def tangent_forward(self, calls: Sequence[LayerIO], tangent: Tensor) -> Callable[..., Tensor]:
        r""":math:`\dot s = \hat x \odot \dot\gamma_k + \dot\beta_k + (\partial s/\partial x)\,\dot x`."""
        m, K = self.module, tangent.shape[0]
        pieces = [v.reshape(K, *p.shape) for v, p in
                  zip(self.segment_views(tangent), self.params, strict=True)]
        cursor = CallCursor(calls)

        def forward(x: Tensor) -> Tensor:
            call = cursor()
            a, s = call.a, call.output().detach()
            t = 0
            for role, piece in zip(self.roles, pieces, strict=True):
                expanded = self._expanded(piece, a)
                t = t + (self.normalized(a)[:, None] * expanded if role == "scale" else expanded)
            t = t.expand(a.shape[0], K, *a.shape[1:]).reshape(-1, *a.shape[1:])
            if fwAD.unpack_dual(x).tangent is not None:  # the input's own tangent, through x̂
                t = t + fwAD.unpack_dual(type(m).forward(m, x)).tangent
            return fwAD.make_dual(repeat_rows(s, K), t)

        return forward


def _summed(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t`` summed over ``dims`` (``Tensor.sum(())`` would sum over every dimension)."""
    return t.sum(dims) if dims else t
