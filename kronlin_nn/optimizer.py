r"""``KFAC``: the complete K-FAC optimizer of Martens & Grosse (2015) for torch networks.

One call per iteration runs the paper's Algorithm 2 (arXiv §9; spec ``kfac-algorithm.md`` §6),
in any of three forms that give the same iteration (:mod:`kronlin_nn.steps`):
``stats = opt.step(inputs, targets)``; the user's own
``loss = loss_fn(model(x), y); loss.backward(); opt.step()``; or ``opt.step(closure)``. In order:

1. forward pass on the batch :math:`S'`, recording every layer's input and output, and
   backward pass for :math:`h(\theta)` and :math:`\nabla h`, weight decay included (run by
   the user in the second and third forms, recorded by hooks, the gradient read from
   ``.grad``; several forward and backward passes before a step are one batch);
2. a forward pass of its own on :math:`S_1` (the first :math:`\lceil\tau_1 m\rceil` cases; this
   costs :math:`\tau_1` of a forward pass and saves a full-batch backward pass) and the extra
   backward pass on it with targets sampled from the model, to the layer outputs only,
   giving the batch's Kronecker factors (and the cross moments of a chain for ``"tridiag"``);
3. a single host sync: a non-finite :math:`h` or :math:`\nabla h` rejects the step
   (parameters and statistics untouched, λ raised); non-finite factors skip the EMA update;
4. EMA update of the statistics, :math:`\epsilon_k = \min(1-1/k, \epsilon_{\max})`;
5. γ candidates :math:`\{\omega_2\gamma, \gamma, \gamma/\omega_2\}` when :math:`k \equiv 0 \pmod{T_2}`;
6. inverse refresh when :math:`k \equiv 0 \pmod{T_3}` or :math:`k \le 3`, one damped
   inverse per candidate (a failure keeps the last good inverses, with a warning);
7. per candidate: :math:`\Delta_\gamma = -\tilde F_\gamma^{-1}\nabla h`, then :math:`(\alpha, \mu)`
   from the exact-Fisher quadratic model on :math:`S_2` (first :math:`\lceil\tau_2 m\rceil`
   cases), all candidates' forward-mode products in one batched pass that reuses the layer
   outputs recorded in step 1 (:func:`~kronlin_nn.quadratic.cached_output_jvps`);
8. keep the candidate with the lowest :math:`M(\delta)`;
9. when :math:`k \equiv 0 \pmod{T_1}`: :math:`\rho` from :math:`h(\theta+\delta)` on :math:`S'`
   and the Levenberg–Marquardt rule for λ;
10. :math:`\theta \leftarrow \theta + \delta`, :math:`\delta_0 \leftarrow \delta`.

Host syncs per step: one for the finiteness checks, one for the quadratic model's scalars,
and one more on ρ steps (plus a few on refresh steps).

In a process group each rank passes its shard of the batch (in any of the three forms) and the
iteration is the one on the union of the shards; the few collectives that make the union's
quantities, and the split of the refreshes over the ranks, are :mod:`kronlin_nn.distributed`'s
(no-ops in one process).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

import kronlin

from .blocks import UNSUPPORTED, CurvatureBlock, KroneckerBlock, check_tridiag_chain, model_blocks
from .capture import LayerIO, Pass, PassRecorder, Recorder, group_calls, merged_calls, own_passes
from .curvature import FactorError, KFACWarning, blockdiag_candidates, check_finite
from .damping import (
    GAMMA_RULES,
    PI_KINDS,
    curvature_scale,
    damping_grid,
    gamma_candidates,
    gamma_decay,
    lm_decay,
    lm_rest_point,
    lm_update,
)
from .distributed import Replicas, Traffic
from .factors import (
    check_fisher,
    cross_factors,
    flat_targets,
    output_gradients,
    output_vectors,
)
from .layout import ParameterLayout
from .losses import SubBatchWeights, predictive_distribution
from .quadratic import (
    cached_output_jvps,
    gram_accuracy,
    model_change,
    output_jvps,
    reduction_ratio,
    solve_coefficients,
)
from .statistics import SYMMETRIC_GROUPS, FactorStatistics
from .steps import (
    WEIGHT_RTOL,
    Batch,
    autocast_as,
    autocast_state,
    check_dtypes,
    check_model,
    check_param_group,
    momentum_kind,
    user_batch,
)
from .units import inverse_units

__all__ = ["KFAC"]

APPROXIMATIONS = ("blockdiag", "tridiag")
UNITS = ("loss", "case")
# 5: the inverse as each unit's tensors (:mod:`kronlin_nn.units`), the union's statistics
_STATE_VERSION = 5
# The default lower bound of λ in units of ε·λ_top (ε the dtype's machine epsilon): a hundred
# rounding errors of the quadratic model's entries. At ε·λ_top, full-batch float32 training
# still took uphill steps near its end (scikit-learn's digits autoencoder).
LAMBDA_FLOOR = 100.0
# How far √(λ + η) may drift from the γ of the current inverse before the tied rule refreshes it
# early: the greedy search's step, |log ω₂| with ω₂ = 0.95^(20/2).
TIED_DRIFT = -math.log(0.95**10)


class KFAC(torch.optim.Optimizer):
    r"""K-FAC (Martens & Grosse 2015) with the paper's full damping and momentum machinery.

    Args:
        model: the network (the module itself, not its parameters, uncompiled, with float32
            or float64 parameters: half precision is for ``torch.autocast``). Every trainable
            parameter gets a curvature block (:mod:`kronlin_nn.blocks`): ``nn.Linear`` (on
            ``(n, …, d_in)`` inputs, called once or more per forward pass), ``nn.Conv2d``,
            ``nn.Embedding``, the affine part of normalization layers, and ``unsupported``'s
            choice for the rest. The model must treat cases independently (no BatchNorm in
            training mode): it is evaluated on sub-batches. Hooks on it record the user's own
            forward passes (:class:`~kronlin_nn.capture.PassRecorder`).
        loss_fn: ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss`` (or a
            subclass keeping their ``forward``) with reduction ``"mean"`` or ``"sum"``, every
            other option honoured (:mod:`kronlin_nn.losses`); the objective is exactly
            ``loss_fn(model(x), y)`` plus ``weight_decay/2·‖θ‖²``, and the curvature is that
            objective's Fisher (its Gauss–Newton matrix).
        approx: ``"blockdiag"`` (:math:`\breve F`, paper §4.2; the paper's recommendation) or
            ``"tridiag"`` (:math:`\hat F`, §4.3; the ``nn.Linear``/``nn.Conv2d`` layers must
            form a chain in forward order, each called once; the other blocks sit on its
            block diagonal).
        fisher: statistics from targets sampled from the model (``"mc"``, the paper), the
            data's targets (``"empirical"``) or the exact expectation (``"exact"``, one backward
            pass per output).
        lr: ``None`` (default): the quadratic model chooses α (arXiv §6.4), and μ with it when
            ``momentum=True`` (§7), and ``param_groups[0]["lr"]`` (1.0) multiplies what it
            chose (a fixed μ is applied as given), so that a learning-rate scheduler scales
            K-FAC's own step; a float: a fixed α = ``param_groups[0]["lr"]`` (this value at
            first), scheduled like SGD's learning rate.
        momentum: ``True``: μ from the quadratic model (arXiv §7); ``False``: none; a float:
            fixed μ (``param_groups[0]["momentum"]``, which schedulers may change; replacing
            ``True`` or ``False`` by a float, as ``OneCycleLR`` does, is refused).
        damping: the initial λ. ``None`` (default) searches the first batch for it: one
            candidate per decade below the largest curvature eigenvalue, λ₀ being where the
            Levenberg–Marquardt rule would be at rest (:meth:`_search_damping`). γ starts at
            :math:`\sqrt{\lambda_0 + \eta}`.
        adapt_damping: adapt λ by the LM rule every ``damping_every`` steps and γ by
            ``gamma_rule``; ``False`` keeps λ and γ fixed.
        gamma_rule: ``"tied"`` (default): γ = √(λ + η) at every inverse refresh, as
            tensorflow/kfac and kfac-jax, and an early refresh whenever √(λ + η) has moved a
            factor :math:`1/\omega_2` from the current inverse's γ; ``"greedy"``: the paper's search over
            :math:`\{\omega_2\gamma, \gamma, \gamma/\omega_2\}` every ``gamma_every`` steps
            (arXiv §6.6). Both measured on the configuration page of the docs.
        weight_decay: η, in :math:`h` and its gradient, for all parameters (biases included);
            0 by default, as in ``torch.optim``.
        units: the units of ``damping``, ``weight_decay``, ``damping_bounds`` and
            ``gamma_bounds``: ``"loss"`` (default) those of ``loss_fn``'s value, as
            ``torch.optim``'s weight decay; ``"case"`` those of the paper's objective, each
            case's loss summed over its outputs and averaged over cases, converted at every
            step by :math:`\kappa = sN` (``loss_fn`` computes :math:`s\sum_n\ell_n`). The
            paper's λ₀ = 150 and η = 1e-5 are in ``"case"`` units (:data:`~kronlin_nn.PAPER`).
        ema_max: :math:`\epsilon_{\max}` of the statistics' moving average.
        inverse_every: :math:`T_3`; inverses are also refreshed on steps 1–3.
        damping_every: :math:`T_1`; :math:`\omega_1 = 0.95^{T_1}`.
        reject_uphill: on a ρ step, an update that increases :math:`h` on the batch is not
            applied (θ stays, δ₀ is dropped, λ grows by the LM rule, ``accepted`` is ``False``);
            and a step whose quadratic model promises a decrease larger than :math:`h` itself
            (impossible: the supported losses are :math:`\ge 0`) is made a ρ step. The paper
            applies every update. Late in float32 training the gradient approaches rounding
            noise, and near zero loss the exact Fisher vanishes: there the quadratic model can
            propose a step that undoes the run.
        lm_streak: the LM rule's factor compounds over consecutive moves of λ in one direction,
            :math:`\omega_1^{\min(c,\ \text{lm\_streak})}` for the ``c``-th in a row
            (:func:`~kronlin_nn.damping.lm_update`); 1 is the paper's constant factor.
        gamma_every: :math:`T_2`, a multiple of ``inverse_every``; :math:`\omega_2 = 0.95^{T_2/2}`.
        stats_fraction: :math:`\tau_1`, the fraction of each batch for the factor statistics.
        quad_fraction: :math:`\tau_2`, the fraction of each batch for the quadratic model's
            exact-Fisher products (default 1/4, the paper's text; the authors' code has 1).
        quad_min_cases: the quadratic model uses at least this many cases (or the whole batch):
            :math:`|S_2| = \min(m, \max(\lceil\tau_2 m\rceil, \text{quad\_min\_cases}))`. Below
            a few hundred cases, α and μ from a sub-batch are too noisy (the paper's warning,
            measured on the configuration page of the docs).
        pi: ``"trace"``, ``"frobenius"`` or ``"one"`` (:func:`~kronlin_nn.damping.pi_scales`).
        seed: seed of the optimizer's own ``torch.Generator`` for the sampled targets;
            ``None`` draws one from torch's global generator.
        gamma_bounds: ``(γ_min, γ_max)``; default :math:`(\sqrt\eta, \infty)`. The authors' code
            caps γ at 1, which fights :math:`\gamma_0 = 12.2` and depends on the loss scale.
        damping_bounds: ``(λ_min, λ_max)``; default ``None``: :math:`(100\,\epsilon\lambda_{\text{top}},
            \infty)` with :math:`\lambda_{\text{top}}` the largest curvature eigenvalue of the
            first batch and ε the parameters' machine epsilon: near ε·λ_top the damping is
            under what the quadratic model resolves in that precision, and late float32
            training turns unstable; the authors' code has ``(0, ∞)``.
        rho_includes_damping: whether :math:`M` in :math:`\rho` includes the λ term (the paper;
            tensorflow/kfac and kfac-jax exclude it).
        unsupported: what trainable parameters without a registered block get:
            ``"diagonal"`` (a diagonal-Fisher block), ``"first_order"`` (the damping alone,
            :math:`\gamma^2 I`: a gradient step sized by the quadratic model) or ``"error"``
            (:func:`~kronlin_nn.blocks.model_blocks`).
        grad_worker_fraction: in data-parallel training, the fraction ``f`` of the ranks that
            hold each refreshed inverse and apply it (KAISA's gradient-worker fraction;
            ``f·W`` must divide the world size ``W``): ``1`` (default) broadcasts each inverse
            to every rank, which then needs no communication but the gradient's between
            refreshes; ``1/W`` keeps each inverse on the rank that refreshed it, which
            broadcasts its blocks' part of the proposals at every step (the least memory).
            Ignored in one process (:mod:`kronlin_nn.distributed`).
        process_group: the data-parallel group; default: a ``DistributedDataParallel``
            model's, else the default group if ``torch.distributed`` is initialized, else none.

    Data-parallel training: in every rank of an initialized process group, build the optimizer
    on the same model (wrapped in ``DistributedDataParallel`` or not; rank 0's parameters and
    seed are broadcast) and step on the rank's shard of the batch, in any of the three forms of
    :meth:`step`. The step is the single-process step on the union of the shards
    (:func:`~kronlin_nn.distributed.union_order`): same α, μ, λ, γ and update on every rank.
    :attr:`traffic` counts the bytes communicated.

    The diagnostics of a step (returned by :meth:`step` in its first two forms, and kept in
    :attr:`last_step`) are a dict with ``"loss"`` (:math:`h(\theta)` before the step, weight
    decay included), ``"lambda"`` and ``"gamma"`` (the values this step used), ``"alpha"``,
    ``"mu"`` (the coefficients applied), ``"rho"`` (NaN when not computed), ``"refreshed"``
    and ``"accepted"``.

    One parameter group holds every trainable parameter (:meth:`add_param_group` is refused).
    The optimizer supports ``torch.amp.GradScaler`` (``scaler.step(opt)``): it divides the
    gradients by the scale itself and skips a step whose scaled gradients overflowed.

    Raises:
        ValueError, TypeError: invalid configuration, model or loss (naming the argument).

    """

    _step_supports_amp_scaling = True  # GradScaler.step leaves unscaling and skipping to step()

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | None = None,
        *,
        approx: str = "blockdiag",
        fisher: str = "mc",
        lr: float | None = None,
        momentum: bool | float = True,
        damping: float | None = None,
        adapt_damping: bool = True,
        gamma_rule: str = "tied",
        weight_decay: float = 0.0,
        units: str = "loss",
        ema_max: float = 0.95,
        inverse_every: int = 20,
        damping_every: int = 5,
        lm_streak: int = 3,
        reject_uphill: bool = True,
        gamma_every: int = 20,
        stats_fraction: float = 1 / 8,
        quad_fraction: float = 0.25,
        quad_min_cases: int = 256,
        pi: str = "trace",
        seed: int | None = None,
        gamma_bounds: tuple[float, float] | None = None,
        damping_bounds: tuple[float, float] | None = None,
        rho_includes_damping: bool = True,
        unsupported: str = "diagonal",
        grad_worker_fraction: float = 1.0,
        process_group: Any = None,
    ):
        _validate(approx=approx, fisher=fisher, lr=lr, momentum=momentum, damping=damping,
                  gamma_rule=gamma_rule, units=units, weight_decay=weight_decay,
                  inverse_every=inverse_every, damping_every=damping_every, lm_streak=lm_streak,
                  gamma_every=gamma_every,
                  stats_fraction=stats_fraction, quad_fraction=quad_fraction,
                  quad_min_cases=quad_min_cases, pi=pi,
                  damping_bounds=damping_bounds, gamma_bounds=gamma_bounds,
                  unsupported=unsupported, grad_worker_fraction=grad_worker_fraction)
        check_model(model)
        if loss_fn is None:
            raise TypeError(
                "loss_fn: KFAC(model, loss_fn) needs the loss module whose value is the objective, "
                "e.g. nn.CrossEntropyLoss(), nn.MSELoss() or nn.BCEWithLogitsLoss(), and your loop "
                "calls that same module; got none"
            )
        self._dist = predictive_distribution(loss_fn)
        self._dist.check_fisher(fisher)
        model, self._replicas = Replicas.of(model, process_group)
        self.grad_worker_fraction = grad_worker_fraction
        blocks = model_blocks(model, unsupported)
        check_dtypes(blocks)
        super().__init__([p for b in blocks for p in b.params if p is not None],
                         {"lr": 1.0 if lr is None else lr, "momentum": momentum,
                          "weight_decay": weight_decay})
        self.model, self.loss_fn = model, loss_fn
        self._fixed_lr, self._momentum_kind = lr is not None, momentum_kind(momentum)
        self.approx, self.fisher, self.pi = approx, fisher, pi
        self.gamma_rule, self.units = gamma_rule, units
        self.adapt_damping, self.rho_includes_damping = adapt_damping, rho_includes_damping
        self.lm_streak, self._lm_streak = lm_streak, 0
        self.reject_uphill = reject_uphill
        self.inverse_every, self.damping_every, self.gamma_every = (
            inverse_every, damping_every, gamma_every)
        self.stats_fraction, self.quad_fraction = stats_fraction, quad_fraction
        self.quad_min_cases = quad_min_cases
        self.gamma_bounds = gamma_bounds
        self._damping_bounds = damping_bounds  # None until the first batch sets the default
        if approx == "tridiag" and not any(b.chainable for b in blocks):
            raise ValueError("approx='tridiag': expected nn.Linear or nn.Conv2d layers to chain, "
                             "the model has none")
        self._registration = {id(b): i for i, b in enumerate(blocks)}
        self._ordered = False
        self._arrange(blocks)
        self._replicas.broadcast_(self._layout.trainable())  # the same start on every rank
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._stats = FactorStatistics(ema_max)
        self._lambda = damping
        self._gamma = None if damping is None else math.sqrt(damping + weight_decay)
        self._delta0: Tensor | None = None
        self._inverse: list[kronlin.LinearOperator | None] | None = None  # per unit, where applied
        self._k = 0
        self._rejected = 0
        self._seed = self._replicas.agree(
            int(torch.randint(0, 2**62, ())) if seed is None else int(seed))
        self._generator: torch.Generator | None = None
        self._passes = PassRecorder(model, [b.module if b.recorded else None for b in blocks],
                                    loss_fn, self._layout.trainable()[0])
        self._pass_autocast: tuple[str, torch.dtype] | None = None
        self.last_step: dict[str, Any] | None = None
        """The diagnostics of the last step (``None`` before the first)."""
        self._constructed = True

    # -- public API -------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """The number of iterations done, ``k`` (steps rejected for non-finite values excluded)."""
        return self._k

    @property
    def traffic(self) -> Traffic:
        """The bytes this rank's collectives moved, by kind (all zero in one process)."""
        return self._replicas.traffic

    def step(self, *args: Tensor | Callable[[], Any],  # type: ignore[override]
             closure: Callable[[], Any] | None = None) -> Any:
        """One K-FAC iteration, in one of three forms that give the same iteration.

        - ``opt.step(inputs, targets)``: K-FAC runs the forward and backward passes itself
          (``.grad`` is set to the loss's gradient);
        - ``opt.step()``, after ``loss = loss_fn(model(x), y); loss.backward()`` with the very
          ``model`` and ``loss_fn`` given to ``KFAC`` (hooks record the forward pass; the
          gradient is ``.grad``; several forward and backward passes since the last step are
          micro-batches of one batch, each loss weighted by its share of the union batch's);
        - ``opt.step(closure)``: ``closure()`` zeroes the gradients, runs those passes and
          returns the loss, as for ``torch.optim.LBFGS``.

        See :mod:`kronlin_nn.steps`, and the module docstring for the iteration.

        Args:
            *args: ``(inputs, targets)``: ``m`` cases, the first dimension being the batch,
                and their targets as ``loss_fn`` takes them; or ``(closure,)``; or nothing.
            closure: the closure, as a keyword.

        Returns:
            The diagnostics dict described in the class docstring (also :attr:`last_step`);
            with a closure, what the closure returned.

        Raises:
            ValueError: no recorded forward and backward pass for ``opt.step()``, a
                configuration changed in the param group that K-FAC cannot honour, or
                gradients that are not the recorded loss's.

        """
        if closure is None and len(args) == 1 and callable(args[0]):
            closure, args = args[0], ()
        if args and (closure is not None or len(args) != 2):
            raise TypeError("step: expected step(inputs, targets), step(closure) or step(), got "
                            f"{len(args)} positional argument(s)"
                            + (" and a closure" if closure is not None else ""))
        check_param_group(self.param_groups[0], self._momentum_kind)
        check_model(self.model)  # e.g. model.compile() after construction
        device = self._layout.trainable()[0].device.type
        ambient = autocast_state(device)
        returned = None
        if closure is not None:
            with torch.enable_grad():
                returned = closure()
        try:  # whatever happens, the recorded passes are consumed
            self.last_step = self._step_on(args, ambient)
        finally:
            self._passes.clear()
            self._replicas.forget_passes()
        return returned if closure is not None else self.last_step

    def _step_on(self, args: tuple, ambient: tuple[str, torch.dtype] | None) -> dict[str, Any]:
        """The iteration on the batch of form (a) (``args``) or of the recorded passes."""
        device = self._layout.trainable()[0].device.type
        if args:
            # every rank's shard size first: this rank's part of S₁ decides the graph's reuse
            self._shards = self._replicas.shards(args[0].shape[0])
            with own_passes():
                data = self._own_batch(*args, ambient)
        else:
            found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step
            # an overflow on any rank skips the step on every rank
            if found_inf is not None and self._replicas.max(float(found_inf)) > 0:
                return self._skipped()
            grad_scale = getattr(self, "grad_scale", None)
            data = user_batch(self._passes, self._dist, self._layout.trainable(), grad_scale,
                              unscaled=found_inf is not None and grad_scale is None)
            self._shards = self._replicas.shards(data.inputs.shape[0])
        with own_passes(), autocast_as(None, device):  # K-FAC's passes in the parameters' dtype
            return self._iterate(data)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients, and forget the forward passes whose gradients they were.

        As ``torch.optim.Optimizer.zero_grad``; the recorded passes not yet backpropagated stay.
        """
        super().zero_grad(set_to_none)
        self._passes.discard_backpropagated()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused after construction: every trainable parameter of the model is in the group.

        Raises:
            ValueError: always, once the optimizer is constructed.

        """
        if getattr(self, "_constructed", False):
            raise ValueError(
                "add_param_group: KFAC has one parameter group holding every trainable parameter "
                "of its model (each gets a curvature block) and no per-group hyperparameters; "
                "for parameters of another module, give KFAC a model containing it, or use "
                "another optimizer for them"
            )
        super().add_param_group(param_group)

    # -- the three step forms ------------------------------------------------------------------
    def _own_batch(self, inputs: Tensor, targets: Tensor,
                   autocast: tuple[str, torch.dtype] | None) -> Batch:
        """Form (a): the forward and backward passes on ``(inputs, targets)``, run here."""
        if self._passes.backpropagated():
            raise ValueError(
                "opt.step(inputs, targets) runs its own forward and backward passes, but a "
                "forward pass of yours was backpropagated since the last step: call opt.step() "
                "to take that one, or opt.zero_grad() to discard it"
            )
        n1 = self._shards.count(self._sizes(self._shards.total)[0], "stats_fraction")
        z, calls = self._forward(inputs)
        # without autocast, S₁ = S' can reuse this pass's graph for the extra backward
        graph = autocast is None and n1 == inputs.shape[0]
        loss, grads = self._gradient(z, targets, retain_graph=graph)
        return Batch(inputs, targets, z, loss, grads, calls=calls, graph=autocast is None,
                     autocast=autocast)

    def _skipped(self) -> dict[str, Any]:
        """The diagnostics of a step a ``GradScaler`` skipped (its scaled gradients overflowed)."""
        return {"loss": math.nan, "lambda": self._lambda, "gamma": self._gamma, "alpha": math.nan,
                "mu": math.nan, "rho": math.nan, "refreshed": False, "accepted": False}

    def _sizes(self, m: int) -> tuple[int, int]:
        """``(n₁, n₂)``: the sizes of :math:`S_1` (statistics) and :math:`S_2` (quadratic model).

        Of a batch of ``m`` cases: in a process group, the union's.
        """
        n1 = min(m, max(1, math.ceil(self.stats_fraction * m)))
        n2 = min(m, max(math.ceil(self.quad_fraction * m), self.quad_min_cases))
        return n1, n2

    def _iterate(self, data: Batch) -> dict[str, Any]:
        """The iteration on a batch, whichever form of :meth:`step` gathered it."""
        group = self.param_groups[0]
        lr, momentum = group["lr"], group["momentum"]
        inputs, targets, z = data.inputs, data.targets, data.z
        self._pass_autocast = data.autocast
        # the union of the ranks' shards is the batch (one process: the shard itself); this
        # rank's first n1 and n2 cases are its part of the union's sub-batches S₁ and S₂
        shards = self._shards
        m, M = shards.local, shards.total
        N1, N2 = self._sizes(M)
        n1, n2 = shards.count(N1, "stats_fraction"), shards.count(N2, "quad_fraction")
        kappa = self._dist.scale(M, z[:1].numel()) * M
        unit = kappa if self.units == "case" else 1.0  # loss units per unit of λ and η
        eta = group["weight_decay"] * unit
        # S₁ gets a forward pass of its own, so the extra backward costs τ₁ of a full one
        z1, calls1 = (z, data.calls) if n1 == m and data.graph else self._forward(inputs[:n1])
        calls = self._batch_calls(data, n2)
        dtype = self._layout.trainable()[0].dtype
        w1, w2, self._shares = self._weights(targets, (n1, N1), (n2, N2), dtype)
        g = self._extra_backward(z1, calls1, targets[:n1], n1, w1.outputs, shards.positions(N1),
                                 N1)
        batch = self._factor_estimates(calls1, g, n1, w1.inputs)
        if n1 != N1:  # this rank's share of the union's per-case averages
            torch._foreach_mul_([t for ts in batch.values() for t in ts], n1 / N1)
        stats_norm = _total_norm([t for ts in batch.values() for t in ts],
                                 self._layout.trainable()[0])
        h, theta, grad_h, stats_norm, others = self._pack_gradient(data, eta, self._shares,
                                                                    stats_norm)

        # one host sync for all the finiteness checks
        audits = [] if data.audit is None else [data.audit.to(h.dtype), *others]
        checks = torch.stack([h, grad_h.sum(), stats_norm, *audits])
        h_value, grad_sum, stats_sum, *audit = checks.tolist()
        if audit:
            data.verify(audit[0])
            _check_other_ranks(audit[1:])
        if not (math.isfinite(h_value) and math.isfinite(grad_sum)):
            return self._reject(h_value)
        self._k += 1
        k = self._k
        if math.isfinite(stats_sum):
            self._stats.update(**batch)
        else:
            warnings.warn(f"step {k}: non-finite curvature statistics; batch skipped", KFACWarning,
                          stacklevel=5)
        if self._damping_bounds is None or self._lambda is None:  # the first batch's, once
            batch = self._union_groups(batch, "factors")
            top = curvature_scale(*self._kronecker_pairs(batch, kappa))  # in the loss's units
        if self._damping_bounds is None:
            self._damping_bounds = (LAMBDA_FLOOR * torch.finfo(grad_h.dtype).eps * top / unit,
                                    math.inf)
        if self._lambda is None:
            self._lambda = self._search_damping(top, unit, batch, kappa, grad_h, theta, calls,
                                                inputs, targets, z, n2, h_value, eta,
                                                lr if self._fixed_lr else None, w2) / unit
            self._gamma = math.sqrt(self._lambda + group["weight_decay"])

        scheduled = k % self.inverse_every == 0 or k <= 3  # the refreshes of T₃ and steps 1–3
        refreshed = scheduled or self._inverse is None
        tied = _clamp(math.sqrt(self._lambda + group["weight_decay"]),
                      self._gamma_bounds(group["weight_decay"]))
        if self.adapt_damping and self.gamma_rule == "tied":
            # λ moved a γ-search step (ω₂) away from the inverse's γ: refresh now, not at T₃
            refreshed = refreshed or abs(math.log(tied / self._gamma)) > TIED_DRIFT
        candidates = [self._gamma]
        if self.adapt_damping and self.gamma_rule == "tied" and refreshed:
            candidates = [tied]
        elif self.adapt_damping and k % self.gamma_every == 0:
            candidates = gamma_candidates(self._gamma, gamma_decay(self.gamma_every),
                                          self._gamma_bounds(group["weight_decay"]))
        ops, candidates = self._operators(candidates, kappa, refreshed, math.sqrt(unit))
        if ops is None:
            refreshed = False
            ops, candidates = [self._inverse], [self._gamma]
        deltas = self._proposals(ops, grad_h)

        lam = self._lambda
        # lr: the fixed α, or a multiplier of the update the quadratic model chooses
        fixed = (lr if self._fixed_lr else None,
                 0.0 if momentum is False else (None if momentum is True else momentum))
        delta0 = self._delta0 if fixed[1] != 0.0 else None
        if not self._fixed_lr or momentum is True or self.adapt_damping:
            best = self._quadratic_model(deltas, delta0, grad_h, calls, inputs[:n2], z,
                                         lam * unit + eta, eta, fixed,
                                         1.0 if self._fixed_lr else lr, w2)
        else:  # plain K-FAC steps: no quadratic model needed
            best = (0, fixed[0], fixed[1], math.nan, math.nan)
            if not math.isfinite(float(deltas[0].sum())):
                best = None
        if best is None:
            return self._reject(h_value, counted=True, refreshed=refreshed)
        j, alpha, mu, model_change, predicted_rho = best
        delta = deltas[j].mul_(alpha)
        if delta0 is not None and mu != 0.0:
            delta.add_(delta0, alpha=mu)
        if refreshed:
            self._inverse = ops[j]
        self._gamma = candidates[j]

        rho, new_theta = math.nan, None
        # ρ every T₁ steps, and on the early refreshes of the tied rule: a new proposal under a
        # smaller γ is where the 2×2 model overshoots (μ ≈ 2–3 measured), so it is checked first
        early_refresh = refreshed and not scheduled
        accepted = True
        if self.adapt_damping and (k % self.damping_every == 0 or early_refresh
                                   or self._implausible(model_change, h_value)):
            new_theta = theta + delta
            h_new = self._objective(inputs, targets, new_theta, eta)
            rho = reduction_ratio(h_new, h_value, predicted_rho)
            self._update_lambda(rho)
            if not math.isfinite(h_new):
                return self._reject(h_value, counted=True, refreshed=refreshed, rho=rho,
                                    raise_lambda=False)
            # an uphill update is not applied (λ already grew by the LM rule), and the next
            # proposal would be rebuilt from the same δ₀: it starts afresh
            accepted = not (self.reject_uphill and h_new > h_value)
        if accepted:
            self._apply(delta, new_theta)
            self._delta0 = delta
        else:
            self._rejected, self._delta0 = self._rejected + 1, None
        return {"loss": h_value, "lambda": lam, "gamma": candidates[j], "alpha": float(alpha),
                "mu": float(mu), "rho": rho, "refreshed": refreshed, "accepted": accepted}

    # -- the blocks ---------------------------------------------------------------------------
    def _arrange(self, blocks: Sequence[CurvatureBlock]) -> None:
        """Adopt ``blocks`` as the order of the flat vector, and what follows from it.

        Each block's statistics are at fixed positions of the statistics' groups
        (``self._slots``); the recorder records the modules of the blocks that need it.
        """
        self._blocks = list(blocks)
        self._layers = [b.module for b in self._blocks]
        self._layout = ParameterLayout(self._blocks)
        self._recorder = Recorder([b.module if b.recorded else None for b in self._blocks])
        # the user's passes are recorded in registration order: their layer → block position
        self._position = {self._registration[id(b)]: i for i, b in enumerate(self._blocks)}
        counts: dict[str, int] = {}
        self._slots = []
        for b in self._blocks:
            self._slots.append({name: counts.get(name, 0) for name in b.statistics})
            for name in b.statistics:
                counts[name] = counts.get(name, 0) + 1
        self._groups = ("A", "G", *sorted(set(counts) - {"A", "G"}))
        self._chain = (sum(1 for b in self._blocks if b.chainable)
                       if self.approx == "tridiag" else 0)
        self._cached_tangents = all(b.cached_tangents for b in self._blocks)
        # the units of the inverse refresh (known with the forward order, which puts a chain
        # first), and which rank refreshes and applies each
        self._units = (inverse_units(self._blocks, self._layout.offsets, self._slots, self._chain)
                       if self._ordered else [])
        self._assignment = self._replicas.assignment([u.cost for u in self._units],
                                                     self.grad_worker_fraction)

    def _kronecker_pairs(self, batch: dict[str, list[Tensor]],
                         kappa: float) -> tuple[list[Tensor], list[Tensor]]:
        """Every block's curvature as a Kronecker pair, ``([L…], [R…])`` (for scale estimates)."""
        pairs = [pair for b, stats in zip(self._blocks, self._block_stats(batch), strict=True)
                 if (pair := b.kronecker_pair(stats, kappa)) is not None]
        return [a for a, _ in pairs], [g for _, g in pairs]

    def _block_stats(self, groups: dict[str, list[Tensor]]) -> list[list[Tensor]]:
        """Per block, its statistics from the named groups (a batch's or the averages)."""
        return [[groups[name][slot[name]] for name in b.statistics]
                for b, slot in zip(self._blocks, self._slots, strict=True)]

    def _union_groups(self, groups: dict[str, list[Tensor]], kind: str) -> dict[str, list[Tensor]]:
        """Named groups of statistics summed over the ranks (the groups themselves in one process)."""
        tensors = [t for ts in groups.values() for t in ts]
        flags = [name in SYMMETRIC_GROUPS for name, ts in groups.items() for _ in ts]
        summed = iter(self._replicas.sum_statistics(tensors, flags, kind))
        return {name: [next(summed) for _ in ts] for name, ts in groups.items()}

    # -- the steps of an iteration --------------------------------------------------------
    def _forward(self, inputs: Tensor) -> tuple[Tensor, list[LayerIO]]:
        """``model(inputs)`` with its recorded calls, in block order (checked by the blocks)."""
        z, calls = self._recorder.forward(self.model, inputs)
        if not self._ordered:
            self._adopt_forward_order(calls)
        calls = self._in_layer_order(calls)
        self._dist.check_output(z)
        for block, block_calls in zip(self._blocks, group_calls(calls, len(self._blocks)),
                                      strict=True):
            block.check(block_calls)
        return z, calls

    def _adopt_forward_order(self, calls: Sequence[LayerIO]) -> None:
        """Order the blocks as the forward pass first calls them.

        For ``tridiag`` the chain blocks (``nn.Linear``, ``nn.Conv2d``) come first, in forward
        order, then the others: the chain's part of the flat vector is contiguous.

        Raises:
            ValueError: for ``tridiag``, chain layers that are not a chain, that are called more
                than once, or whose neighbours have different numbers of locations per case.

        """
        first: dict[int, int] = {}
        for pos, c in enumerate(calls):
            first.setdefault(c.layer, pos)
        # unrecorded blocks (first-order ones) last, in registration order
        order = sorted(range(len(self._blocks)), key=lambda i: (i not in first, first.get(i, i)))
        if self.approx == "tridiag":
            order = ([i for i in order if self._blocks[i].chainable]
                     + [i for i in order if not self._blocks[i].chainable])
            check_tridiag_chain(self._blocks, [c for c in calls if self._blocks[c.layer].chainable])
        self._ordered = True
        self._arrange([self._blocks[i] for i in order])
        position = {old: new for new, old in enumerate(order)}
        for c in calls:
            c.layer = position[c.layer]

    def _in_layer_order(self, calls: list[LayerIO]) -> list[LayerIO]:
        chain = [c.layer for c in calls if c.layer < self._chain]
        if chain != sorted(chain):
            raise ValueError(
                f"model: the forward order of the chain layers changed to {chain}; "
                f"approx='tridiag' needs a fixed chain"
            )
        order = [c.layer for c in calls]
        if order != sorted(order):
            calls = sorted(calls, key=lambda c: c.layer)
        return calls

    def _gradient(self, z: Tensor, targets: Tensor, retain_graph: bool) -> tuple[Tensor, list[Tensor]]:
        """``(loss, grads)``: ``loss_fn(z, targets)`` (0-d, detached) and its gradient.

        The gradient is also set as the parameters' ``.grad`` (form (a) of :meth:`step`).
        ``retain_graph`` keeps the graph for the extra backward pass.
        """
        loss = self.loss_fn(z, targets)
        params = self._layout.trainable()
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph)
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        return loss.detach(), list(grads)

    def _batch_calls(self, data: Batch, n2: int) -> list[LayerIO]:
        """The layer records of the batch's pass(es), in block order and the parameters' dtype.

        Form (a)'s records as they are (or, from an autocast pass, the first ``n₂`` cases
        cast); the user's passes' records of the first ``n₂`` cases of their union, checked
        by the blocks.
        """
        dtype = self._layout.trainable()[0].dtype
        if data.passes is None:
            if data.autocast is None:
                return data.calls
            return merged_calls([Pass(data.inputs, data.calls)], n2, dtype)
        calls = merged_calls(data.passes, n2, dtype)
        for c in calls:
            c.layer = self._position[c.layer]
        calls = self._in_layer_order(calls)
        for block, block_calls in zip(self._blocks, group_calls(calls, len(self._blocks)),
                                      strict=True):
            block.check(block_calls)
        return calls

    def _weights(self, targets: Tensor, first: tuple[int, int], quad: tuple[int, int],
                 dtype: torch.dtype) -> tuple[SubBatchWeights, Tensor | None, list[float]]:
        """``(w₁, w₂, shares)``: the loss's weights of this rank's cases of S₁ and S₂, and shares.

        ``first``, ``quad``: ``(n, N)``, this rank's cases of S₁ (of S₂) and the union's.
        ``w₁`` is :meth:`~kronlin_nn.losses.PredictiveDistribution.weights` of S₁, ``w₂`` the
        output weights of S₂, normalized over the union's sub-batches. ``shares``: every
        rank's share of the union batch's loss, its part of what the reduction divides by
        (:math:`m_r/M` for ``"mean"``, with case weights its sum of :math:`d` over the union's;
        1 for ``"sum"``). With case weights in a process group, one all-reduce of a table of
        every rank's sums (each column sum exact, and the same on every rank).
        """
        (n1, N1), (n2, N2) = first, quad
        shards, size = self._shards, self._replicas.size
        if size == 1:
            return (self._dist.weights(targets, n1, dtype),
                    self._dist.weights(targets, n2, dtype).outputs, [1.0])
        mean = self._dist.reduction == "mean"
        sums = self._dist.weight_sums(targets, (n1, n2), dtype)
        if sums is None:
            shares = [m / shards.total if mean else 1.0 for m in shards.sizes]
            return (self._dist.weights(targets, n1, dtype),
                    self._dist.weights(targets, n2, dtype).outputs, shares)
        table = sums.new_zeros(size, sums.shape[0])
        table[shards.rank] = sums
        (table,) = self._replicas.sum_shares([table], 1.0, "scalars")
        union = table.sum(0)
        shares = (table[:, 3] / union[3]).tolist() if mean else [1.0] * size
        c_sum, d_sum = union[2], union[3]
        return (self._dist.weights(targets, n1, dtype, (N1, union[0], c_sum, d_sum)),
                self._dist.weights(targets, n2, dtype, (N2, union[1], c_sum, d_sum)).outputs,
                shares)

    def _pack_gradient(self, data: Batch, eta: float, shares: Sequence[float],
                       stats_norm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
        r"""``(h, θ, ∇h, stats, others)``: the union's objective, θ, its gradient; the checks.

        :math:`h = \text{loss} + \tfrac\eta2\|\theta\|^2`, :math:`\nabla h = \nabla\text{loss} + \eta\theta`
        (0-d, and flat vectors), the loss the union batch's. In a process group each rank's loss
        and gradient count with its share of the union's (``shares[rank]``), summed in one
        all-reduce with ``stats_norm`` (the statistics' finiteness check, returned summed) and,
        for the user's passes, whether each rank's loss weights failed their check (``others``:
        how many other ranks' did; empty in one process and for ``opt.step(inputs, targets)``).
        Weight decay is added once, after the sum. The user's backward through a
        ``DistributedDataParallel`` model has averaged ``.grad`` over the ranks already: it is
        rescaled to the union's (:math:`W s` for the ranks' common share :math:`s`), not
        reduced again.
        """
        theta = self._layout.flat_parameters()
        grad = self._layout.pack(self._layout.regroup(data.grads))
        loss, others = data.loss, []
        replicas = self._replicas
        if replicas.size > 1:
            share = shares[replicas.rank]
            averaged = data.passes is not None and replicas.averaged(shares)
            if share == 0.0:  # every case of the shard weighs nothing: its mean was 0/0
                loss, grad = torch.zeros_like(loss), torch.zeros_like(grad)
            failed = ([] if data.audit is None else
                      [(data.audit > WEIGHT_RTOL).to(grad.dtype).reshape(())])
            shared = [loss.to(grad.dtype), stats_norm.to(grad.dtype)]
            loss, stats_norm, *rest = replicas.sum_shares(
                shared if averaged else [*shared, grad], share, "gradient", unweighted=failed)
            if averaged:
                if replicas.size * share != 1.0:
                    grad.mul_(replicas.size * share)
            else:
                grad = rest.pop(0)
            others = [rest[0] - failed[0]] if failed else []
        grad_h = grad.add_(theta, alpha=eta)
        return loss + 0.5 * eta * (theta @ theta), theta, grad_h, stats_norm, others

    def _extra_backward(self, z1: Tensor, calls: Sequence[LayerIO], targets: Tensor,
                        n1: int, scale: Tensor | None, positions: Sequence[int],
                        N1: int) -> list[Tensor]:
        """The output gradients of this rank's ``S_1`` cases for sampled (or data) targets.

        ``scale``: the loss's weights of the vectors (:attr:`SubBatchWeights.outputs
        <kronlin_nn.losses.SubBatchWeights>`). ``positions`` are the cases' places among the
        union's ``N1`` cases of ``S_1``: the union's sample is drawn, and each case gets its
        row of it.
        """
        z1 = z1.reshape(n1, -1)
        y = flat_targets(targets, n1) if self.fisher == "empirical" else None
        vectors = output_vectors(self._dist, z1.detach(), y, self.fisher, self._rng(z1.device),
                                 scale=scale, rows=(positions, N1))
        return output_gradients(z1, [c.output() for c in calls], vectors)

    def _factor_estimates(self, calls: Sequence[LayerIO], g: Sequence[Tensor],
                          n1: int, weights: Tensor | None = None) -> dict[str, list[Tensor]]:
        """The batch's statistics from ``S_1``, by group; for ``tridiag`` the cross moments too.

        ``weights``: the loss's per-case weights of the input-side expectations, or ``None``.
        """
        batch: dict[str, list[Tensor]] = {name: [] for name in self._groups}
        grads, chain_rows = iter(g), []
        for i, (block, block_calls) in enumerate(zip(self._blocks,
                                                     group_calls(calls, len(self._blocks)),
                                                     strict=True)):
            block_grads = [next(grads) for _ in block_calls]
            if i < self._chain:
                chain_rows.append(block.rows(block_calls, block_grads, weights))
                stats = KroneckerBlock.row_statistics(*chain_rows[-1], n1)
            else:
                stats = block.batch_statistics(block_calls, block_grads, n1, weights)
            for name, t in zip(block.statistics, stats, strict=True):
                batch[name].append(t)
        if self.approx == "tridiag":
            batch["A_cross"], batch["G_cross"] = cross_factors(
                [a for a, _ in chain_rows], [gr for _, gr in chain_rows], n1)
        return batch

    def _implausible(self, model_change: float, h_value: float) -> bool:
        r"""Whether, with ``reject_uphill``, the quadratic model promises more than :math:`h` holds.

        Every supported loss is :math:`\ge 0`, so :math:`M(\delta) - M(0) < -h(\theta)` is a
        model gone wrong: typically near zero loss on separable classes, where the exact Fisher
        vanishes along the directions that separate them and only λ bounds the step (a tanh
        classifier of scikit-learn's digits went from 2e-4 to 28 in ten such steps). Such a step
        gets the ρ check of a :math:`T_1` step, and is rejected if it goes uphill.
        """
        return self.reject_uphill and -model_change > h_value

    def _proposals(self, ops: Sequence[Sequence[kronlin.LinearOperator | None]],
                   grad_h: Tensor) -> list[Tensor]:
        r""":math:`\Delta_\gamma = -\tilde F_\gamma^{-1}\nabla h` for each candidate's inverse.

        ``ops[j][u]`` is candidate ``j``'s inverse of unit ``u``, held where it is applied; each
        unit is applied there to its segment of ∇h, and the parts are shared.
        """
        local = []
        for u, unit in enumerate(self._units):
            if not self._assignment.applies(u):
                local.append(None)
                continue
            g = grad_h[unit.start: unit.stop]
            local.append(-torch.stack([row[u] @ g for row in ops]))
        sizes = [unit.size for unit in self._units]
        like = grad_h.expand(len(ops), -1)
        return list(self._replicas.share_directions(local, sizes, self._assignment, like))

    def _operators(self, candidates: list[float], kappa: float, refresh: bool,
                   gamma_scale: float = 1.0):
        """The damped inverse for each candidate γ: ``(ops, kept γ)``, ``ops[j]`` one per unit.

        Candidates whose damped curvature cannot be factored are dropped; ``ops`` is ``None``
        if the refresh failed. ``gamma_scale`` converts γ to the loss's units (√κ for
        ``units="case"``).
        """
        if not refresh:
            return [self._inverse], [self._gamma]
        declared = {gamma * gamma_scale: gamma for gamma in candidates}
        ops, kept = self._damped_inverses(list(declared), kappa)
        return ops, None if kept is None else [declared[gamma] for gamma in kept]

    def _damped_inverses(self, candidates: list[float], kappa: float):
        """:meth:`_operators` for γ in the loss's units.

        Each unit is refreshed on its owner rank from the union's statistics; a candidate is
        kept if every unit could factor it (the flags reduced over the ranks), and the kept
        inverses go to the ranks that apply them.
        """
        units, assignment = self._units, self._assignment
        stats = self._replicas.reduce_statistics(
            [[self._stats.groups[name][i] for name, i in u.keys] for u in units],
            [u.symmetric_statistics() for u in units], assignment)
        p = self._layout.trainable()[0]
        gammas = torch.tensor(candidates, dtype=p.dtype, device=p.device)
        found = [None if st is None else u.candidates(st, kappa, gammas, self.pi)
                 for u, st in zip(units, stats, strict=True)]
        ok = torch.ones(len(candidates), dtype=torch.bool, device=p.device)
        for f in found:
            if f is not None:
                ok = ok & f.ok.to(ok.device)
        kept = [j for j, good in enumerate(self._replicas.all_ok(ok).tolist()) if good]
        if not kept:
            err = (f"no damping in gamma={candidates} makes every block's damped curvature finite "
                   f"and positive definite")
            if self._inverse is None:
                raise FactorError(
                    f"step {self._k}: cannot build the first K-FAC inverse ({err}); give a "
                    f"larger damping"
                )
            warnings.warn(f"step {self._k}: inverse refresh skipped, keeping the last good "
                          f"inverses ({err})", KFACWarning, stacklevel=7)
            return None, None
        ops = [[None if f is None else f.build(j) for f in found] for j in kept]
        return self._replicas.share_inverses(ops, units, assignment), [candidates[j] for j in kept]

    def _candidates(self, blocks: Sequence[CurvatureBlock], stats: Sequence[Sequence[Tensor]],
                    candidates: list[float], kappa: float) -> list:
        """Each block's damped inverses for all candidates (statistics checked finite first)."""
        tensors = [t for ts in stats for t in ts]
        if tensors:
            check_finite(tensors)
        p = self._layout.trainable()[0]
        gammas = torch.tensor(candidates, dtype=p.dtype, device=p.device)
        return [b.inverses(st, kappa, gammas, self.pi) for b, st in zip(blocks, stats, strict=True)]

    def _quadratic_model(self, deltas, delta0, grad_h, calls, inputs2, z, damping, eta, fixed,
                         scale=1.0, weights=None):
        """Pick the candidate and ``(α, μ)`` minimizing ``M``; ``None`` if non-finite.

        Returns ``(index, α, μ, M(δ)−M(0), M_ρ(δ)−M_ρ(0))`` where ``M_ρ`` drops λ unless
        ``rho_includes_damping``; the chosen coefficients are the minimizer's times ``scale``
        (the lr multiplier), and the model changes are at them.
        """
        models = self._candidate_models(deltas, delta0, grad_h, calls, inputs2, z,
                                        [damping] * len(deltas), eta, fixed, scale, weights)
        if models is None:
            return None
        j = min(range(len(models)), key=lambda i: models[i][2])
        best = (j, *models[j])
        if not all(math.isfinite(v) for v in best[1:3]):
            return None
        return best

    def _candidate_models(self, deltas, delta0, grad_h, calls, inputs2, z, dampings, eta,
                          fixed, scale=1.0, weights=None):
        """Per candidate ``Δ_j`` with damping ``λ_j + η``: ``(α, μ, M(δ)−M(0), M_ρ(δ)−M_ρ(0))``.

        All candidates share one batched pass of forward-mode products; ``None`` if the
        products are not finite. The coefficients the model chooses (those ``fixed`` leaves
        ``None``) are ``scale`` times the minimizer's.
        """
        vectors = deltas + ([delta0] if delta0 is not None else [])
        K = len(vectors)
        V = torch.stack(vectors)
        JF = self._fisher_gram(V, calls, inputs2, z, weights)
        # P = [uᵢᵀuⱼ | uᵢᵀ∇h]: products of V with itself and with ∇h, without stacking them
        P = torch.cat([V @ V.T, (V @ grad_h)[:, None]], dim=1)
        host = torch.cat([JF.reshape(-1), P.reshape(-1)]).double().cpu().numpy()
        JF, P = host[: K * K].reshape(K, K), host[K * K:].reshape(K, K + 1)
        if not np.isfinite(host).all():
            return None
        models = []
        for j, damping in enumerate(dampings):
            idx = [j, K - 1] if delta0 is not None else [j]
            A, A_rho, c = np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(2)
            sub = np.ix_(idx, idx)
            r = len(idx)
            rho_damping = damping if self.rho_includes_damping else eta
            A[:r, :r] = JF[sub] + damping * P[sub]
            A_rho[:r, :r] = JF[sub] + rho_damping * P[sub]
            c[:r] = P[idx, K]
            held = (fixed[0], 0.0 if delta0 is None else fixed[1])
            x = solve_coefficients(A, c, held, gram_accuracy(V.dtype, V.shape[1]))
            if scale != 1.0:  # the lr multiplier scales what the model chose, not fixed values
                x = np.where([f is None for f in held], scale * x, x)
            models.append((x[0], x[1], model_change(A, c, x), model_change(A_rho, c, x)))
        return models

    def _search_damping(self, top, unit, batch, kappa, grad_h, theta, calls, inputs, targets,
                        z, n2, h_value, eta, lr, weights=None) -> float:
        r"""λ₀ in the loss's units, by a search on the first batch.

        Each λ of :func:`~kronlin_nn.damping.damping_grid` gets its block-diagonal proposal
        (γ = √(λ + η)), its α from the quadratic model (one batched forward-mode pass for all
        of them) and its ρ from :math:`h(\theta + \alpha\Delta)` on the batch; λ₀ is where the
        Levenberg–Marquardt rule would be at rest. Cost, once: a Cholesky inverse of every
        damped factor and one forward pass per candidate. ``approx="tridiag"`` searches with
        the block-diagonal proposals too.
        """
        bounds = tuple(unit * b for b in self._damping_bounds)
        lams = list(dict.fromkeys(_clamp(lam, bounds) for lam in damping_grid(top)))
        gammas = [math.sqrt(lam + eta) for lam in lams]
        try:
            ops, kept = blockdiag_candidates(
                self._candidates(self._blocks, self._block_stats(batch), gammas, kappa), gammas)
        except FactorError:
            return lams[0]
        lams = [lam for lam, gamma in zip(lams, gammas, strict=True) if gamma in kept]
        deltas = [-(op @ grad_h) for op in ops]  # every rank has the union's first batch
        models = self._candidate_models(deltas, None, grad_h, calls, inputs[:n2], z,
                                        [lam + eta for lam in lams], eta, (lr, 0.0),
                                        weights=weights)
        if models is None:
            return lams[0]
        rhos, decreases = [], []
        for d, (alpha, _, _, predicted) in zip(deltas, models, strict=True):
            h_new = (self._objective(inputs, targets, theta + alpha * d, eta)
                     if math.isfinite(alpha) else math.nan)
            rhos.append(reduction_ratio(h_new, h_value, predicted))
            decreases.append(h_value - h_new)
        return lm_rest_point(lams, rhos, decreases)

    def _fisher_gram(self, V: Tensor, calls: Sequence[LayerIO], inputs2: Tensor, z: Tensor,
                     weights: Tensor | None = None) -> Tensor:
        r""":math:`[u_k^\top F u_l]` for the rows ``u_k`` of ``V``, F on the union's ``S₂``.

        Each rank sums over its ``n₂`` cases of ``S₂``; one all-reduce of the ``K²`` entries.
        ``weights``: the loss's weights of the output tangents (:attr:`SubBatchWeights.outputs
        <kronlin_nn.losses.SubBatchWeights>` of the ``n₂`` cases), or ``None``.
        """
        n2 = inputs2.shape[0]
        if self._cached_tangents:
            calls = [c.first_rows(n2) for c in calls]
            Jt = cached_output_jvps(self.model, self._blocks, calls, inputs2,
                                    self._layout.unstack(V))
        else:  # a block without a cached tangent forward: torch.func for the whole model
            Jt = output_jvps(self.model, inputs2, self._layout.named_tensors(V, self._names))
        if weights is not None:
            Jt = Jt * weights
        (gram,) = self._replicas.sum_shares(
            [self._dist.fisher_gram(z[:n2].detach().reshape(n2, -1).to(V.dtype), Jt)], 1.0,
            "scalars")
        # F of the objective on the union S': s Σ_{n∈S'} ≈ s (M/|S₂|) Σ_{n∈S₂}
        M = self._shards.total
        return gram * (self._dist.scale(M, z[:1].numel()) * M / self._sizes(M)[1])

    def _objective(self, inputs: Tensor, targets: Tensor, theta: Tensor, eta: float) -> float:
        """:math:`h` at the flat parameters ``theta`` on the union batch (one forward pass each).

        Under the autocast of the batch's pass, so that ρ compares values of one precision. In
        a process group each rank's loss counts with its share (:meth:`_weights`), one
        all-reduce.
        """
        with torch.no_grad(), autocast_as(self._pass_autocast, theta.device.type):
            params = self._layout.named_tensors(theta, self._names)
            z = functional_call(self.model, params, (inputs,))
            loss = self.loss_fn(z, targets)
        if self._replicas.size > 1:
            share = self._shares[self._replicas.rank]
            # a shard whose cases all weigh nothing adds nothing (its mean was 0/0)
            loss = loss.to(theta.dtype) if share else torch.zeros_like(theta[0])
            (loss,) = self._replicas.sum_shares([loss], share, "scalars")
        return float(loss + 0.5 * eta * (theta @ theta))

    def _apply(self, delta: Tensor, new_theta: Tensor | None) -> None:
        """``θ ← θ + δ`` (copying ``new_theta`` when it was already computed for ρ)."""
        if new_theta is None:
            self._layout.add_(delta)
        else:
            self._layout.copy_(new_theta)

    def _update_lambda(self, rho: float) -> None:
        """λ by the Levenberg–Marquardt rule, compounding over up to ``lm_streak`` moves."""
        self._lambda, self._lm_streak = lm_update(
            self._lambda, rho, lm_decay(self.damping_every),
            self._damping_bounds or (0.0, math.inf), streak=self._lm_streak,
            max_streak=self.lm_streak)

    def _gamma_bounds(self, eta: float) -> tuple[float, float]:
        r"""``gamma_bounds``, default :math:`(\sqrt\eta, \infty)`, in the units of ``units``."""
        return (math.sqrt(eta), math.inf) if self.gamma_bounds is None else self.gamma_bounds

    def _reject(self, h_value: float, *, counted: bool = False, refreshed: bool = False,
                rho: float = math.nan, raise_lambda: bool = True) -> dict[str, Any]:
        """Leave θ unchanged, raise λ, and report a rejected step."""
        self._rejected += 1
        lam = self._lambda
        if raise_lambda and lam is not None:
            self._update_lambda(math.nan)
        warnings.warn(
            f"step {self._k + (not counted)}: non-finite loss, gradient or update; step rejected, "
            f"lambda raised to {self._lambda}", KFACWarning, stacklevel=6)
        return {"loss": h_value, "lambda": lam, "gamma": self._gamma, "alpha": math.nan,
                "mu": math.nan, "rho": rho, "refreshed": refreshed, "accepted": False}

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume on the same trajectory (tensors are copies).

        Statistics and their count, the current inverse (as each unit's tensors,
        :mod:`kronlin_nn.units`), λ, γ, δ₀, the iteration counters, the block order and kinds,
        the hyperparameters of the param group and the optimizer's RNG state.

        In data-parallel training this is a collective: call it on every rank (each gets the
        same state, the union's statistics and every unit's inverse), save it from rank 0. It
        resumes on any world size, one process included.
        """
        inverse = (None if self._inverse is None else
                   self._replicas.gather_inverses(self._inverse, self._units, self._assignment))
        statistics = {**self._stats.state_dict(),
                      **self._union_groups(self._stats.groups, "checkpoint")}
        return _cloned({
            "version": _STATE_VERSION,
            "approx": self.approx,
            "fixed_lr": self._fixed_lr,
            "block_order": [self._registration[id(b)] for b in self._blocks],
            "block_kinds": [b.kind for b in self._blocks],
            "ordered": self._ordered,
            "param_groups": [{key: g[key] for key in ("lr", "momentum", "weight_decay")}
                             for g in self.param_groups],
            "k": self._k,
            "rejected": self._rejected,
            "lambda": self._lambda,
            "lm_streak": self._lm_streak,
            "gamma": self._gamma,
            "damping_bounds": self._damping_bounds,
            "delta0": self._delta0,
            "statistics": statistics,
            "inverse": inverse,
            "seed": self._seed,
            "rng": None if self._generator is None else self._generator.get_state(),
            "rng_device": None if self._generator is None else str(self._generator.device),
        })

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a ``KFAC`` on the same model architecture.

        In data-parallel training, call it on every rank with the same state (saved on any
        world size): rank 0 takes the statistics as its share, the others start from zero
        shares, and each rank keeps the inverses it applies.

        Raises:
            ValueError: a state of another version or approximation, or for other layers
                (another number or kind of curvature blocks).

        """
        state = state_dict
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"state_dict: expected version {_STATE_VERSION}, got {state.get('version')!r}"
                + (" (saved before version 5 kept the inverse in another layout: resume from a "
                   "state saved by this version)" if state.get("version") in (3, 4) else ""))
        if state["approx"] != self.approx:
            raise ValueError(f"state_dict: saved for approx={state['approx']!r}, this optimizer "
                             f"has approx={self.approx!r}")
        if state["fixed_lr"] != self._fixed_lr:
            saved, mine = (("a fixed lr" if fixed else "lr=None (lr multiplies the chosen update)")
                           for fixed in (state["fixed_lr"], self._fixed_lr))
            raise ValueError(f"state_dict: saved by a KFAC with {saved}, this optimizer has {mine}")
        blocks = sorted(self._blocks, key=lambda b: self._registration[id(b)])
        order = state["block_order"]
        if sorted(order) != list(range(len(blocks))):
            raise ValueError(f"state_dict: saved for {len(order)} layers' curvature blocks, the "
                             f"model has {len(blocks)}")
        kinds = [blocks[i].kind for i in order]
        if kinds != state["block_kinds"]:
            raise ValueError(f"state_dict: saved for blocks of kinds {state['block_kinds']}, the "
                             f"model's are {kinds}")
        device = self._layout.trainable()[0].device
        self._ordered = state["ordered"]
        self._arrange([blocks[i] for i in order])
        for group, saved in zip(self.param_groups, state["param_groups"], strict=True):
            group.update(saved)
        self._k, self._rejected = state["k"], state["rejected"]
        self._lambda, self._gamma = state["lambda"], state["gamma"]
        self._lm_streak = state["lm_streak"]
        self._damping_bounds = state["damping_bounds"]
        self._delta0 = None if state["delta0"] is None else state["delta0"].to(device).clone()
        self._stats.load_state_dict(state["statistics"], device)
        self._replicas.keep_share_(self._stats.tensors())
        self._inverse = self._rebuild_inverse(_cloned(state["inverse"], device))
        self._seed = state["seed"]
        self._generator = None
        if state["rng"] is not None:
            if torch.device(state["rng_device"]).type == device.type:
                self._generator = torch.Generator(device=device)
                self._generator.set_state(state["rng"])
            else:  # CPU and CUDA generator states do not convert into each other
                warnings.warn(f"state_dict: RNG state saved on {state['rng_device']}, model on "
                              f"{device}; reseeding, so sampled targets will differ",
                              KFACWarning, stacklevel=2)

    def _rebuild_inverse(self, data: list | None) -> list[kronlin.LinearOperator | None] | None:
        """Each unit's inverse from its saved tensors, on the ranks that apply it."""
        if data is None:
            return None
        return [unit.operator(tensors) if self._assignment.applies(u) else None
                for u, (unit, tensors) in enumerate(zip(self._units, data, strict=True))]

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
        return self._generator


