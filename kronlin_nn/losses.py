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

**Options.** Every option of these loss modules enters the objective, the statistics and the
quadratic model exactly. The curvature K-FAC approximates is the loss's own Hessian with respect
to the outputs (the generalized Gauss–Newton matrix :math:`J^\top H J`, which for the unweighted
losses is the Fisher of the distribution), and each option makes it a weighted sum

.. math::
    H = \sum_n \rho_n \operatorname{diag}(\sqrt{v_n}) F_{R,n} \operatorname{diag}(\sqrt{v_n}),

with per-case weights :math:`\rho_n` (:meth:`PredictiveDistribution.case_weights`) and, for
``nn.BCEWithLogitsLoss``, per-output weights :math:`v_n` (:meth:`~PredictiveDistribution.element_weights`):

- ``CrossEntropyLoss(ignore_index=i)``: the cases with target ``i`` weigh 0 (``"mean"``
  averages over the others);
- ``CrossEntropyLoss(weight=W)``: :math:`\rho_n \propto W_{y_n}`, and ``"mean"`` divides by
  :math:`\sum_n W_{y_n}`;
- ``CrossEntropyLoss(label_smoothing=ε)``: :math:`F_R` is unchanged, :math:`\rho_n \propto
  (1-\varepsilon)W_{y_n} + \tfrac{\varepsilon}{C}\sum_c W_c`, and the empirical Fisher's
  vectors use the smoothed targets;
- ``BCEWithLogitsLoss(weight=w)``: :math:`v_{nj} = w_j` (broadcast over the cases);
- ``BCEWithLogitsLoss(pos_weight=p)``: :math:`v_{nj} = 1 + (p_j - 1) y_{nj}`, from the loss's
  Hessian.

``fisher="empirical"`` with a ``weight`` or ``pos_weight`` is refused: a weighted loss has no
unique per-case gradient whose outer products would be "the" empirical Fisher. A ``weight``
with a batch dimension is refused too: K-FAC evaluates the loss on sub-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["CaseWeights", "PredictiveDistribution", "SubBatchWeights", "predictive_distribution"]


class CaseWeights(NamedTuple):
    r"""Per-case weights of a loss on one batch, ``(N,)`` each."""

    curvature: Tensor
    """:math:`c_n`, the case's weight in the loss's Hessian (before the reduction)."""
    reduction: Tensor
    """:math:`d_n`, its share of what ``reduction="mean"`` divides by."""


