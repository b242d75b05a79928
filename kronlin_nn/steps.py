r"""The three ways to call :meth:`KFAC.step <kronlin_nn.KFAC.step>`, as one batch for one iteration.

- (a) ``opt.step(inputs, targets)``: K-FAC runs the forward and backward passes itself.
- (b) ``loss = loss_fn(model(x), y); loss.backward(); opt.step()``: the user's own passes, with
  the very ``model`` and ``loss_fn`` given to ``KFAC``, recorded by hooks
  (:class:`~kronlin_nn.capture.PassRecorder`).
- (c) ``opt.step(closure)``, as ``torch.optim.LBFGS`` takes it: the closure zeroes the
  gradients, runs (b)'s forward and backward passes and returns the loss.

Each gives a :class:`Batch`, and the iteration does not know which form produced it. This
module assembles (b) and (c) (:func:`user_batch`): the union of the forward passes
backpropagated since the last step (gradient accumulation over micro-batches), the gradient
read from ``.grad`` (divided by a ``GradScaler``'s scale when the scaler leaves that to the
optimizer) and the check that each micro-batch's loss entered ``.grad`` with its share of the
union batch's loss:

.. math::
    \nabla h = \sum_j w_j \nabla L_j, \qquad
    w_j = \frac{\sum_{n \in j} d_n}{\sum_n d_n}\ (\texttt{"mean"}), \quad w_j = 1\ (\texttt{"sum"}),

with :math:`L_j` the ``loss_fn`` value of micro-batch ``j`` and :math:`d_n` what the mean
divides by (1 per case or output; class weights, ignored cases: :mod:`kronlin_nn.losses`).
The weight with which backward passes reached each :math:`L_j` is recorded, so a
micro-batch loss backpropagated with another weight (a forgotten ``/ k``) is refused rather
than giving another objective's gradient. After ``scaler.unscale_(opt)`` only the weights'
proportions can be checked: their common scale is the scaler's, which the optimizer is not told.

The module also holds what the torch.optim contract checks of what it is given: the model
(:func:`check_model`, :func:`check_dtypes`), the param group that schedulers write
(:func:`check_param_group`), and the autocast region of a pass (:func:`autocast_state`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .capture import LayerIO, Pass, PassRecorder
from .losses import PredictiveDistribution

if TYPE_CHECKING:
    from .blocks import CurvatureBlock

__all__ = [
    "MOMENTUM_KINDS",
    "Batch",
    "autocast_as",
    "autocast_state",
    "check_dtypes",
    "check_model",
    "check_param_group",
    "momentum_kind",
    "user_batch",
]

MOMENTUM_KINDS = {"auto": "True (μ from the quadratic model)", "none": "False (no momentum)",
                  "fixed": "a float (a fixed μ)"}
"""The kinds of ``momentum`` (:func:`momentum_kind`), as messages name them."""

# relative tolerance of the check that each micro-batch's loss entered .grad with its weight
WEIGHT_RTOL = 1e-4


@dataclass
class Batch:
    """What one iteration needs from the forward and backward passes, whoever ran them.

    Attributes:
        inputs: the batch's ``m`` cases (the model's input).
        targets: their targets.
        z: the model's output on ``inputs`` (part of the autograd graph when ``graph``).
        loss: ``loss_fn``'s value on the batch (0-d, detached), weight decay excluded.
        grads: its gradient, per trainable parameter in the layout's order.
        calls: form (a): the forward pass's layer records, in block order.
        passes: forms (b), (c): the recorded passes (their records give the layer calls).
        graph: whether ``z`` and ``calls`` keep their graph (the statistics may reuse it).
        autocast: ``(device type, dtype)`` of the autocast region the loss was computed in.
        audit: a 0-d tensor, the relative error of the micro-batches' loss weights, checked
            against :data:`WEIGHT_RTOL` at the iteration's host sync (``None``: nothing to check).
        explain: the error message for an ``audit`` above the tolerance.

    """

    inputs: Tensor
    targets: Tensor
    z: Tensor
    loss: Tensor
    grads: list[Tensor]
    calls: list[LayerIO] | None = None
    passes: list[Pass] | None = None
    graph: bool = False
    autocast: tuple[str, torch.dtype] | None = None
    audit: Tensor | None = None
    explain: Callable[[], str] | None = None

    def verify(self, audit: float) -> None:
        """Raise ``ValueError`` (with :attr:`explain`) if the audit value is out of tolerance."""
        if self.audit is not None and not audit <= WEIGHT_RTOL:
            raise ValueError(self.explain())


def user_batch(recorder: PassRecorder, dist: PredictiveDistribution, params: Sequence[Tensor],
               grad_scale: Tensor | None, unscaled: bool) -> Batch:
    """The batch of the passes backpropagated since the last step (forms (b) and (c)).

    Args:
        recorder: the optimizer's pass recorder.
        dist: the loss's predictive distribution.
        params: the trainable parameters, in the layout's order; their ``.grad`` is the
            gradient (``None`` entries become zeros).
        grad_scale: the scale of ``.grad`` that a ``GradScaler`` left to the optimizer
            (``.grad`` is divided by it, in place), or ``None``.
        unscaled: whether a ``GradScaler`` already divided ``.grad`` by its scale
            (``scaler.unscale_(opt)``).

    Raises:
        ValueError: no usable pass (with what to do), passes that cannot be combined, or
            gradients left over from before the last step.

    """
    passes = _usable_passes(recorder)
    first = passes[0]
    dtype = params[0].dtype
    one = len(passes) == 1
    inputs = first.inputs if one else torch.cat([p.inputs for p in passes])
    targets = first.targets if one else torch.cat([p.targets for p in passes])
    z = (first.z if one else torch.cat([p.z for p in passes])).to(dtype)
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    received = torch.stack([p.weight for p in passes]).to(dtype)
    if grad_scale is not None:
        inverse = grad_scale.double().reciprocal().to(dtype)
        torch._foreach_mul_(grads, inverse)
        received = received * inverse
    shares = _shares(dist, passes, targets, dtype)
    loss = first.loss if one else (torch.stack([p.loss for p in passes]).to(shares.dtype)
                                   @ shares)
    if unscaled:  # the proportions only: the scaler's scale is unknown here
        ratio = received / shares
        audit = ((ratio - ratio[0]).abs() / ratio[0]).max()
    else:
        audit = ((received - shares).abs() / shares).max()

    def explain() -> str:
        got = [round(v, 6) for v in received.tolist()]
        want = [round(v, 6) for v in shares.tolist()]
        what = "in the proportions" if unscaled else "with the weights"
        return (
            f"opt.step(): .grad holds the gradient of the {len(passes)} recorded "
            f"loss_fn(model(x), y) value(s) with weights {got} (the gradient that backward "
            f"sent into each), but the batch's objective, loss_fn over the union of these "
            f"micro-batches (reduction={dist.reduction!r}), needs them {what} {want}: "
            f"backpropagate the loss itself (loss.backward(), or scaler.scale(loss).backward() "
            f"under a GradScaler), and with several micro-batches each one's loss times its "
            f"share of the union batch"
        )

    return Batch(inputs, targets, z, loss, grads, passes=passes, autocast=first.autocast,
                 audit=audit, explain=explain)


def _usable_passes(recorder: PassRecorder) -> list[Pass]:
    """The backpropagated passes, checked; a guiding error if there are none."""
    if recorder.compiled:
        raise ValueError(
            "model: it ran compiled (torch.compile after KFAC was built); K-FAC records every "
            "layer's calls with forward hooks, which a compiled graph does not run reliably: "
            "call the uncompiled model in your loop"
        )
    if recorder.stray is not None:
        raise ValueError(recorder.stray)
    if recorder.stale:
        raise ValueError(
            "opt.step(): a backward pass added to gradients left from before the last step; "
            "call opt.zero_grad() before each forward and backward pass (K-FAC's objective is "
            "the loss of the passes since the last step)"
        )
    passes = recorder.backpropagated()
    if not passes:
        raise ValueError(_no_pass_message(recorder.passes))
    for p in passes:
        if p.error is not None:
            raise ValueError(p.error)
    if any(p.autocast != passes[0].autocast for p in passes):
        raise ValueError(
            f"opt.step(): the micro-batches ran under different autocast settings "
            f"{sorted({str(p.autocast) for p in passes})}; use one for all of them"
        )
    return passes


def _no_pass_message(recorded: Sequence[Pass]) -> str:
    usage = ("loss = loss_fn(model(x), y); loss.backward(); opt.step(), with the model and "
             "loss_fn given to KFAC; or opt.step(x, y), which runs both passes itself")
    if any(p.loss is not None for p in recorded):
        return f"opt.step(): the recorded loss was not backpropagated (call loss.backward()): {usage}"
    if recorded:
        return (f"opt.step(): loss_fn was not called on the recorded model output, so K-FAC "
                f"has no objective: {usage}")
    return (f"opt.step() without arguments needs a recorded forward pass (with gradients "
            f"enabled) and its backward pass since the last step: {usage}")


def _shares(dist: PredictiveDistribution, passes: Sequence[Pass], targets: Tensor,
            dtype: torch.dtype) -> Tensor:
    """:math:`w_j`, each micro-batch's weight in the union batch's loss (see the module)."""
    sizes = [p.inputs.shape[0] for p in passes]
    if dist.reduction == "sum":
        return torch.ones(len(passes), dtype=dtype, device=targets.device)
    cases = dist.case_weights(targets, dtype)
    if cases is None:
        counts = torch.tensor(sizes, dtype=dtype, device=targets.device)
    else:
        counts = torch.stack([d.sum() for d in cases.reduction.split(sizes)]).to(dtype)
    return counts / counts.sum()


def check_param_group(group: dict, built: str) -> None:
    """Refuse param-group values that K-FAC cannot honour (schedulers write there).

    Args:
        group: ``param_groups[0]``.
        built: the :func:`momentum_kind` KFAC was built with.

    Raises:
        ValueError: an ``lr`` that is not a float ``>= 0``, or a momentum of another kind.

    """
    lr, momentum = group["lr"], group["momentum"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 <= lr < math.inf:
        raise ValueError(
            f"param_groups[0]['lr']: expected a float >= 0 (a multiplier of the update the "
            f"quadratic model chooses, 1.0 by default; with KFAC(lr=...) the fixed α), got "
            f"{lr!r}"
        )
    if momentum_kind(momentum) != built:
        raise ValueError(
            f"param_groups[0]['momentum']: KFAC was built with momentum {MOMENTUM_KINDS[built]}, "
            f"and it was changed to {momentum!r}; a scheduler that cycles momentum (OneCycleLR, "
            f"CyclicLR) does this: give it cycle_momentum=False, or build KFAC(momentum=<float>) "
            f"for a fixed μ that it may schedule"
        )


def check_model(model: object) -> None:
    """Refuse what is not a model K-FAC can record: parameters, a compiled module."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected the nn.Module itself (K-FAC records its layers' inputs and outputs "
            f"and evaluates it on sub-batches), got {type(model).__name__}; write "
            f"KFAC(model, loss_fn), not KFAC(model.parameters(), loss_fn)"
        )
    compiled = [name or "model" for name, m in model.named_modules()
                if getattr(m, "_compiled_call_impl", None) is not None or hasattr(m, "_orig_mod")]
    if compiled:
        raise ValueError(
            f"model: {compiled[0]} is compiled (torch.compile or Module.compile()); K-FAC records "
            f"every layer's calls with forward hooks and re-runs the layers in forward-mode AD "
            f"with their forwards replaced, which a compiled graph does not see: give KFAC the "
            f"uncompiled model (for compiled = torch.compile(model), model itself, i.e. "
            f"compiled._orig_mod) and train it uncompiled"
        )