def _total_norm(tensors: Sequence[Tensor], like: Tensor) -> Tensor:
    """The sum of the tensors' 1-norms, 0-d (zero for none, in ``like``'s dtype and device)."""
    if not tensors:
        return like.new_zeros(())
    return torch.stack(torch._foreach_norm(list(tensors), 1)).sum()


def _check_other_ranks(failed: Sequence[float]) -> None:
    """Raise where other ranks' loss weights failed their check (there they raise their own)."""
    if failed and failed[0] > 0:
        raise ValueError(
            f"opt.step(): on {round(failed[0])} other rank(s), .grad does not hold the gradient "
            f"of the recorded loss with the weights of the batch's objective (their error says "
            f"how); every rank rejects the step"
        )


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def _cloned(obj: Any, device: torch.device | None = None) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor cloned (and moved to ``device``)."""
    if isinstance(obj, Tensor):
        return obj.detach().to(device).clone()
    if isinstance(obj, dict):
        return {key: _cloned(value, device) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cloned(value, device) for value in obj)
    return obj


def _validate(**config: Any) -> None:
    """Check the constructor's configuration; each error names the keyword."""
    def fail(name: str, expected: str) -> None:
        raise ValueError(f"{name}: expected {expected}, got {config[name]!r}")

    if config["approx"] not in APPROXIMATIONS:
        fail("approx", f"one of {APPROXIMATIONS}")
    check_fisher(config["fisher"])
    if config["pi"] not in PI_KINDS:
        fail("pi", f"one of {PI_KINDS}")
    if config["gamma_rule"] not in GAMMA_RULES:
        fail("gamma_rule", f"one of {GAMMA_RULES}")
    if config["units"] not in UNITS:
        fail("units", f"one of {UNITS}")
    lr, momentum = config["lr"], config["momentum"]
    if lr is not None and not (isinstance(lr, int | float) and lr > 0):
        fail("lr", "None or a positive float")
    if not isinstance(momentum, bool | int | float):
        fail("momentum", "True, False or a float")
    if config["damping"] is not None and not config["damping"] >= 0:
        fail("damping", "None or a float >= 0")
    if not config["weight_decay"] >= 0:
        fail("weight_decay", "a float >= 0")
    for name in ("inverse_every", "damping_every", "gamma_every", "quad_min_cases", "lm_streak"):
        if not (isinstance(config[name], int) and config[name] >= 1):
            fail(name, "an integer >= 1")
    if config["gamma_every"] % config["inverse_every"]:
        raise ValueError(
            f"gamma_every: expected a multiple of inverse_every={config['inverse_every']} (each γ "
            f"candidate needs fresh inverses), got {config['gamma_every']}"
        )
    for name in ("stats_fraction", "quad_fraction", "grad_worker_fraction"):
        if not 0 < config[name] <= 1:
            fail(name, "a fraction in (0, 1]")
    if config["unsupported"] not in UNSUPPORTED:
        fail("unsupported", f"one of {UNSUPPORTED}")
    for name in ("damping_bounds", "gamma_bounds"):
        bounds = config[name]
        if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]):
            fail(name, "a pair (low, high) with 0 <= low <= high")