class SubBatchWeights(NamedTuple):
    r"""The weights of a sub-batch's statistics (the first ``n`` cases of a batch).

    With :math:`\kappa = sN` the reduction scale of the batch (:meth:`PredictiveDistribution.scale`),
    the batch's curvature :math:`\sum_{i \le N} \rho_i H_i` is estimated from the sub-batch as
    :math:`\kappa\,\frac1n\sum_{i \le n} w_i t H_i` with input weights
    :math:`w_i = n c_i / \sum_{j \le n} c_j` (mean 1) and :math:`t = \sum_{i \le N}\rho_i / \kappa`.
    """

    inputs: Tensor | None
    """:math:`w`, ``(n,)``, the weights of per-case expectations over layer inputs (``None``: uniform)."""
    outputs: Tensor | None
    r"""``(n, D)`` or ``(n, 1)``, :math:`\sqrt{w_i t\, v_{ij}}`, multiplying every vector at the outputs
    (``None``: one)."""


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

    def check_fisher(self, fisher: str) -> None:
        """Refuse a Fisher kind the loss's options do not define (see the module docstring)."""

    def case_weights(self, targets: Tensor, dtype: torch.dtype) -> CaseWeights | None:
        """The batch's per-case weights from its targets, in ``dtype`` (``None``: all the same)."""
        return None

    def element_weights(self, targets: Tensor) -> Tensor | None:
        """Per-output curvature weights ``(n, D)`` from targets ``(n, …)`` (``None``: all one)."""
        return None

    def weights(self, targets: Tensor, n: int, dtype: torch.dtype,
                union: tuple[int, Tensor, Tensor, Tensor] | None = None) -> SubBatchWeights:
        """The :class:`SubBatchWeights` of the first ``n`` cases of the batch with ``targets``.

        Every weight is computed in ``dtype`` on the device (no host synchronization); a
        sub-batch whose cases all weigh zero gives non-finite weights, so non-finite statistics.

        Args:
            targets: the batch's targets.
            n: the cases of the sub-batch.
            dtype: the weights' dtype.
            union: for a shard of a union batch (:mod:`kronlin_nn.distributed`), whose first
                ``n`` cases are its part of the union's sub-batch: ``(N, Σ_S c, Σ c, Σ d)``,
                the union sub-batch's size and sum of :math:`c`, and the union batch's sums
                of :math:`c` and of what the reduction divides by (:meth:`weight_sums`,
                summed over the shards). Default: ``targets`` is the batch.

        """
        cases = self.case_weights(targets, dtype)
        elements = self.element_weights(targets[:n])
        root = None if elements is None else elements.sqrt()
        if cases is None:
            return SubBatchWeights(None, root)
        c = cases.curvature
        if union is None:
            w = c[:n] * (n / c[:n].sum())
            total = c.sum() / (cases.reduction.sum() if self.reduction == "mean" else c.shape[0])
        else:
            N, sub, c_sum, d_sum = union
            w, total = c[:n] * (N / sub), c_sum / d_sum
        case_root = (w * total).sqrt()[:, None]
        return SubBatchWeights(w, case_root if root is None else case_root * root)

    def weight_sums(self, targets: Tensor, sizes: tuple[int, ...],
                    dtype: torch.dtype) -> Tensor | None:
        r"""The sums of a shard that its union's :meth:`weights` need (``None``: all weights one).

        Returns:
            ``(len(sizes) + 2,)``: :math:`\sum_{i<n} c_i` for each ``n`` of ``sizes``, then
            :math:`\sum c` and what the reduction divides by, :math:`\sum d` (``"mean"``) or
            the number of cases (``"sum"``); every entry adds over shards.

        """
        cases = self.case_weights(targets, dtype)
        if cases is None:
            return None
        c, d = cases.curvature, cases.reduction
        count = d.sum() if self.reduction == "mean" else c.new_tensor(float(c.shape[0]))
        return torch.stack([*(c[:n].sum() for n in sizes), c.sum(), count])

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        r""":math:`\partial \ell(y_n, z_n) / \partial z_n` for every case: shape ``(n, D)``.

        Args:
            z: outputs, shape ``(n, D)``.
            y: targets in the loss's own format (see the subclass).

        """
        raise NotImplementedError

    def data_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """The per-case gradient of the loss as configured, for the data's targets ``y``.

        The empirical Fisher's vectors; :meth:`output_grad` unless an option (label smoothing)
        changes the loss's gradient without changing its curvature.
        """
        return self.output_grad(z, y)

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

    :math:`F_R = \operatorname{diag}(p(1-p))`; with ``weight`` :math:`w` and ``pos_weight``
    :math:`p_w` the loss's Hessian is :math:`\operatorname{diag}(v\,p(1-p))`,
    :math:`v = w\,(1 + (p_w - 1)y)` (:meth:`element_weights`).

    Args:
        reduction: ``"mean"`` or ``"sum"``.
        weight: the loss's ``weight`` (broadcast against the outputs), or ``None``.
        pos_weight: the loss's ``pos_weight``, or ``None``.

    """

    def __init__(self, reduction: str, weight: Tensor | None = None,
                 pos_weight: Tensor | None = None):
        super().__init__(reduction)
        self.weight, self.pos_weight = weight, pos_weight

    def check_output(self, z: Tensor) -> None:
        """Raise ``ValueError`` for a ``weight`` or ``pos_weight`` that varies over the cases."""
        for name in ("weight", "pos_weight"):
            w = getattr(self, name)
            if w is not None and w.ndim >= z.ndim and w.shape[w.ndim - z.ndim] != 1:
                raise ValueError(
                    f"loss_fn.{name}: expected weights broadcast over the cases (shape "
                    f"{tuple(z.shape[1:])} or broadcastable to it), got shape {tuple(w.shape)}, "
                    f"which weighs cases by their position in one batch of {z.shape[0]}; K-FAC "
                    f"evaluates the loss on sub-batches"
                )

    def check_fisher(self, fisher: str) -> None:
        """Refuse ``fisher="empirical"`` with a ``weight`` or ``pos_weight``."""
        _refuse_empirical(self, fisher, ("weight", "pos_weight"))

    def element_weights(self, targets: Tensor) -> Tensor | None:
        """``w (1 + (p_w − 1) y)`` broadcast to the targets ``(n, …)``, flattened to ``(n, D)``."""
        if self.weight is None and self.pos_weight is None:
            return None
        v = torch.ones_like(targets)
        if self.weight is not None:
            v = v * self.weight
        if self.pos_weight is not None:
            v = v * (1 + (self.pos_weight - 1) * targets)
        return v.reshape(targets.shape[0], -1)

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
    ``(n, D)``), as ``nn.CrossEntropyLoss`` accepts.

    Args:
        reduction: ``"mean"`` or ``"sum"``.
        weight: the loss's class weights ``(D,)``, or ``None``.
        ignore_index: the class index whose cases the loss ignores.
        label_smoothing: the loss's ``label_smoothing`` ε.

    """

    def __init__(self, reduction: str, weight: Tensor | None = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.weight, self.ignore_index, self.label_smoothing = weight, ignore_index, label_smoothing

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

    def check_fisher(self, fisher: str) -> None:
        """Refuse ``fisher="empirical"`` with class weights."""
        _refuse_empirical(self, fisher, ("weight",))

    def case_weights(self, targets: Tensor, dtype: torch.dtype) -> CaseWeights:
        r"""Per-case weights :math:`c_n = (1-\varepsilon)d_n + \varepsilon\bar W`, :math:`d_n = W_{y_n}`.

        For class targets, with :math:`\bar W = \tfrac1C\sum_c W_c` (:math:`W = 1` without
        class weights) and :math:`c_n = d_n = 0` for an ignored case.

        For probability targets :math:`q`, :math:`c_n = \sum_c W_c q'_c` with the smoothed
        :math:`q' = (1-\varepsilon)q + \varepsilon/C` and :math:`d_n = 1` (``"mean"`` divides
        by the number of cases).
        """
        W, eps = self.weight, self.label_smoothing
        if targets.dtype.is_floating_point:
            q = targets if eps == 0.0 else (1 - eps) * targets + eps / targets.shape[1]
            c = (q * W).sum(1) if W is not None else q.sum(1)
            return CaseWeights(c, torch.ones_like(c))
        valid = targets != self.ignore_index
        if W is None:
            d = valid.to(dtype)
            return CaseWeights(d, d)
        d = torch.where(valid, W[self._classes(targets)], 0.0)
        if eps == 0.0:
            return CaseWeights(d, d)
        return CaseWeights(torch.where(valid, (1 - eps) * d + eps / W.shape[0] * W.sum(), 0.0), d)

    def _classes(self, y: Tensor) -> Tensor:
        """Class indices with the ignored ones replaced by 0 (their cases weigh 0)."""
        return torch.where(y == self.ignore_index, 0, y)

    def output_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """``softmax(z) − onehot(y)`` (or ``− y`` for probability targets)."""
        p = torch.softmax(z, dim=1)
        if y.dtype.is_floating_point:
            return p - y
        # scatter rather than one_hot, whose range check costs a host sync
        return p.scatter_add(1, self._classes(y)[:, None], torch.full_like(p[:, :1], -1.0))

    def data_grad(self, z: Tensor, y: Tensor) -> Tensor:
        """``softmax(z) − q`` with the smoothed targets ``q = (1 − ε) onehot(y) + ε/C``."""
        grad = self.output_grad(z, y)
        eps = self.label_smoothing
        if eps == 0.0:
            return grad
        p = torch.softmax(z, dim=1)
        return (1 - eps) * grad + eps * (p - 1 / z.shape[1])

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


def _refuse_empirical(dist: PredictiveDistribution, fisher: str, options: tuple[str, ...]) -> None:
    for option in options:
        if fisher == "empirical" and getattr(dist, option) is not None:
            raise ValueError(
                f"fisher='empirical' with loss_fn.{option}: a weighted loss has no unique per-case "
                f"gradient whose outer products are its empirical Fisher; use fisher='mc' or "
                f"'exact' (the weighted loss's Gauss-Newton matrix)"
            )


_DISTRIBUTIONS: dict[type, Callable[[nn.Module], PredictiveDistribution]] = {
    nn.MSELoss: lambda loss: GaussianMSE(loss.reduction),
    nn.BCEWithLogitsLoss: lambda loss: Bernoulli(loss.reduction, loss.weight, loss.pos_weight),
    nn.CrossEntropyLoss: lambda loss: Categorical(loss.reduction, loss.weight, loss.ignore_index,
                                                  loss.label_smoothing),
}
_MODULES = "nn.MSELoss(), nn.BCEWithLogitsLoss() or nn.CrossEntropyLoss()"


def predictive_distribution(loss_fn: nn.Module) -> PredictiveDistribution:
    """The predictive distribution and reduction that ``loss_fn`` is the negative log-likelihood of.

    Args:
        loss_fn: an instance of ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss``
            (or of a subclass that keeps its ``forward``) with ``reduction`` ``"mean"`` or
            ``"sum"``; every other option is honoured (see the module docstring).

    Raises:
        TypeError: ``loss_fn`` is not one of the supported loss modules, or a subclass that
            overrides ``forward``.
        ValueError: an unsupported reduction.

    """
    base = next((cls for cls in type(loss_fn).__mro__ if cls in _DISTRIBUTIONS), None)
    if base is None:
        what = (f"the function {getattr(loss_fn, '__name__', loss_fn)!r}" if callable(loss_fn)
                and not isinstance(loss_fn, nn.Module) else type(loss_fn).__name__)
        raise TypeError(
            f"loss_fn: expected the loss module whose value is the objective, an instance of "
            f"{_MODULES.replace('()', '')}, got {what}; e.g. KFAC(model, nn.CrossEntropyLoss()) "
            f"for F.cross_entropy, and call that same module in your loop"
        )
    if type(loss_fn).forward is not base.forward:
        raise TypeError(
            f"loss_fn: {type(loss_fn).__name__} overrides the forward of nn.{base.__name__}, so "
            f"its value need not be the negative log-likelihood whose Fisher K-FAC uses; give an "
            f"nn.{base.__name__} (with its options) or a subclass that keeps its forward"
        )
    return _DISTRIBUTIONS[base](loss_fn)
