"""Summary of the autoencoder experiment: the issue's ratios and the results table.

Against the baseline's final training error ``E`` (issue 5, "Target"), each other method gets
the timed seconds and the iterations it needed to reach ``E``, and their ratios to the
baseline's totals: a time ratio ≤ 1/5 is the target for block-diagonal K-FAC, and the
iteration ratio measures per-iteration progress. Crossing points are interpolated linearly in
log-error between the two evaluation points around them, since errors are only measured at
evaluation points.

The table is printed as aligned plain text (:func:`format_text`) and written as Markdown
(:func:`format_table`, into ``results.md``), each with a legend of its columns.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BASELINE_MARK", "NEVER", "crossing", "describe_run", "describe_search", "format_table",
    "format_text", "legend", "markdown_report", "summarize", "table_cells",
]


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


def _columns(summary: Mapping[str, Any], baseline: str) -> list[tuple[str, str, str]]:
    """(summary key, column title, legend text) of the table; ratios only if the baseline ran."""
    columns = [
        ("optimizer", "optimizer", ""),  # self-explanatory: not in the legend
        ("iterations", "iters", "steps taken"),
        ("seconds", "time (s)", "timed seconds (the steps only, not the evaluations)"),
        ("final_batch_size", "m", "mini-batch size of the last step"),
        ("final_error", "final error",
         "training error at the end, the better of the current and averaged iterates"),
    ]
    if baseline in summary:
        columns += [
            ("seconds_to_baseline", f"to {baseline}'s error (s)",
             f"timed seconds to reach {baseline}'s final error"),
            ("time_ratio", "time ratio", f"that time / {baseline}'s time (< 1: faster than {baseline})"),
            ("iteration_ratio", "iter ratio",
             f"iterations to reach {baseline}'s final error / {baseline}'s iterations"),
        ]
    return columns


_FORMATS = {"seconds": ".1f", "final_error": "#.4g", "seconds_to_baseline": ".1f",
            "time_ratio": ".3f", "iteration_ratio": ".3f"}
_RATIOS = ("seconds_to_baseline", "time_ratio", "iteration_ratio")
BASELINE_MARK = "–"  # a ratio column in the baseline's own row
NEVER = "never"  # a run that did not reach the baseline's final error


def table_cells(
    summary: Mapping[str, Mapping[str, Any]], baseline: str = "sgd"
) -> tuple[list[str], list[list[str]]]:
    """The results table's column titles and its rows of formatted cells (see :func:`legend`)."""
    columns = _columns(summary, baseline)
    rows = []
    for name, row in summary.items():
        cells = [name]
        for key, _, _ in columns[1:]:
            if key in _RATIOS and name == baseline:
                cells.append(BASELINE_MARK)
            elif row.get(key) is None:
                cells.append(NEVER)
            else:
                cells.append(format(row[key], _FORMATS.get(key, "")).rstrip("."))
        rows.append(cells)
    return [title for _, title, _ in columns], rows


def legend(summary: Mapping[str, Mapping[str, Any]], baseline: str = "sgd") -> list[str]:
    """The table's legend: one line per column after the first, then the meaning of its marks."""
    lines = [f"{title}: {text}" for _, title, text in _columns(summary, baseline)[1:]]
    if baseline in summary:
        lines.append(f"{BASELINE_MARK}: {baseline} is the baseline itself; {NEVER}: did not reach "
                     f"{baseline}'s final error within the budget")
    return lines


def format_table(summary: Mapping[str, Mapping[str, Any]], baseline: str = "sgd") -> str:
    """Render :func:`summarize`'s output as a Markdown table (for the written files).

    Args:
        summary: the output of :func:`summarize`.
        baseline: the baseline's name; without its row the ratio columns are left out.

    Returns:
        The table, one row per method, then its legend as a Markdown list.

    """
    header, rows = table_cells(summary, baseline)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += [""] + [f"- {line}" for line in legend(summary, baseline)]
    return "\n".join(lines)


def format_text(summary: Mapping[str, Mapping[str, Any]], baseline: str = "sgd") -> str:
    """Render :func:`summarize`'s output as aligned plain text (for the terminal).

    Numbers are right-aligned, names left-aligned, columns two spaces apart; the legend
    follows, one line per column.

    Args:
        summary: the output of :func:`summarize`.
        baseline: the baseline's name; without its row the ratio columns are left out.

    Returns:
        The table and its legend.

    """
    header, rows = table_cells(summary, baseline)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    notes = [textwrap.fill(text, 98, initial_indent="  ", subsequent_indent="      ")
             for text in legend(summary, baseline)]
    return "\n".join(out + [""] + notes)


def describe_search(search: Mapping[str, Any]) -> str:
    """One line on the baseline's learning-rate grid search: scores, choice and cost.

    Args:
        search: ``results.json``'s ``config["sgd_grid_search"]``.

    """
    scores = ", ".join(f"{lr:g}: {error:.4g}" for lr, error in
                       zip(search["grid_paper_units"], search["final_errors"], strict=True))
    return (f"sgd learning-rate grid search ({search['iterations_each']} steps each, final "
            f"training error): {scores}; chose {search['chosen']:g}; cost {search['seconds']:.1f} s")


def describe_run(config: Mapping[str, Any]) -> str:
    """One Markdown line on how a run was made: command, date, data, budget and machine.

    Args:
        config: ``results.json``'s ``config``.

    """
    machine = f"{config['cpu_count']} CPUs, {config['threads']} torch threads"
    if config.get("device") == "cuda":
        machine = f"{config.get('device_name') or 'a CUDA GPU'}, {machine}"
    return (f"`{config['command']}` on {config.get('date', 'an unrecorded date')}: "
            f"{config['dataset']}, {config['time_budget']:g} timed seconds per optimizer; "
            f"{machine}, torch {config['torch']}.")


def markdown_report(results: Mapping[str, Any], baseline: str = "sgd") -> str:
    """The Markdown summary of a run (``results.md``): how it was made, the table, the search.

    Args:
        results: the content of ``results.json``.
        baseline: the baseline's name.

    """
    config = results["config"]
    parts = [describe_run(config), "", format_table(results["summary"], baseline)]
    if config.get("sgd_grid_search"):
        parts += ["", describe_search(config["sgd_grid_search"]) + "."]
    return "\n".join(parts) + "\n"