def check_dtypes(blocks: Sequence[CurvatureBlock]) -> None:
    """Refuse parameters that are not all float32 or all float64."""
    named = [(name, p) for b in blocks for name, p in zip(b.param_names, b.params, strict=True)
             if p is not None]
    dtypes = {p.dtype for _, p in named}
    for name, p in named:
        if p.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"model.{name}: parameters in {p.dtype}; K-FAC keeps its statistics, inverses "
                f"and quadratic model in the parameters' dtype, float32 or float64: keep the "
                f"parameters in float32 and run your forward pass under torch.autocast("
                f"device_type, dtype={p.dtype}) with opt.step() after your backward pass "
                f"(K-FAC's own passes then run in float32)"
            )
    if len(dtypes) > 1:
        raise ValueError(f"model: parameters in several dtypes {sorted(map(str, dtypes))}; "
                         f"K-FAC's flat parameter vector needs one")


def momentum_kind(momentum: object) -> str:
    """``"auto"`` (``True``), ``"none"`` (``False``) or ``"fixed"`` (a number)."""
    if momentum is True or momentum is False:
        return "auto" if momentum else "none"
    return "fixed" if isinstance(momentum, int | float) else repr(momentum)


def autocast_state(device_type: str) -> tuple[str, torch.dtype] | None:
    """``(device type, dtype)`` of the enclosing autocast region, or ``None``."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


@contextlib.contextmanager
def autocast_as(state: tuple[str, torch.dtype] | None, device_type: str) -> Iterator[None]:
    """Run under the autocast ``state`` (``None``: autocast off)."""
    if state is None:
        if not torch.is_autocast_enabled(device_type):
            yield
            return
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        with torch.autocast(state[0], dtype=state[1]):
            yield
