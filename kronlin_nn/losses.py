r"""Predictive distributions behind the supported losses (paper §1.1, §5; spec §1, §2.2, §3.4).

K-FAC needs, for a loss ``loss_fn(z, y)`` read as a negative log-likelihood
:math:`\ell(y, z) = -\log r(y \mid z)` with natural parameter ``z`` (the network output, a
canonical link), four things:

- the output gradient :math:`\partial \ell / \partial z` for a target (sampled or given),
- targets sampled from :math:`r(\cdot \mid z)` (the "mc" Fisher of spec §2.2),
- a square root :math:`B` of the output Fisher :math:`F_R = E_y[\nabla_z\ell \nabla_z\ell^\top] = B B^\top`
  (the "exact" Fisher and the quadratic model),
- the reduction scale :math:`s`: ``loss_fn`` computes :math:`s \sum_n \ell(y_n, z_n)`.

Supported losses and their distributions (all per case, ``D`` outputs):

========================  ======================  ==================================  ====================
loss                      distribution            :math:`F_R`                         ``mean`` scale ``s``
========================  ======================  ==================================  ====================
``nn.MSELoss``            Gaussian, variance ½    :math:`2I`                          :math:`1/(ND)`
``nn.BCEWithLogitsLoss``  Bernoulli per output    :math:`\mathrm{diag}(p(1-p))`       :math:`1/(ND)`
``nn.CrossEntropyLoss``   categorical over ``D``  :math:`\mathrm{diag}(p) - pp^\top`  :math:`1/N`
========================  ======================  ==================================  ====================

``reduction="sum"`` has ``s = 1``; ``reduction="none"`` is rejected (the objective must be a
scalar). ``nn.MSELoss`` is :math:`\sum_j (y_j - z_j)^2`, the NLL of a Gaussian of variance ½
up to a constant, so its Fisher is ``2I`` per element, matching the loss exactly as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["PredictiveDistribution", "predictive_distribution"]


class PredictiveDistribution:
    """The per-case predictive distribution of a loss, with the reduction it is summed under.

    Outputs ``z`` and targets are handled as ``(n, D)`` matrices (one row per case); the
    caller flattens the trailing dimensions.

    Args:
        reduction: ``"mean"`` or ``"sum"``, as read from the loss module.

    """

    def __init__(self, reduction: str):
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"loss_fn.reduction: expected 'mean' or 'sum' (K-FAC needs a scalar objective), "
                f"got {reduction!r}"
            )
        self.reduction = reduction

    def scale(self, n_cases: int, n_outputs: int) -> float:
        r"""The factor :math:`s` with ``loss_fn(z, y)`` :math:`= s \sum_n \ell(y_n, z_n)`.

        Args:
            n_cases: ``N``, the number of cases in the batch.
            n_outputs: ``D``, the number of outputs per case.

        """
        if self.reduction == "sum":
            return 1.0
        return 1.0 / (n_cases * self._elements_per_case(n_outputs))

    def _elements_per_case(self, n_outputs: int) -> int:
        return n_outputs

    def check_output(self, z: Tensor) -> None:
        """Refuse model outputs whose flattening to ``(n, D)`` would change the distribution."""

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        r""":math:`\partial \ell(y_n, z_n) / \partial z_n` for every case: shape ``(n, D)``.

        Args:
            z: outputs, shape ``(n, D)``.
            y: targets in the loss's own format (see the subclass).

        """
        raise NotImplementedError

    def sample_targets(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        r"""One target per case drawn from :math:`r(\cdot \mid z_n)`, in the loss's target format."""
        raise NotImplementedError

    def fisher_sqrt(self, z: Tensor) -> Tensor:
        r"""The columns of :math:`B_n` with :math:`F_{R,n} = B_n B_n^\top`: shape ``(D, n, D)``.

        Entry ``[k, n]`` is column ``k`` of :math:`B_n`; backpropagating each column gives the
        exact expectation over the predictive distribution (one backward pass per ``k``).
        """
        raise NotImplementedError

    def fisher_gram(self, z: Tensor, Jt: Tensor) -> Tensor:
        r""":math:`\sum_n (J_n u_k)^\top F_{R,n} (J_n u_l)` for all pairs: shape ``(K, K)``.

        Args:
            z: outputs, shape ``(n, D)``.
            Jt: output tangents :math:`J_n u_k`, shape ``(K, n, D)`` (any strides).

        """
        raise NotImplementedError


class GaussianMSE(PredictiveDistribution):
    r"""``nn.MSELoss``: :math:`\ell = \|y - z\|^2`, a Gaussian of variance ½ per output, :math:`F_R = 2I`."""

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """``2 (z − y)``; ``y`` of shape ``(n, D)``."""
        return 2 * (z - y)

    def sample_targets(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """``z + ε/√2`` with ``ε ~ N(0, I)``."""
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z + noise * math.sqrt(0.5)

    def fisher_sqrt(self, z: Tensor) -> Tensor:
        """``√2 I`` for every case."""
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device) * math.sqrt(2.0)
        return eye[:, None, :].expand(-1, z.shape[0], -1)

    def fisher_gram(self, z: Tensor, Jt: Tensor) -> Tensor:
        """``2 Σ_n ⟨J_n u_k, J_n u_l⟩``."""
        return 2 * torch.einsum("knd,lnd->kl", Jt, Jt)


