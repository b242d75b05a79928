"""The timed training loop shared by every method of the autoencoder experiment.

The protocol of spec ``kfac-algorithm.md`` §9–§10 (issue 5 item 4): each iteration draws a
mini-batch (uniformly, without replacement within the batch, as the authors' code does), calls
``optimizer.step(inputs, targets)`` once and updates the Polyak average. Only that is timed. At
evaluation points, outside the timed region, the training reconstruction error of the whole
training set is computed for the current and the averaged iterate; the record keeps both and
their minimum, the paper's reported value.

Under ``torchrun`` every rank draws the same mini-batch and steps on its shard
``batch[rank::W]``, whose union is the batch in its own order
(:func:`kronlin_nn.distributed.union_order`), so a run on ``W`` ranks computes the iterates of
the single-process run; the timed seconds are the slowest rank's, so every rank stops at the
same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from kronlin_nn.distributed import Replicas
from kronlin_nn.experiments.models import reconstruction_error
from kronlin_nn.experiments.progress import Progress
from kronlin_nn.schedules import PolyakAverage

__all__ = ["EvalClock", "Method", "Stepper", "TrainResult", "train"]


class Stepper(Protocol):
    """What the loop needs from an optimizer: one call per iteration (K-FAC's interface)."""

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> Mapping[str, Any]:
        """Take one step on the batch; return at least ``"loss"`` (the objective before it)."""
        ...


@dataclass(frozen=True)
class Method:
    """An optimizer with its batch-size rule, as the experiment runs it.

    Attributes:
        name: the CLI name, e.g. ``"kfac-blockdiag"``.
        label: the legend label of the figures.
        make_optimizer: builds the optimizer for a model.
        batch_size: iteration ``k`` (from 1) to mini-batch size.
        settings: JSON-able description of the configuration, for ``results.json``.

    """

    name: str
    label: str
    make_optimizer: Callable[[nn.Module], Stepper]
    batch_size: Callable[[int], int]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Outcome of one run.

    Attributes:
        records: one dict per evaluation point (see :func:`train`).
        iterations: steps taken.
        seconds: timed seconds (steps only).
        eval_seconds: seconds spent evaluating, outside the timed region.

    """

    records: list[dict[str, Any]]
    iterations: int
    seconds: float
    eval_seconds: float


class EvalClock:
    """Evaluation points at geometrically spaced timed seconds.

    Points at ``first``, ``first·factor``, ``first·factor²``, … seconds: dense early, where the
    error falls fastest, and about 18 per run for the defaults, whatever the budget.

    Args:
        budget: the run's timed budget in seconds.
        first: the first point, as a fraction of the budget.
        factor: ratio of consecutive points.

    """

    def __init__(self, budget: float, first: float = 0.01, factor: float = 1.3) -> None:
        self.next = budget * first
        self.factor = factor

    def due(self, seconds: float) -> bool:
        """Whether an evaluation is due at ``seconds``; if so, schedule the next one."""
        if seconds < self.next:
            return False
        while self.next <= seconds:
            self.next *= self.factor
        return True


def train(
    method: Method,
    model: nn.Module,
    x: torch.Tensor,
    *,
    budget: float,
    seed: int,
    polyak_start: int,
    max_iterations: int | None = None,
    evaluate_along: bool = True,
    progress: Callable[[str, float], Progress] | None = Progress,
) -> TrainResult:
    """Train ``model`` in place with ``method`` for ``budget`` timed seconds.

    A run stops when the timed seconds reach ``budget``, after ``max_iterations`` steps, or
    when a step was applied with a non-finite loss (divergence; K-FAC rejects such steps and
    reports ``accepted = False``, so it continues).

    Each record holds ``iteration``, ``seconds`` (timed, cumulative), ``batch_size`` (of the
    last step; 0 at iteration 0), ``train_error`` (min of the next two), ``train_error_current``,
    ``train_error_average`` (the Polyak iterate, ξ = 0.99, warm start from ``polyak_start``)
    and the last step's diagnostics (for K-FAC: ``loss``, ``lambda``, ``gamma``, ``alpha``,
    ``mu``, ``rho``, ``refreshed``, ``accepted``; non-finite floats become ``None``).

    Args:
        method: the optimizer and batch-size rule.
        model: the network (trained in place), on the device of ``x``.
        x: ``(n, d)`` training images; inputs and targets alike.
        budget: timed seconds (``math.inf``: stop by ``max_iterations`` only).
        seed: seed of the mini-batch draws.
        polyak_start: first iteration of the averaging (see :class:`PolyakAverage`).
        max_iterations: optional cap on the number of steps.
        evaluate_along: evaluate at :class:`EvalClock` points; otherwise only at the start and
            the end (for the grid search).
        progress: makes the run's progress report from the method's name and ``budget``
            (default: :class:`~kronlin_nn.experiments.progress.Progress` on standard output,
            a bar on a terminal, plain lines otherwise); ``None``: silent.

    Returns:
        The records and the run's totals.

    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = method.make_optimizer(model)
    _, replicas = Replicas.of(model)
    average = PolyakAverage(model.parameters(), decay=0.99, start=polyak_start)
    clock = EvalClock(budget)
    eval_seconds = 0.0

    report = progress(method.name, budget) if progress is not None else None

    def evaluate(k: int, seconds: float, batch: int, stats: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal eval_seconds
        start = time.perf_counter()
        record = _evaluate(model, x, average, k, seconds, batch, stats)
        eval_seconds += time.perf_counter() - start
        if report is not None:
            report.evaluated(k, seconds, record["train_error"])
        return record

    records = [evaluate(0, 0.0, 0, {})]
    seconds, k, batch, stats = 0.0, 0, 0, {}
    while seconds < budget and (max_iterations is None or k < max_iterations):
        k += 1
        start = time.perf_counter()
        batch = method.batch_size(k)
        rows = torch.randperm(x.shape[0], generator=generator)[:batch].to(x.device)
        inputs = x[rows[replicas.rank::replicas.size]]
        stats = optimizer.step(inputs, inputs)
        average.update()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        seconds = replicas.max(seconds + time.perf_counter() - start)
        if report is not None:
            report.step(k, seconds, batch)
        diverged = not math.isfinite(float(stats["loss"])) and stats.get("accepted", True)
        if diverged or (evaluate_along and clock.due(seconds)):
            records.append(evaluate(k, seconds, batch, stats))
        if diverged:
            break
    if records[-1]["iteration"] != k:
        records.append(evaluate(k, seconds, batch, stats))
    if report is not None:
        report.close()
    return TrainResult(records, k, seconds, eval_seconds)


def _evaluate(
    model: nn.Module,
    x: torch.Tensor,
    average: PolyakAverage,
    k: int,
    seconds: float,
    batch: int,
    stats: Mapping[str, Any],
) -> dict[str, Any]:
    """One record: the whole-set errors of the current and averaged iterate, plus diagnostics."""
    current = reconstruction_error(model, x)
    averaged = current
    if average.k > average.start:  # before, the average equals the iterate
        with average.applied():
            averaged = reconstruction_error(model, x)
    record: dict[str, Any] = {
        "iteration": k,
        "seconds": seconds,
        "batch_size": batch,
        "train_error": min(current, averaged),
        "train_error_current": current,
        "train_error_average": averaged,
    }
    record.update({key: _jsonable(value) for key, value in stats.items()})
    return record


def _jsonable(value: Any) -> Any:
    """Convert a diagnostics value to plain JSON: tensors to numbers, non-finite to ``None``."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
