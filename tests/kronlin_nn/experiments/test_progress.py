import io
import math
import os
import re

import pytest

from kronlin_nn.experiments.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_without_a_terminal_one_plain_line_every_n_seconds():
    log, clock = io.StringIO(), Clock()
    report = Progress("kfac-blockdiag", 60.0, stream=log, every=10.0, clock=clock)
    report.evaluated(0, 0.0, 100.0)
    for k in range(1, 31):  # one step per wall-clock second, an evaluation every 7 steps
        clock.now = float(k)
        report.step(k, 2.0 * k, 250 + k)
        if k % 7 == 0:
            report.evaluated(k, 2.0 * k, 100.0 - k)
    report.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines == [
        "kfac-blockdiag: 20.0/60 s, it 10, m 260, err 93 (it 7, 6.0 s ago)",
        "kfac-blockdiag: 40.0/60 s, it 20, m 270, err 86 (it 14, 12 s ago)",
        "kfac-blockdiag: 60.0/60 s, it 30, m 280, err 72 (it 28, 4.0 s ago)",
        "kfac-blockdiag: 60.0/60 s, it 30, m 280, err 72 (it 28, 4.0 s ago), done",
    ]


def test_every_zero_writes_a_line_per_event_and_an_unbounded_run_has_no_total():
    log = io.StringIO()
    report = Progress("sgd lr=0.05", math.inf, stream=log, every=0.0)
    report.step(1, 0.5, 10)
    report.evaluated(1, 0.5, 3.25)
    report.close()
    assert log.getvalue().splitlines() == [
        "sgd lr=0.05: 0.5 s, it 1, m 10",
        "sgd lr=0.05: 0.5 s, it 1, m 10, err 3.25 (it 1, 0.0 s ago)",
        "sgd lr=0.05: 0.5 s, it 1, m 10, err 3.25 (it 1, 0.0 s ago), done",
    ]


def test_on_a_terminal_the_bar_shows_the_live_iteration_and_the_error_age():
    screen = Terminal()
    report = Progress("kfac-tridiag", 10.0, stream=screen, every=1e9)
    report.evaluated(0, 0.0, 50.0)
    report.step(1, 1.0, 100)
    report.evaluated(1, 1.0, 40.0)
    for k in range(2, 6):
        report.step(k, float(k), 100 + k)
    report.bar.refresh()  # the bar redraws at most every 0.1 s; force the last state
    shown = screen.getvalue().split("\r")[-1]
    assert re.search(r"kfac-tridiag\s+50%\|.*\| 5\.0/10 s", shown), shown
    assert "it 5, m 105, err 40 (it 1, 4.0 s ago)" in shown
    report.close()
    assert "\n" in screen.getvalue()  # the closed bar ends its line


def test_bad_spacing_is_refused():
    with pytest.raises(ValueError, match="every must be >= 0 seconds, got -1"):
        Progress("x", 1.0, stream=io.StringIO(), every=-1)


def test_a_pseudo_terminal_that_reports_no_size_still_shows_the_bar():
    pty = pytest.importorskip("pty")  # POSIX only
    master, slave = pty.openpty()  # never sized: 0 columns, 0 lines
    try:
        with os.fdopen(slave, "w", encoding="utf-8") as screen:
            report = Progress("kfac-blockdiag", 1.0, stream=screen)
            report.step(1, 1.0, 5)
            report.close()
        shown = b""
        while True:  # everything written, in as many reads as it takes
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal side is closed and all of it was read
                break
            if not chunk:
                break
            shown += chunk
        shown = shown.decode()
    finally:
        os.close(master)
    assert "100%|" in shown and "it 1, m 5" in shown
