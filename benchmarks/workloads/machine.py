"""What the timings depend on: the machine, the software, the threads and the load.

On a shared machine the load is part of every figure: :class:`LoadMeter` gives the load average
at a run's start and end and the share of the CPUs that *other* processes used meanwhile (from
``/proc/stat`` and the CPU time of this process and its children; ``None`` off Linux).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .._report import machine

__all__ = ["LoadMeter", "facts"]


def _busy_jiffies() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        return sum(values) - values[3] - values[4]  # all but idle and iowait
    return None


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the kfac-jax worker)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """Measures the machine's load from construction to :meth:`result`."""

    def __init__(self) -> None:
        self.start_load = _loadavg()
        self.busy = _busy_jiffies()
        self.cpu = _cpu_seconds()
        self.wall = time.perf_counter()

    def result(self) -> dict[str, Any]:
        """Load averages at start and end, and other processes' share of all CPUs (0–1)."""
        wall = time.perf_counter() - self.wall
        busy = _busy_jiffies()
        other = None
        if self.busy is not None and busy is not None and wall > 0:
            ticks = os.sysconf("SC_CLK_TCK")
            total = (busy - self.busy) / ticks
            ours = _cpu_seconds() - self.cpu
            other = round(max(0.0, total - ours) / (wall * (os.cpu_count() or 1)), 3)
        return {"loadavg_start": self.start_load, "loadavg_end": _loadavg(),
                "other_cpu_share": other}


def facts() -> dict[str, Any]:
    """The machine and software, for the results' provenance."""
    commit = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    return {
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
    }