class Bernoulli(PredictiveDistribution):
    r"""``nn.BCEWithLogitsLoss``: independent Bernoulli outputs :math:`p = \sigma(z)`.

    :math:`F_R = \operatorname{diag}(p(1-p))`.
    """

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """``σ(z) − y``; ``y`` of shape ``(n, D)`` with entries in [0, 1]."""
        return torch.sigmoid(z) - y

    def sample_targets(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """``y ~ Bernoulli(σ(z))`` elementwise, as ``u < σ(z)`` with ``u ~ U(0, 1)``.

        Uniform draws rather than ``torch.bernoulli``, which rejects non-finite ``z`` (the
        optimizer checks finiteness once, after this pass) and would cost a host sync.
        """
        u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return (u < torch.sigmoid(z)).to(z.dtype)

    def fisher_sqrt(self, z: Tensor) -> Tensor:
        """``diag(√(p(1−p)))`` for every case."""
        p = torch.sigmoid(z)
        root = torch.sqrt(p * (1 - p))
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return eye[:, None, :] * root[None, :, :]

    def fisher_gram(self, z: Tensor, Jt: Tensor) -> Tensor:
        """``Σ_n Σ_j p(1−p) (J u_k)_j (J u_l)_j``."""
        p = torch.sigmoid(z)
        return torch.einsum("knd,lnd->kl", Jt * (p * (1 - p)), Jt)


class Categorical(PredictiveDistribution):
    r"""``nn.CrossEntropyLoss``: a categorical distribution :math:`p = \operatorname{softmax}(z)`.

    :math:`F_R = \operatorname{diag}(p) - pp^\top`.

    Targets are class indices (shape ``(n,)``, integer) or class probabilities (shape
    ``(n, D)``, rows summing to 1), as ``nn.CrossEntropyLoss`` accepts.
    """

    def _elements_per_case(self, n_outputs: int) -> int:
        return 1

    def check_output(self, z: Tensor) -> None:
        """Raise ``ValueError`` unless ``z`` is ``(n, C)``.

        ``nn.CrossEntropyLoss`` on ``(n, C, d₁, …)`` outputs has a categorical distribution
        per position (and a mean over positions); flattened to ``(n, C·d₁…)`` it would be a
        single one over all of them.
        """
        if z.ndim != 2:
            raise ValueError(
                f"loss_fn: nn.CrossEntropyLoss on model outputs of shape {tuple(z.shape)} (a "
                f"class dimension and positions) is not supported, expected outputs (n, C); "
                f"move the positions into the batch dimension"
            )

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """``softmax(z) − onehot(y)`` (or ``− y`` for probability targets)."""
        p = torch.softmax(z, dim=1)
        if y.dtype.is_floating_point:
            return p - y
        # scatter rather than one_hot, whose range check costs a host sync
        return p.scatter_add(1, y[:, None], torch.full_like(p[:, :1], -1.0))

    def sample_targets(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """Class indices drawn from ``softmax(z)``, shape ``(n,)``, by the Gumbel-max trick.

        ``argmax(z + Gumbel noise)`` rather than ``torch.multinomial``, which rejects
        non-finite probabilities (the optimizer checks finiteness once, later) and syncs.
        """
        u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(z.dtype).tiny)))
        return torch.argmax(z + gumbel, dim=1)

    def fisher_sqrt(self, z: Tensor) -> Tensor:
        r"""Columns of :math:`B = \operatorname{diag}(\sqrt p) - p\sqrt p^\top`, i.e. √p_k (e_k − p)."""
        p = torch.softmax(z, dim=1)
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return torch.sqrt(p).T[:, :, None] * (eye[:, None, :] - p[None, :, :])

    def fisher_gram(self, z: Tensor, Jt: Tensor) -> Tensor:
        """``Σ_n [Σ_j p_j (J u_k)_j (J u_l)_j − (pᵀJ u_k)(pᵀJ u_l)]``."""
        weighted = Jt * torch.softmax(z, dim=1)
        mean = weighted.sum(dim=2)  # (K, n): pᵀ J u_k per case
        return torch.einsum("knd,lnd->kl", weighted, Jt) - mean @ mean.T


_DISTRIBUTIONS: dict[type, Callable[[str], PredictiveDistribution]] = {
    nn.MSELoss: GaussianMSE,
    nn.BCEWithLogitsLoss: Bernoulli,
    nn.CrossEntropyLoss: Categorical,
}


def predictive_distribution(loss_fn: nn.Module) -> PredictiveDistribution:
    """The predictive distribution and reduction that ``loss_fn`` is the negative log-likelihood of.

    Args:
        loss_fn: an instance of ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss``
            with ``reduction`` ``"mean"`` or ``"sum"`` and no per-class or per-element weights.

    Raises:
        TypeError: ``loss_fn`` is not one of the supported loss modules.
        ValueError: an unsupported reduction or an option that changes the distribution
            (``weight``, ``pos_weight``, ``label_smoothing``).

    """
    factory = _DISTRIBUTIONS.get(type(loss_fn))
    if factory is None:
        names = ", ".join(f"nn.{cls.__name__}" for cls in _DISTRIBUTIONS)
        raise TypeError(f"loss_fn: expected an instance of {names}; got {type(loss_fn).__name__}")
    for option in ("weight", "pos_weight"):
        if getattr(loss_fn, option, None) is not None:
            raise ValueError(
                f"loss_fn.{option}: expected None (weighted losses have no K-FAC predictive "
                f"distribution here), got a tensor"
            )
    if getattr(loss_fn, "label_smoothing", 0.0) != 0.0:
        raise ValueError(
            f"loss_fn.label_smoothing: expected 0.0, got {loss_fn.label_smoothing}"
        )
    return factory(loss_fn.reduction)
