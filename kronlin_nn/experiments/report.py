"""Summary of the autoencoder experiment: the issue's ratios and the printed results table.

Against the baseline's final training error ``E`` (issue 5, "Target"), each other method gets
the timed seconds and the iterations it needed to reach ``E``, and their ratios to the
baseline's totals: a time ratio ≤ 1/5 is the target for block-diagonal K-FAC, and the
iteration ratio measures per-iteration progress. Crossing points are interpolated linearly in
log-error between the two evaluation points around them, since errors are only measured at
evaluation points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["crossing", "format_table", "summarize"]


def crossing(records: Sequence[Mapping[str, Any]], target: float, x: str) -> float | None:
    """The value of ``x`` at which a run's training error first reaches ``target``.

    Args:
        records: evaluation records in order, with ``x`` and ``"train_error"``.
        target: the error to reach.
        x: ``"seconds"`` or ``"iteration"``.

    Returns:
        The interpolated ``x`` (log-error linear between the bracketing records), or ``None``
        if the run never reaches ``target``.

    """
    for i, record in enumerate(records):
        error = record["train_error"]
        if not error <= target:  # also skips NaN
            continue
        if i == 0:
            return float(record[x])
        before = records[i - 1]
        e0, e1 = math.log(before["train_error"]), math.log(max(error, 1e-300))
        share = (e0 - math.log(target)) / (e0 - e1) if e0 > e1 else 1.0
        return float(before[x] + share * (record[x] - before[x]))
    return None


def summarize(
    runs: Mapping[str, Mapping[str, Any]], baseline: str = "sgd"
) -> dict[str, dict[str, Any]]:
    """Per-method totals and, when the baseline ran, the ratios to it.

    Args:
        runs: method name to ``{"records", "iterations", "seconds", "eval_seconds"}``.
        baseline: the name of the baseline method.

    Returns:
        Method name to ``iterations``, ``seconds``, ``eval_seconds``, ``final_batch_size``,
        ``final_error``, and, for methods other than the baseline when it ran,
        ``seconds_to_baseline``, ``time_ratio``, ``iterations_to_baseline`` and
        ``iteration_ratio`` (``None`` where the baseline's final error was not reached).

    """
    summary: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        last = run["records"][-1]
        summary[name] = {
            "iterations": run["iterations"],
            "seconds": run["seconds"],
            "eval_seconds": run["eval_seconds"],
            "final_batch_size": last["batch_size"],
            "final_error": last["train_error"],
        }
    if baseline not in runs:
        return summary
    base = summary[baseline]
    for name, run in runs.items():
        if name == baseline:
            continue
        seconds = crossing(run["records"], base["final_error"], "seconds")
        iterations = crossing(run["records"], base["final_error"], "iteration")
        summary[name].update(
            seconds_to_baseline=seconds,
            time_ratio=None if seconds is None else seconds / base["seconds"],
            iterations_to_baseline=iterations,
            iteration_ratio=None if iterations is None else iterations / base["iterations"],
        )
    return summary


def format_table(summary: Mapping[str, Mapping[str, Any]], baseline: str = "sgd") -> str:
    """Render :func:`summarize`'s output as a Markdown table.

    Args:
        summary: the output of :func:`summarize`.
        baseline: the baseline's name, for the column titles.

    Returns:
        The table, one row per method.

    """
    head = (
        "| optimizer | iterations | time (s) | final m | final train error | "
        f"time to {baseline}'s final error (s) | time ratio | iteration ratio |"
    )
    lines = [head, "|" + "---|" * 8]
    for name, row in summary.items():
        cells = [
            name,
            str(row["iterations"]),
            f"{row['seconds']:.1f}",
            str(row["final_batch_size"]),
            _number(row["final_error"]),
            _number(row.get("seconds_to_baseline"), ".1f"),
            _number(row.get("time_ratio"), ".3f"),
            _number(row.get("iteration_ratio"), ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None, spec: str = ".4g") -> str:
    """Format a number for the table, ``–`` for a missing one."""
    return "–" if value is None else format(value, spec)
