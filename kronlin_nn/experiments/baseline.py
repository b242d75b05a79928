r"""The paper's baseline: SGD with Nesterov momentum and the Sutskever et al. (2013) μ schedule.

Spec ``kfac-algorithm.md`` §10.3. The update is Sutskever et al.'s form of Nesterov's method,

.. math::
    v \leftarrow \mu_t v - \varepsilon \nabla h(\theta + \mu_t v), \qquad
    \theta \leftarrow \theta + v,

with :math:`\mu_t` from :func:`kronlin_nn.schedules.sutskever_momentum` and ``h`` including the
weight decay :math:`\tfrac{\eta}{2}\lVert\theta\rVert^2`, as for K-FAC.

The learning rate ε comes from a short grid search (:func:`search_learning_rate`): the paper
tuned it but did not publish its grid (spec §12 item 7), so ours is :data:`LR_GRID`, each
candidate trained from the common initialization for :data:`GRID_ITERATIONS` steps (a count,
not a time, so that the choice does not depend on the machine's speed or load) and scored by
its final training error. Its cost is reported with the results. The
Sutskever et al. rule that cuts μ to 0.9 for the last 1000 updates is not applied: it is
unconfirmed (spec §10.3) and a time-budgeted run does not know which updates are its last.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kronlin_nn.distributed import Replicas
from kronlin_nn.schedules import sutskever_momentum

__all__ = ["GRID_ITERATIONS", "LR_GRID", "LRSearch", "SGDNesterov", "search_learning_rate"]

# Learning rates for the objective summed over pixels and averaged over cases (the paper's
# scale): a short, log-spaced slice of the range Sutskever et al. searched, {0.05 … 0.0001}.
LR_GRID: tuple[float, ...] = (0.05, 0.02, 0.01, 0.005)

# Steps per grid candidate: ~13 s each for the default problem on 2 CPU cores, and past the
# early plateau (error ≈ 53 on MNIST, the mean image) where all candidates look alike.
GRID_ITERATIONS = 150


class SGDNesterov:
    r"""SGD with Nesterov momentum (Sutskever et al. form) and the Sutskever μ schedule.

    Same calling convention as K-FAC: ``stats = opt.step(inputs, targets)``; in a process
    group, as K-FAC, each rank passes its shard and the step is the one on the union of the
    shards (the gradient and the loss summed over the ranks, :mod:`kronlin_nn.distributed`).

    Args:
        model: the network; all its parameters with ``requires_grad`` are trained.
        loss_fn: ``loss_fn(model(inputs), targets)`` is the data term of ``h``.
        lr: ε, in the units of ``loss_fn``.
        mu_max: the cap of the μ schedule.
        weight_decay: η of the term :math:`\tfrac{\eta}{2}\lVert\theta\rVert^2` in ``h``.

    Raises:
        ValueError: if ``lr <= 0`` or ``weight_decay < 0``.

    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        lr: float,
        mu_max: float = 0.99,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {lr=}, {weight_decay=}")
        self.model = model
        self.loss_fn = loss_fn
        self.lr = lr
        self.mu_max = mu_max
        self.weight_decay = weight_decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.velocity = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        _, self._replicas = Replicas.of(model)
        self._replicas.broadcast_(self.params)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> Mapping[str, float]:
        """Take one update on the batch.

        Args:
            inputs: ``(m, ...)`` model inputs.
            targets: targets of ``loss_fn``.

        Returns:
            ``loss`` (``h`` at the look-ahead point θ + μv, where the gradient is taken),
            ``lr`` and ``mu``.

        """
        mu = sutskever_momentum(self.t, self.mu_max)
        with torch.no_grad():
            for p, v in zip(self.params, self.velocity, strict=True):
                p.add_(v, alpha=mu)
        data_loss = self.loss_fn(self.model(inputs), targets)
        grads = torch.autograd.grad(data_loss, self.params)
        shards = self._replicas.shards(inputs.shape[0])  # the union's: each rank's share, summed
        share = shards.local / shards.total if self.loss_fn.reduction == "mean" else 1.0
        data_loss, *grads = self._replicas.sum_shares([data_loss.detach(), *grads], share,
                                                      "gradient")
        with torch.no_grad():
            penalty = 0.5 * self.weight_decay * sum(float(p.square().sum()) for p in self.params)
            for p, v, g in zip(self.params, self.velocity, grads, strict=True):
                g = g.add(p, alpha=self.weight_decay)
                p.sub_(v, alpha=mu)
                v.mul_(mu).sub_(g, alpha=self.lr)
                p.add_(v)
        self.t += 1
        return {"loss": float(data_loss.detach()) + penalty, "lr": self.lr, "mu": mu}


@dataclass(frozen=True)
class LRSearch:
    """Outcome of :func:`search_learning_rate`.

    Attributes:
        grid: the candidates, in the caller's units.
        errors: each candidate's score (``inf`` for a diverged run).
        chosen: the candidate with the lowest score (the smaller one on ties).
        seconds: wall-clock seconds of the whole search, training and evaluation.

    """

    grid: tuple[float, ...]
    errors: tuple[float, ...]
    chosen: float
    seconds: float


def search_learning_rate(score: Callable[[float], float], grid: Sequence[float]) -> LRSearch:
    """Pick the learning rate whose short run scores lowest.

    Args:
        score: trains from the common initialization with a learning rate and returns its
            final training error.
        grid: the candidates.

    Returns:
        The search's candidates, scores, choice and cost.

    Raises:
        ValueError: if ``grid`` is empty.

    """
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    start = time.perf_counter()
    errors = []
    for lr in grid:
        error = score(lr)
        errors.append(error if math.isfinite(error) else math.inf)
    _, chosen = min(zip(errors, grid, strict=True))
    return LRSearch(tuple(grid), tuple(errors), chosen, time.perf_counter() - start)
