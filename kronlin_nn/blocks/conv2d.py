r"""``nn.Conv2d``: Kronecker factors for convolution (KFC; Grosse & Martens 2016).

A convolution is a linear map :math:`s_t = W \bar a_t` applied at every output location
``t``, with :math:`\bar a_t` the input patch (``C_in·k_h·k_w`` values, padding included) that
location ``t`` sees and ``W`` the kernel as a ``C_out × C_in k_h k_w`` matrix. KFC's
approximation (spatially uncorrelated derivatives, spatially homogeneous statistics) is the
K-FAC-expand block over the ``T`` locations (:mod:`kronlin_nn.blocks.kronecker`):

.. math::
    \bar A = \frac{1}{nT}\sum_{i,t} \bar a_{it}\bar a_{it}^\top, \qquad
    G = \frac1n\sum_{i,t} E\big[\tilde g_{it}\tilde g_{it}^\top\big]

(KFC's :math:`\Omega \otimes \Gamma` with :math:`\Omega = T\bar A`, :math:`\Gamma = G/T`: the
same block). Stride, padding (any mode), dilation and bias are supported; ``groups > 1`` is
refused. The patches are extracted with ``torch.nn.functional.unfold`` at each statistics
update (``n·T × C_in k_h k_w`` values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from .base import CallCursor, module_path, repeat_rows
from .kronecker import KroneckerBlock
from .registry import register_block

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["Conv2dBlock"]


@register_block(nn.Conv2d)
class Conv2dBlock(KroneckerBlock):
    """The KFC block of an ``nn.Conv2d`` with ``groups=1``."""

    kind: ClassVar[str] = "conv2d"

    def __init__(self, name: str, module: nn.Conv2d, param_names: Sequence[str | None]):
        if module.groups != 1:
            raise ValueError(
                f"{module_path(name)}: KFC (the Kronecker factors of a convolution) needs every output "
                f"channel to see every input channel, expected groups=1, got "
                f"groups={module.groups}; freeze the layer with requires_grad_(False)"
            )
        super().__init__(name, module, param_names)

    @override
    def check(self, calls: Sequence[LayerIO]) -> None:
        for call in calls:
            if call.a.ndim != 4:
                raise ValueError(
                    f"{module_path(self.name)}: K-FAC expects Conv2d inputs of shape (n, C, H, W) with "
                    f"the cases first, got {tuple(call.a.shape)}"
                )

    def input_rows(self, call: LayerIO) -> Tensor:
        """The patches :math:`a_{it}`, rows ``(case, location)``: ``(n·T, C_in k_h k_w)``."""
        m, x = self.module, call.a
        if m.padding_mode == "zeros" and not isinstance(m.padding, str):
            patches = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
        else:  # padding="same" may be asymmetric, other modes are not zeros: pad first
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            patches = F.unfold(x, m.kernel_size, m.dilation, 0, m.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    @override
    def gradient_rows(self, grad: Tensor) -> Tensor:
        return grad.movedim(1, -1).reshape(-1, self.d_out)

    @override
    def locations(self, call: LayerIO) -> int:
        return call.s[0, 0].numel()

    def tangent_forward(self, calls: Sequence[LayerIO], tangent: Tensor) -> Callable[..., Tensor]:
        r""":math:`\dot s = \dot W * a + \dot b + W * \dot a`: two convolutions.

        The ``K`` kernel tangents are stacked as ``K·C_out`` output channels of one
        convolution of the recorded input.
        """
        m, K, c_out = self.module, tangent.shape[0], self.d_out
        weights = tangent[..., : self.d_a - self.has_bias].reshape(K * c_out, *m.weight.shape[1:])
        bias = tangent[..., -1][..., None, None] if self.has_bias else None  # (K, C_out, 1, 1)
        W = m.weight.detach()
        cursor = CallCursor(calls)

        def forward(x: Tensor) -> Tensor:
            call = cursor()
            a, s = call.a, call.output().detach()
            t = m._conv_forward(a, weights, None)  # (n, K·C_out, H', W')
            t = t.view(a.shape[0], K, c_out, *t.shape[2:])
            if bias is not None:
                t = t + bias
            t = t.reshape(-1, *t.shape[2:])  # rows (case, tangent)
            x_tangent = fwAD.unpack_dual(x).tangent
            if x_tangent is not None:
                t = t + m._conv_forward(x_tangent, W, None)
            return fwAD.make_dual(repeat_rows(s, K), t)

        return forward
