r"""Online estimates of the Kronecker factors (paper §5 / arXiv §5; spec §2.4).

Each factor is an exponential moving average of the per-batch estimates,

.. math::
    X_k = \epsilon_k X_{k-1} + (1 - \epsilon_k) \hat X_k, \qquad
    \epsilon_k = \min(1 - 1/k, \epsilon_{\max}),

with ``k`` the number of batches averaged so far, so ``X_1`` is the first batch's estimate
exactly (the paper's warm start; not the zero-debiased average of tensorflow/kfac and
kfac-jax). A flat average would be wrong: the statistics go stale as θ moves.

The stored factors are per-case expectations: :math:`\bar A_{i,j}` and
:math:`\tilde G_{i,j} = E[\tilde g_i \tilde g_j^\top]` *without* the loss's reduction scale
:math:`\kappa` (see :mod:`kronlin_nn.factors`), which the optimizer applies when it builds
inverses, so a growing batch under ``reduction="sum"`` rescales the curvature at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FactorStatistics", "ema_decay"]


def ema_decay(k: int, ema_max: float) -> float:
    r""":math:`\epsilon_k = \min(1 - 1/k, \epsilon_{\max})` for the ``k``-th batch (``k ≥ 1``)."""
    if k < 1:
        raise ValueError(f"k: expected a batch count >= 1, got {k}")
    return min(1.0 - 1.0 / k, ema_max)


class FactorStatistics:
    r"""Moving averages of the diagonal factors and, optionally, the cross moments of a chain.

    Args:
        ema_max: :math:`\epsilon_{\max}` in ``[0, 1)`` (the paper: 0.95).

    Attributes:
        count: the number of batches averaged (``k``).
        A, G: per layer, :math:`\bar A_{i-1,i-1}` and :math:`\tilde G_{i,i}` (``None`` before
            the first update).
        A_cross, G_cross: per consecutive pair, :math:`\bar A_{i-1,i}` and
            :math:`\tilde G_{i,i+1}` (empty unless given to :meth:`update`).

    """

    def __init__(self, ema_max: float):
        if not 0.0 <= ema_max < 1.0:
            raise ValueError(f"ema_max: expected a value in [0, 1), got {ema_max}")
        self.ema_max = ema_max
        self.count = 0
        self.A: list[Tensor] | None = None
        self.G: list[Tensor] | None = None
        self.A_cross: list[Tensor] = []
        self.G_cross: list[Tensor] = []

    def update(
        self,
        A: Sequence[Tensor],
        G: Sequence[Tensor],
        A_cross: Sequence[Tensor] = (),
        G_cross: Sequence[Tensor] = (),
    ) -> None:
        """Fold one batch's estimates into the averages (the first batch is copied exactly)."""
        self.count += 1
        if self.count == 1:
            self.A, self.G = [a.clone() for a in A], [g.clone() for g in G]
            self.A_cross, self.G_cross = [a.clone() for a in A_cross], [g.clone() for g in G_cross]
            return
        eps = ema_decay(self.count, self.ema_max)
        olds = [*self.A, *self.G, *self.A_cross, *self.G_cross]
        news = [*A, *G, *A_cross, *G_cross]
        if len(olds) != len(news):
            raise ValueError(f"update: expected {len(olds)} factors as before, got {len(news)}")
        # fused multi-tensor kernels: one launch for all factors rather than two per factor
        torch._foreach_mul_(olds, eps)
        torch._foreach_add_(olds, news, alpha=1.0 - eps)

    def state_dict(self) -> dict:
        """The averages and the batch count (tensors are referenced, not copied)."""
        return {"count": self.count, "ema_max": self.ema_max, "A": self.A, "G": self.G,
                "A_cross": self.A_cross, "G_cross": self.G_cross}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        """Restore from :meth:`state_dict` (tensors copied, moved to ``device`` if given)."""
        def copy(ts):
            return None if ts is None else [t.detach().to(device).clone() for t in ts]

        self.count, self.ema_max = int(state["count"]), float(state["ema_max"])
        self.A, self.G = copy(state["A"]), copy(state["G"])
        self.A_cross, self.G_cross = copy(state["A_cross"]), copy(state["G_cross"])
