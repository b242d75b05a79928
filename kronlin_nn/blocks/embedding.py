r"""``nn.Embedding``: a Kronecker block with a diagonal input factor.

An embedding is the linear layer :math:`s = W^\top e_v` of the one-hot vector :math:`e_v` of
the token ``v``, applied at every token position (a location, as for sequences in
:mod:`kronlin_nn.blocks.kronecker`). The input factor is the one-hot covariance, diagonal
*exactly*: the token frequencies,

.. math::
    A = \operatorname{diag}(f), \quad f_v = \frac{\#\{\text{positions with token } v\}}{nR},
    \qquad G = \frac1n\sum_{i,r} E\big[\tilde g_{ir}\tilde g_{ir}^\top\big].

On the weight ``W`` (``V × d``, row-major) the block is :math:`\operatorname{diag}(f) \otimes G`
and its damped inverse :math:`\operatorname{diag}(f + \gamma\pi)^{-1} \otimes (G + \gamma/\pi\, I)^{-1}`
(:class:`~kronlin_nn.operators.DiagKron`): :math:`O(V + d^3)` per refresh and
:math:`O(Vd^2)` per application, whatever the vocabulary size. Options that change the
forward or the gradient (``padding_idx``, ``max_norm``, ``scale_grad_by_freq``, ``sparse``)
are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from typing_extensions import override

from ..curvature import Candidates, damped_inverses, symmetrized
from ..damping import pi_scales
from ..operators import DiagKron
from .base import CallCursor, FactoredBlock, module_path, repeat_rows
from .registry import register_block

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["EmbeddingBlock"]

_REFUSED = {  # option → (the only value handled exactly, why)
    "padding_idx": (None, "its row is excluded from the gradient but not from the forward pass"),
    "max_norm": (None, "the forward pass renormalizes the weight in place"),
    "scale_grad_by_freq": (False, "the gradient is rescaled by the batch's token counts"),
    "sparse": (False, "its gradients are sparse"),
}


@register_block(nn.Embedding)
class EmbeddingBlock(FactoredBlock):
    r"""The block :math:`\operatorname{diag}(f) \otimes G` of an ``nn.Embedding``'s weight."""

    kind: ClassVar[str] = "embedding"
    cached_tangents: ClassVar[bool] = True
    symmetric_inverses: ClassVar[bool] = True

    @classmethod
    def owning(cls, name: str, module: nn.Embedding) -> EmbeddingBlock | None:
        """The block of a trainable embedding.

        Raises:
            ValueError: an option the block cannot handle exactly.

        """
        if not module.weight.requires_grad:
            return None
        for option, (expected, why) in _REFUSED.items():
            value = getattr(module, option)
            if value != expected:
                raise ValueError(
                    f"{module_path(name)}: nn.Embedding option {option}: expected {expected}, got "
                    f"{value!r} ({why})"
                )
        return cls(name, module, (module.weight,), (f"{name}.weight" if name else "weight",))

    @property
    @override
    def shape(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape)

    @override
    def parameter_views(self) -> list[Tensor]:
        return [self.module.weight]

    @override
    def segment_views(self, segment: Tensor) -> list[Tensor]:
        return [segment.view(*segment.shape[:-1], *self.shape)]

    # -- statistics ----------------------------------------------------------------------------
    def batch_statistics(self, calls: Sequence[LayerIO], grads: Sequence[Tensor],
                         n: int, weights: Tensor | None = None) -> list[Tensor]:
        r""":math:`[f, \tilde G]`: token frequencies (``(V,)``) and :math:`g^\top g/n`.

        With per-case ``weights``, each token counts its case's weight.
        """
        tokens = torch.cat([c.a.reshape(-1) for c in calls])
        weight = self.module.weight
        if weights is None:
            per_token = weight.new_ones(tokens.shape[0])
        else:
            w = weights.to(weight.dtype)[:, None]
            per_token = torch.cat([w.expand(-1, c.a[0].numel()).reshape(-1) for c in calls])
        counts = weight.new_zeros(weight.shape[0]).index_add_(  # no host sync, unlike bincount
            0, tokens, per_token)
        g = torch.cat([grad.reshape(-1, weight.shape[1]) for grad in grads])
        return [counts / tokens.shape[0], g.T @ g / n]

    # -- curvature -----------------------------------------------------------------------------
    @property
    @override
    def refresh_cost(self) -> float:
        V, d = self.shape
        return float(V + d**3)

    @override
    def inverses(self, stats: Sequence[Tensor], kappa: float, gammas: Tensor,
                 pi: str) -> Candidates:
        f, G = self.kronecker_pair(stats, kappa)
        (p,) = pi_scales([f], [G], pi)
        damped = f[None, :] + (gammas * p)[:, None]
        ok_f = ((damped > 0) & torch.isfinite(damped)).all(1)
        f_inv = 1 / damped
        G_inv, ok_g = damped_inverses(symmetrized(G), gammas / p, f"G[{self.name}]")
        return Candidates(ok_f & ok_g, lambda j: DiagKron(f_inv[j], G_inv[j]))

    @override
    def inverse_tensors(self, op: DiagKron) -> list[Tensor]:
        return [op.d, op.M]

    @override
    def inverse_operator(self, tensors: Sequence[Tensor]) -> DiagKron:
        return DiagKron(*tensors)

    # -- the quadratic model -------------------------------------------------------------------
    def tangent_forward(self, calls: Sequence[LayerIO], tangent: Tensor) -> Callable[..., Tensor]:
        r""":math:`\dot s = \dot W_k[v]`: a gather of the tangents' rows (tokens are constants)."""
        K = tangent.shape[0]
        cursor = CallCursor(calls)

        def forward(tokens: Tensor) -> Tensor:
            call = cursor()
            t = tangent[:, call.a].movedim(0, 1)  # (n, K, …, d)
            return fwAD.make_dual(repeat_rows(call.output().detach(), K),
                                  t.reshape(-1, *t.shape[2:]))

        return forward
