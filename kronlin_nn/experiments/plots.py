"""Figures of the autoencoder experiment, in the style of the paper's Figure 4 (ICML §7).

Training error (log scale) against timed seconds, as in the paper's Figure 4, and against
iterations, as in its per-iteration plots (arXiv Fig. 11). One line per optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works without a display

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

__all__ = ["plot_error"]


def plot_error(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    labels: Mapping[str, str],
    *,
    x: str,
    title: str,
    path: str | Path,
) -> None:
    """Plot each run's training error against ``x`` on a log error axis and save it.

    Args:
        runs: method name to records with ``x`` and ``"train_error"`` (see
            :func:`kronlin_nn.experiments.training.train`); non-finite errors are skipped.
        labels: method name to legend label.
        x: the abscissa, ``"seconds"`` or ``"iteration"``.
        title: the figure's title.
        path: the PNG file to write.

    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, records in runs.items():
        points = [(r[x], r["train_error"]) for r in records if math.isfinite(r["train_error"])]
        ax.plot(*zip(*points, strict=True), marker=".", label=labels.get(name, name))
    ax.set_yscale("log")
    ax.set_xlabel("time (s, timed steps only)" if x == "seconds" else "iteration")
    ax.set_ylabel("training error (squared, per case)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
