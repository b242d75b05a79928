"""Deep autoencoders of the paper's experiments (Hinton & Salakhutdinov 2006; spec §10.1).

Layer sizes come from the authors' code (spec ``kfac-algorithm.md`` §10.1): logistic hidden
units, a linear code layer and logistic outputs with binary cross-entropy. The network returns
the output *logits* (the sigmoid belongs to ``nn.BCEWithLogitsLoss`` and to the metric), so
its last layer is an ``nn.Linear``.

- ``mnist``: 784-1000-500-250-30-250-500-1000-784 (2,837,314 parameters), the paper's network,
  kept unchanged for the embedded 5,000-image subset: it is the model the paper's claim is
  about, and on 2 CPU cores one SGD step at batch 250 takes ~0.1 s, cheap enough for the
  5-minute main job. Only the batch sizes are scaled to the smaller set (see ``methods``).
- ``curves``: 784-400-200-100-50-25-6-25-50-100-200-400-784 (842,340 parameters), the paper's.
- ``digits``: 64-100-50-25-10-25-50-100-64, the MNIST shape scaled to 8×8 inputs (hidden widths
  ÷10, code 10): our choice for the tiny problem, not the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "autoencoder", "reconstruction_error"]

ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "mnist": (784, 1000, 500, 250, 30, 250, 500, 1000, 784),
    "curves": (784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784),
    "digits": (64, 100, 50, 25, 10, 25, 50, 100, 64),
}


def autoencoder(sizes: Sequence[int]) -> nn.Sequential:
    """Build the deep autoencoder with layer widths ``sizes`` (input, hidden…, output).

    Every hidden layer is logistic except the code layer (the narrowest), which is linear; the
    output layer is linear and returns logits.

    Args:
        sizes: widths from input to output, at least three; the first and last are equal.

    Returns:
        ``nn.Sequential`` of ``nn.Linear`` (with bias) and ``nn.Sigmoid`` modules, mapping
        ``(n, sizes[0])`` inputs to ``(n, sizes[-1])`` logits.

    Raises:
        ValueError: if there are fewer than three sizes or input and output widths differ.

    """
    if len(sizes) < 3 or sizes[0] != sizes[-1]:
        raise ValueError(f"need input, hidden and output widths with input == output, got {sizes}")
    code = min(range(1, len(sizes) - 1), key=lambda i: sizes[i])
    layers: list[nn.Module] = []
    for i in range(1, len(sizes)):
        layers.append(nn.Linear(sizes[i - 1], sizes[i]))
        if i != code and i != len(sizes) - 1:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


@torch.no_grad()
def reconstruction_error(model: nn.Module, x: torch.Tensor, chunk: int = 10000) -> float:
    r"""Compute the paper's reported metric, the squared reconstruction error of the output mean.

    .. math::
        \frac{1}{n} \sum_{c=1}^{n} \bigl\lVert \sigma(f(x_c)) - x_c \bigr\rVert^2,

    summed over pixels and averaged over cases, with the sigmoid probabilities as the output
    mean (spec §10.1, the authors' ``errtype = 'L2'``). Accumulated in float64.

    Args:
        model: maps ``(n, d)`` inputs to ``(n, d)`` logits.
        x: ``(n, d)`` images, also the targets.
        chunk: cases per forward pass, to bound memory.

    Returns:
        The error, a Python float (``inf`` when the network outputs a non-finite value).

    """
    total = 0.0
    for part in x.split(chunk):
        error = ((torch.sigmoid(model(part)) - part) ** 2).sum(dtype=torch.float64)
        total += float(error)
    return total / x.shape[0] if math.isfinite(total) else float("inf")
