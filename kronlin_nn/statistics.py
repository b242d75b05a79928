r"""Online estimates of the curvature blocks' statistics (paper §5 / arXiv §5; spec §2.4).

Each statistic (a Kronecker factor, a cross moment, a diagonal) is an exponential moving
average of the per-batch estimates,

.. math::
    X_k = \epsilon_k X_{k-1} + (1 - \epsilon_k) \hat X_k, \qquad
    \epsilon_k = \min(1 - 1/k, \epsilon_{\max}),

with ``k`` the number of batches averaged so far, so ``X_1`` is the first batch's estimate
exactly (the paper's warm start; not the zero-debiased average of tensorflow/kfac and
kfac-jax). A flat average would be wrong: the statistics go stale as θ moves.

The stored statistics are per-case expectations, e.g. :math:`\bar A_{i,j}` and
:math:`\tilde G_{i,j} = E[\tilde g_i \tilde g_j^\top]` *without* the loss's reduction scale
:math:`\kappa` (see :mod:`kronlin_nn.factors`), which the optimizer applies when it builds
inverses, so a growing batch under ``reduction="sum"`` rescales the curvature at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SYMMETRIC_GROUPS", "FactorStatistics", "ema_decay"]

SYMMETRIC_GROUPS = frozenset({"A", "G"})  # second moments (a vector among them: a diagonal)


def ema_decay(k: int, ema_max: float) -> float:
    r""":math:`\epsilon_k = \min(1 - 1/k, \epsilon_{\max})` for the ``k``-th batch (``k ≥ 1``)."""
    if k < 1:
        raise ValueError(f"k: expected a batch count >= 1, got {k}")
    return min(1.0 - 1.0 / k, ema_max)


class FactorStatistics:
    r"""Moving averages of named groups of statistics (the blocks' factors, the cross moments).

    Args:
        ema_max: :math:`\epsilon_{\max}` in ``[0, 1)`` (the paper: 0.95).

    Each group is a list of tensors, named as the curvature blocks name their statistics
    (:attr:`~kronlin_nn.blocks.CurvatureBlock.statistics`): ``"A"`` and ``"G"`` hold the
    Kronecker blocks' :math:`\bar A_{i-1,i-1}` and :math:`\tilde G_{i,i}` in block order,
    ``"A_cross"`` and ``"G_cross"`` the cross moments :math:`\bar A_{i-1,i}`,
    :math:`\tilde G_{i,i+1}` of a chain, ``"D"`` the diagonal blocks' diagonals. All groups
    are averaged alike, by fused multi-tensor kernels.

    Attributes:
        count: the number of batches averaged (``k``).
        groups: ``{name: tensors}`` (empty before the first update).

    """

    def __init__(self, ema_max: float):
        if not 0.0 <= ema_max < 1.0:
            raise ValueError(f"ema_max: expected a value in [0, 1), got {ema_max}")
        self.ema_max = ema_max
        self.count = 0
        self.groups: dict[str, list[Tensor]] = {}

    @property
    def A(self) -> list[Tensor] | None:
        """The ``"A"`` group (``None`` before the first update)."""
        return self.groups.get("A")

    @property
    def G(self) -> list[Tensor] | None:
        """The ``"G"`` group (``None`` before the first update)."""
        return self.groups.get("G")

    @property
    def A_cross(self) -> list[Tensor]:
        """The ``"A_cross"`` group (empty unless given)."""
        return self.groups.get("A_cross", [])

    @property
    def G_cross(self) -> list[Tensor]:
        """The ``"G_cross"`` group (empty unless given)."""
        return self.groups.get("G_cross", [])

    def update(
        self,
        A: Sequence[Tensor] = (),
        G: Sequence[Tensor] = (),
        A_cross: Sequence[Tensor] = (),
        G_cross: Sequence[Tensor] = (),
        **groups: Sequence[Tensor],
    ) -> None:
        """Fold one batch's estimates into the averages (the first batch is copied exactly).

        Args:
            A: the Kronecker blocks' input factors.
            G: their output-gradient factors.
            A_cross: a chain's cross moments of the inputs.
            G_cross: a chain's cross moments of the output gradients.
            **groups: any other named groups (e.g. ``D``).

        Raises:
            ValueError: groups or group lengths that differ from the first batch's.

        """
        batch = {"A": A, "G": G, "A_cross": A_cross, "G_cross": G_cross, **groups}
        self.count += 1
        if self.count == 1:
            self.groups = {name: [t.clone() for t in ts] for name, ts in batch.items()}
            return
        shapes = {name: len(ts) for name, ts in batch.items()}
        saved = {name: len(ts) for name, ts in self.groups.items()}
        if shapes != saved:
            raise ValueError(f"update: expected groups of sizes {saved} as before, got {shapes}")
        eps = ema_decay(self.count, self.ema_max)
        olds = [t for ts in self.groups.values() for t in ts]
        news = [t for name in self.groups for t in batch[name]]
        # fused multi-tensor kernels: one launch for all factors rather than two per factor
        torch._foreach_mul_(olds, eps)
        torch._foreach_add_(olds, news, alpha=1.0 - eps)

    def tensors(self) -> list[Tensor]:
        """Every averaged tensor, group after group (e.g. to reduce them across processes)."""
        return [t for ts in self.groups.values() for t in ts]

    def state_dict(self) -> dict:
        """The averages and the batch count (tensors are referenced, not copied)."""
        return {"count": self.count, "ema_max": self.ema_max, **self.groups}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        """Restore from :meth:`state_dict` (tensors copied, moved to ``device`` if given)."""
        self.count, self.ema_max = int(state["count"]), float(state["ema_max"])
        self.groups = {name: [t.detach().to(device).clone() for t in ts]
                       for name, ts in state.items() if name not in ("count", "ema_max")}
