r"""``nn.Linear``: the paper's Kronecker block :math:`\bar A \otimes G` (Martens & Grosse 2015, §3).

The layer computes :math:`s = W a + b` on inputs of shape ``(n, …, d_in)``. Every position of
the middle dimensions, and every call of the layer in one forward pass, is a location of the
shared weight (K-FAC-expand; :mod:`kronlin_nn.blocks.kronecker`); for ``(n, d_in)`` inputs
and one call these are exactly the paper's factors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from typing_extensions import override

from .base import CallCursor, module_path, repeat_rows
from .kronecker import KroneckerBlock
from .registry import register_block

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["LinearBlock"]


@register_block(nn.Linear)
class LinearBlock(KroneckerBlock):
    """The block of an ``nn.Linear`` (with or without bias)."""

    kind: ClassVar[str] = "linear"

    @override
    def check(self, calls: Sequence[LayerIO]) -> None:
        for call in calls:
            if call.a.ndim < 2:
                raise ValueError(
                    f"{module_path(self.name)}: K-FAC expects inputs of shape (n, ..., d_in) with the "
                    f"cases first, got {tuple(call.a.shape)}"
                )

    @override
    def input_rows(self, call: LayerIO) -> Tensor:
        return call.a.reshape(-1, call.a.shape[-1])

    @override
    def gradient_rows(self, grad: Tensor) -> Tensor:
        return grad.reshape(-1, self.d_out)

    @override
    def locations(self, call: LayerIO) -> int:
        return call.a[0].numel() // call.a.shape[-1]

    def tangent_forward(self, calls: Sequence[LayerIO], tangent: Tensor) -> Callable[..., Tensor]:
        r""":math:`\dot s = \dot W a + \dot b + W\dot a`: two GEMMs, none of the primal pass."""
        K, d_out = tangent.shape[0], self.d_out
        flat = tangent.reshape(K * d_out, self.d_a)  # row k·d_out + j: unit j of tangent k
        W = self.module.weight.detach()
        cursor = CallCursor(calls)

        def forward(x: Tensor) -> Tensor:
            call = cursor()
            a, s = call.a, call.output().detach()
            a2 = a.reshape(-1, a.shape[-1])
            if self.has_bias:  # Ẇ a + ḃ for all K tangents in one GEMM: (n·R, K·d_out)
                t = torch.addmm(flat[:, -1], a2, flat[:, :-1].T)
            else:
                t = a2 @ flat.T
            # rows (case, tangent) as in the repeated inputs, locations after them
            t = t.view(a.shape[0], -1, K, d_out).transpose(1, 2).reshape(-1, *a.shape[1:-1], d_out)
            x_tangent = fwAD.unpack_dual(x).tangent
            if x_tangent is not None:  # W ȧ (absent for the first layer: inputs are constants)
                t = torch.addmm(t.reshape(-1, d_out), x_tangent.reshape(-1, a.shape[-1]),
                                W.T).view(t.shape)
            return fwAD.make_dual(repeat_rows(s, K), t)

        return forward
