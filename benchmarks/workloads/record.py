"""The record of one run, filled step by step (no torch: kfac-jax's worker uses it too).

Non-finite losses are stored as ``None`` (standard JSON). A run has *diverged* when an accepted
step or a measurement gives a non-finite loss; the loop stops there. Steps that the optimizer
rejected (K-FAC's ``accepted = False``) are counted and the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RunLog"]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunLog:
    """Per-iteration losses, seconds and diagnostics, and the whole-set measurements.

    Args:
        initial_loss: the whole-set loss at iteration 0.
        eval_every: iterations between measurements (the last iteration is always measured).
        iterations: the budget.
        diagnostics: names of the step statistics to keep per iteration (when present).

    """

    def __init__(self, initial_loss: float, eval_every: int, iterations: int,
                 diagnostics: Iterable[str] = ()) -> None:
        self.eval_every, self.iterations = eval_every, iterations
        self.out: dict[str, Any] = {"eval_iterations": [0], "eval_seconds": [0.0],
                                    "eval_loss": [_finite(initial_loss)], "step_loss": [],
                                    "step_seconds": [], "accepted": []}
        self.diagnostics: dict[str, list] = {name: [] for name in diagnostics}
        self.rejected = self.nonfinite = 0
        self.diverged = False
        self.seconds = 0.0

    def step(self, k: int, loss: float, seconds: float, accepted: bool = True,
             stats: Mapping[str, Any] | None = None) -> bool:
        """Record iteration ``k``; return whether a measurement is due now."""
        self.seconds += seconds
        self.rejected += not accepted
        self.nonfinite += not math.isfinite(loss)
        self.out["step_loss"].append(_finite(loss))
        self.out["step_seconds"].append(seconds)
        self.out["accepted"].append(accepted)
        for name, values in self.diagnostics.items():
            if stats is not None and name in stats:
                values.append(_finite(float(stats[name])))
        self.diverged = accepted and not math.isfinite(loss)
        return k % self.eval_every == 0 or k == self.iterations or self.diverged

    def measure(self, k: int, loss: float) -> None:
        """Record the whole-set loss after iteration ``k``."""
        finite = math.isfinite(loss)
        self.nonfinite += not finite
        self.diverged = self.diverged or not finite
        self.out["eval_iterations"].append(k)
        self.out["eval_seconds"].append(self.seconds)
        self.out["eval_loss"].append(_finite(loss))

    def finish(self) -> dict[str, Any]:
        """The record: the lists, the counts, ``seconds`` (timed) and ``iterations_done``."""
        return {**self.out, "rejected": self.rejected, "nonfinite": self.nonfinite,
                "diverged": self.diverged, "seconds": self.seconds,
                "iterations_done": len(self.out["step_loss"]),
                "diagnostics": {k: v for k, v in self.diagnostics.items() if v}}
