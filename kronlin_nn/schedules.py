"""Training-recipe helpers of Martens & Grosse (2015): batch sizes, momentum, averaging.

- :func:`exponential_batch_size`: the exponentially growing mini-batch size of K-FAC's
  experiments (ICML App. M / arXiv §13; spec ``kfac-algorithm.md`` §9).
- :func:`sutskever_momentum`: the increasing momentum schedule of Sutskever et al. (2013),
  used by the paper's SGD-with-Nesterov-momentum baseline (spec §10.3).
- :class:`PolyakAverage`: exponential (Polyak-style) iterate averaging with ξ = 0.99, usable
  with any optimizer (spec §9).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch

__all__ = ["PolyakAverage", "exponential_batch_size", "sutskever_momentum"]


def exponential_batch_size(k: int, *, first: int = 1000, total: int, reach_at: int = 500) -> int:
    r"""Mini-batch size of iteration ``k`` under the paper's exponential schedule (arXiv §13).

    .. math::
        m_k = \min\bigl(\lfloor m_1 \exp((k-1)/b) \rfloor, |S|\bigr),\qquad
        b = \frac{\text{reach\_at} - 1}{\ln(|S|/m_1)},

    so that :math:`m_1` = ``first`` and :math:`m_{\text{reach\_at}} = |S|` = ``total``. The
    authors' code writes it as :math:`\lfloor 2^{(k-1)/\text{div}} m_1 \rfloor`: it rounds
    down, and so do we (their CURVES logs, m = 1000, 1006, 1012, …, agree with floor and with
    round alike). The power is evaluated as :math:`m_1 (|S|/m_1)^{(k-1)/(\text{reach\_at}-1)}`,
    which is exact at ``k = reach_at``.

    Args:
        k: iteration number, starting at 1.
        first: :math:`m_1`, the first batch size (the paper: 1000).
        total: :math:`|S|`, the training-set size, where the schedule stops growing.
        reach_at: the iteration at which the batch reaches the whole set (the paper: 500).

    Returns:
        The batch size, an integer in ``[min(first, total), total]``.

    Raises:
        ValueError: if ``k < 1``, ``first < 1``, ``total < 1`` or ``reach_at < 2``.

    """
    if k < 1 or first < 1 or total < 1 or reach_at < 2:
        raise ValueError(
            "need k >= 1, first >= 1, total >= 1 and reach_at >= 2; "
            f"got k={k}, first={first}, total={total}, reach_at={reach_at}"
        )
    if first >= total or k >= reach_at:
        return total
    size = first * (total / first) ** ((k - 1) / (reach_at - 1))
    return min(math.floor(size), total)


def sutskever_momentum(t: int, mu_max: float = 0.99) -> float:
    r"""Momentum coefficient of update ``t`` in the schedule of Sutskever et al. (2013).

    .. math::
        \mu_t = \min\bigl(1 - 2^{-1-\log_2(\lfloor t/250 \rfloor + 1)},\ \mu_{\max}\bigr)
              = \min\bigl(1 - \tfrac{1}{2(\lfloor t/250 \rfloor + 1)},\ \mu_{\max}\bigr),

    i.e. 0.5 for the first 250 updates, then 0.75, 0.833, … up to ``mu_max`` (spec §10.3;
    they used ``mu_max`` ∈ {0.999, 0.995, 0.99, 0.9, 0}).

    Args:
        t: update counter, starting at 0.
        mu_max: the cap :math:`\mu_{\max}`, in ``[0, 1)``.

    Returns:
        :math:`\mu_t`.

    Raises:
        ValueError: if ``t < 0`` or ``mu_max`` is outside ``[0, 1)``.

    """
    if t < 0 or not 0.0 <= mu_max < 1.0:
        raise ValueError(f"need t >= 0 and 0 <= mu_max < 1; got t={t}, mu_max={mu_max}")
    return min(1.0 - 0.5 / (t // 250 + 1), mu_max)


class PolyakAverage:
    r"""Exponential (Polyak-style) iterate averaging.

    .. math::
        \bar\theta_k = \xi_k \bar\theta_{k-1} + (1 - \xi_k) \theta_k.

    The paper uses :math:`\xi = 0.99` and reports the better of the averaged and the current
    iterate (spec §9). Before iteration ``start`` the average is reset to the iterate. With
    ``warm_start`` (the authors' code, which starts at iteration 200)
    :math:`\xi_k = \min(1 - 1/(k - \text{start} + 1), \xi)`, so the average is a flat mean of
    the iterates until it turns exponential; without it :math:`\xi_k = \xi` from ``start`` on.

    It only reads the parameters, so it works with any optimizer: call :meth:`update` once
    after each step.

    Args:
        params: the parameters to average (their current values are the first average).
        decay: :math:`\xi`, in ``[0, 1)``.
        start: the first iteration (counting :meth:`update` calls from 1) that averages.
        warm_start: use the warm-start :math:`\xi_k` above.

    Raises:
        ValueError: if ``decay`` is outside ``[0, 1)`` or ``start < 1``.

    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        decay: float = 0.99,
        start: int = 1,
        warm_start: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0 or start < 1:
            raise ValueError(f"need 0 <= decay < 1 and start >= 1; got {decay=}, {start=}")
        self.params = list(params)
        self.decay = decay
        self.start = start
        self.warm_start = warm_start
        self.k = 0
        self.average = [p.detach().clone() for p in self.params]

    @property
    def active(self) -> bool:
        """Whether averaging has begun (``k >= start``); before, the average is the iterate."""
        return self.k >= self.start

    def current_decay(self) -> float:
        r""":math:`\xi_k` of the last :meth:`update` (0 before ``start``)."""
        if self.k < self.start:
            return 0.0
        if self.warm_start:
            return min(1.0 - 1.0 / (self.k - self.start + 1), self.decay)
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average (once per iteration)."""
        self.k += 1
        xi = self.current_decay()
        for avg, p in zip(self.average, self.params, strict=True):
            avg.lerp_(p.detach(), 1.0 - xi)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the average into the parameters (to evaluate it), then restore."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.average, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)
