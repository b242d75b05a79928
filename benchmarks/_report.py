"""Saving what a comparison script prints as a Markdown fragment for the documentation.

The docs show measured results only from files (``docs/results/``, see its README); the
scripts write those files themselves, so no number is ever copied by hand.
"""

from __future__ import annotations

import contextlib
import io
import platform
import shlex
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def machine() -> str:
    """The CPU model (and the GPU, if torch sees one): what the numbers depend on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = ""
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name()}"
    return f"{cpu}{gpu}"


@contextlib.contextmanager
def recorded(path: str | None) -> Iterator[None]:
    """Print as usual; with ``path``, also save the printed text as a Markdown code block.

    The fragment names the command, the date and the machine above the block.
    """
    if path is None:
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    command = shlex.join(["python", *sys.argv])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(
        f"`{command}` on {date.today().isoformat()}, {machine()}:\n\n"
        f"```text\n{buffer.getvalue().rstrip()}\n```\n"
    )
