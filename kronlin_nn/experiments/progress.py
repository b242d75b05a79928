"""Progress of one training run: a live bar on a terminal, plain lines in a log.

The training error is measured only at evaluation points, outside the timed region
(:mod:`.training`), so progress shows two clocks: the *live* state (timed seconds, iteration,
batch size), updated at every step, and the *last evaluated* training error with the iteration
it was measured at and its age in timed seconds.

- On a terminal: one tqdm bar per run, redrawn in place (at most ten times a second).
- Anywhere else (a file, a pipe, a CI log), where redrawing writes carriage returns into the
  log: one plain line at most every ``every`` wall-clock seconds (at the first step or
  evaluation after that), and a last one when the run ends. A 60-second run writes about seven
  lines at the default ``every = 10``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

__all__ = ["DEFAULT_EVERY", "Progress"]

DEFAULT_EVERY = 10.0  # wall-clock seconds between two plain lines


class Progress:
    """Report a run's progress to a terminal (a bar) or a log (plain lines).

    Args:
        name: the run's name (the optimizer's CLI name), the first field of every line.
        budget: the run's timed budget in seconds (``math.inf``: no bar total).
        stream: where to write (default: ``sys.stdout``); a bar if ``stream.isatty()``.
        every: the least wall-clock seconds between two plain lines (must be ``>= 0``).
        clock: the wall clock of the plain lines' spacing (a parameter for tests).

    """

    def __init__(
        self,
        name: str,
        budget: float,
        *,
        stream: TextIO | None = None,
        every: float = DEFAULT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every >= 0:
            raise ValueError(f"Progress: every must be >= 0 seconds, got {every!r}")
        self.name, self.budget, self.every, self.clock = name, budget, every, clock
        self.stream = sys.stdout if stream is None else stream
        self.k, self.seconds, self.batch = 0, 0.0, 0
        self.error: tuple[int, float, float] | None = None  # (iteration, seconds, error)
        self.last_line = clock()
        self.bar = None
        if self.stream.isatty():
            timed = math.isfinite(budget)
            self.bar = tqdm(
                total=budget if timed else None,
                desc=name,
                unit="s",
                file=self.stream,
                # On a terminal that reports no size (a pseudo-terminal never sized) tqdm would
                # hide the bar: draw it 100 columns wide there.
                **({} if _sized(self.stream) else {"ncols": 100, "nrows": 24}),
                bar_format="{desc:<26}"
                + ("{percentage:3.0f}%|{bar:16}| {n:.1f}/{total:g} s" if timed else "{n:.1f} s")
                + "{postfix}",
            )

    def step(self, k: int, seconds: float, batch: int) -> None:
        """After step ``k``: ``seconds`` timed so far, ``batch`` the step's batch size."""
        self.k, self.batch = k, batch
        advance, self.seconds = seconds - self.seconds, seconds
        if self.bar is not None:
            self.bar.set_postfix_str(self.status(), refresh=False)
            # The last step may overshoot the budget; the bar stops at its total.
            self.bar.update(min(advance, max(self.budget - self.bar.n, 0.0)))
        else:
            self._line_if_due()

    def evaluated(self, k: int, seconds: float, error: float) -> None:
        """The training error ``error`` was measured after step ``k``, at ``seconds``."""
        self.error = (k, seconds, error)
        if self.bar is not None:
            self.bar.set_postfix_str(self.status())
        else:
            self._line_if_due()

    def close(self) -> None:
        """End the run: close the bar, or write the last line."""
        if self.bar is not None:
            self.bar.set_postfix_str(self.status(), refresh=False)
            self.bar.close()
        else:
            self._line("done")

    def status(self) -> str:
        """``it K, m M, err E (it K', S s ago)``: the live state and the last evaluation."""
        text = f"it {self.k}, m {self.batch}"
        if self.error is not None:
            k, seconds, error = self.error
            age = self.seconds - seconds
            text += f", err {error:.4g} (it {k}, {age:.{0 if age >= 10 else 1}f} s ago)"
        return text

    def _line_if_due(self) -> None:
        if self.clock() - self.last_line >= self.every:
            self._line()

    def _line(self, suffix: str = "") -> None:
        total = f"/{self.budget:g}" if math.isfinite(self.budget) else ""
        line = f"{self.name}: {self.seconds:.1f}{total} s, {self.status()}"
        self.stream.write(line + (f", {suffix}" if suffix else "") + "\n")
        self.stream.flush()
        self.last_line = self.clock()


def _sized(stream: TextIO) -> bool:
    """Whether the terminal behind ``stream`` reports a size (columns and lines)."""
    try:
        return min(os.get_terminal_size(stream.fileno())) > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        return False
