"""Turn a benchmark's printed output (aligned plain text) into headings, sentences and tables.

The benchmark scripts (``benchmarks/compare.py``, ``kfac_step_cost.py``, ``gpu_bench.py``) print
aligned columns, and their ``--markdown`` files record that output verbatim in a ````text``
block. Shown as it is, such a log is cut off at the page's right edge; this module reads its
layout instead, with no knowledge of a particular script:

- an unindented line is a sentence (a heading when a table follows it);
- a run of indented lines is a table: a cell is text whose words are one space apart, cells
  are two or more spaces apart, and cells of different lines whose character ranges overlap
  are one column (so right-aligned numbers and left-aligned names both line up);
- a table's first line is its header when it has no digit and a later line has one;
- blank lines separate blocks.

Every word of the log ends up in exactly one block (:func:`parse_log` never drops text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Line", "Table", "is_numeric", "parse_log"]

_CELL = re.compile(r"\S+(?: \S+)*")
_NUMERIC = re.compile(r"^[-+]?(\d|\.\d)")


@dataclass(frozen=True)
class Line:
    """An unindented line; ``heading`` when a table follows it directly."""

    text: str
    heading: bool = False


@dataclass(frozen=True)
class Table:
    """Rows of cells, all of the same length; ``header`` is ``None`` when the log has none."""

    header: list[str] | None
    rows: list[list[str]]


def is_numeric(cell: str) -> bool:
    """Whether ``cell`` starts with a number (``1.00×``, ``96% GEMM``): right-aligned."""
    return bool(_NUMERIC.match(cell))


def _table(lines: list[str]) -> Table:
    cells = [[(m.start(), m.end(), m.group()) for m in _CELL.finditer(line)] for line in lines]
    spans = sorted((start, end) for row in cells for start, end, _ in row)
    columns: list[list[int]] = []
    for start, end in spans:  # merge overlapping character ranges into columns
        if columns and start < columns[-1][1]:
            columns[-1][1] = max(columns[-1][1], end)
        else:
            columns.append([start, end])
    rows = []
    for row in cells:
        out = [""] * len(columns)
        for start, _, text in row:
            i = next(i for i, (a, b) in enumerate(columns) if a <= start < b)
            out[i] = f"{out[i]} {text}" if out[i] else text
        rows.append(out)
    header = None
    has_digit = [any(ch.isdigit() for ch in line) for line in lines]
    if len(rows) > 1 and not has_digit[0] and any(has_digit[1:]):
        header, rows = rows[0], rows[1:]
    return Table(header, rows)


def parse_log(text: str) -> list[Line | Table]:
    """The blocks of a printed log, in order.

    Args:
        text: the log (the content of a ````text`` block).

    Returns:
        :class:`Line` and :class:`Table` blocks.

    """
    blocks: list[Line | Table] = []
    group: list[str] = []

    def flush() -> None:
        if group:
            blocks.append(_table(group))
            group.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            flush()
        elif line[0].isspace():
            group.append(line)
        else:
            flush()
            blocks.append(Line(line.strip()))
    flush()
    # A line directly followed by a table is its heading.
    return [Line(b.text, heading=True) if isinstance(b, Line) and i + 1 < len(blocks)
            and isinstance(blocks[i + 1], Table) else b for i, b in enumerate(blocks)]
