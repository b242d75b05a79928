"""One run: a workload, an optimizer configuration, a step budget; everything it did, recorded.

The timed region of an iteration is taking the batch and ``stepper.step(inputs, targets)``; the
whole-set loss is measured outside it, at iteration 0, every ``eval_every`` iterations and at
the end. Every warning raised while the optimizer is built and stepped is recorded (the filter
is "always", so repeats count). A run stops early when an *accepted* step or a measurement gives
a non-finite loss (divergence); K-FAC's rejected steps (``accepted = False``) are counted and the
run goes on.

A run in a fresh process (:func:`run_isolated`) first takes one K-FAC step on a tiny throw-away
network: that triggers torch's one-time work (forward-mode AD loads and scripts its
decompositions) outside the timed region, and the warnings it raises are recorded with the run
as ``first_use_warnings``, since a user's first K-FAC run would raise them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from torch import nn

from kronlin_nn.distributed import Replicas

from .machine import LoadMeter
from .optimizers import RunSpec, build
from .record import RunLog
from .workloads import WORKLOADS, Workload

__all__ = ["first_use_warnings", "run_isolated", "run_one"]

# K-FAC diagnostics kept per iteration (the lead's view of λ, γ, α, μ, ρ along a run).
_DIAGNOSTICS = ("lambda", "gamma", "alpha", "mu", "rho")
_warmed = False


def first_use_warnings() -> list[dict[str, Any]]:
    """Take one K-FAC step on a tiny network once per process; the warnings it raised.

    Returns an empty list on later calls (the one-time work is done).
    """
    global _warmed
    if _warmed:
        return []
    from kronlin_nn import KFAC

    _warmed = True
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=generator)
    y = torch.randn(8, 2, generator=generator)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KFAC(model, nn.MSELoss(), seed=0).step(x, y)
    return _summarize_warnings(caught)


def _summarize_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """Distinct warnings with their counts, in order of first appearance."""
    counts = Counter((w.category.__name__, str(w.message).splitlines()[0][:300], w.filename,
                      w.lineno) for w in caught)
    return [{"category": c, "message": m, "where": f"{f}:{n}", "count": k}
            for (c, m, f, n), k in counts.items()]


def run_one(name: str, spec: RunSpec, iterations: int, threads: int | None = None,
            isolated: bool = False) -> dict[str, Any]:
    """Run ``spec`` on the workload ``name`` for ``iterations`` steps.

    Args:
        name: a key of :data:`WORKLOADS`.
        spec: the configuration (not ``kfac-jax``).
        iterations: the step budget.
        threads: torch's intra-op threads (``None``: leave as is).
        isolated: this is a fresh process: warm up first (see the module docstring).

    Returns:
        The run's record: ``key``, ``family``, ``params``, ``config``; the measurements
        ``eval_iterations``, ``eval_seconds`` (timed seconds at that iteration), ``eval_loss``;
        per iteration ``step_loss``, ``step_seconds``, ``accepted`` and, for K-FAC, the
        diagnostics; the counts ``warnings``, ``rejected``, ``nonfinite``, ``diverged``; the
        lists ``warning_messages``, ``first_use_warnings``; ``threads``, ``load``,
        ``wall_seconds``, ``pid``.

    """
    if threads is not None:
        torch.set_num_threads(threads)
    workload = WORKLOADS[name]
    first_use = first_use_warnings() if isolated else []
    x, y = workload.dataset()
    model, loss_fn = workload.build_model(), workload.loss()
    batches = workload.batches(iterations)
    meter = LoadMeter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(workload.seed)
        stepper, config = build(spec, model, loss_fn, workload.case_scale())
        record = _loop(workload, stepper, model, loss_fn, x, y, batches, iterations)
    record.update(
        key=spec.key, family=spec.family, params=dict(spec.params), config=config,
        warning_messages=_summarize_warnings(caught), first_use_warnings=first_use,
        warnings=len(caught) + sum(w["count"] for w in first_use),
        isolated=isolated, threads=torch.get_num_threads(), load=meter.result(), pid=os.getpid(),
    )
    return record


def _loop(workload: Workload, stepper: Any, model: nn.Module, loss_fn: nn.Module,
          x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor] | None,
          iterations: int) -> dict[str, Any]:
    """The training loop; see :func:`run_one` for what it returns."""
    def evaluate() -> float:
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    log = RunLog(evaluate(), workload.eval_every, iterations, _DIAGNOSTICS)
    _, replicas = Replicas.of(model)  # under torchrun: each rank steps on batch[rank::W]
    shard = slice(replicas.rank, None, replicas.size)
    start_wall = time.perf_counter()
    for k in range(1, iterations + 1):
        start = time.perf_counter()
        inputs, targets = (x, y) if batches is None else (x[batches[k - 1]], y[batches[k - 1]])
        stats = stepper.step(inputs[shard], targets[shard])
        elapsed = replicas.max(time.perf_counter() - start)  # the slowest rank's
        if log.step(k, float(stats["loss"]), elapsed, bool(stats.get("accepted", True)), stats):
            log.measure(k, evaluate())
        if log.diverged:
            break
    return {**log.finish(), "wall_seconds": time.perf_counter() - start_wall}


def run_isolated(name: str, spec: RunSpec, iterations: int, threads: int | None) -> dict[str, Any]:
    """:func:`run_one` in a fresh interpreter (``spawn``), so one-time warnings are its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_one, name, spec, iterations, threads, True).result()
