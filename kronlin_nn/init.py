"""Sparse initialization (Martens 2010), used by Martens & Grosse (2015) for every method.

Spec ``kfac-algorithm.md`` §10.2, read from the authors' code: every unit gets ``fan_in`` (15)
incoming nonzero weights from randomly chosen units of the layer below, drawn N(0, 1)·coeff.
The source indices are drawn *with* replacement and a repeated index overwrites, so a unit can
have fewer than 15 nonzeros. Biases are 0. The code's coeff is 1 for logistic (and linear)
units, halved where the layer or its input layer is tanh, ×0.1 for softplus: pass it as
``scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["sparse_init_"]


def sparse_init_(
    model: nn.Module,
    fan_in: int = 15,
    scale: float | Sequence[float] = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Sparse-initialize every ``nn.Linear`` of ``model`` in place (spec §10.2).

    The random numbers are drawn on the CPU, layer by layer in ``model.modules()`` order, then
    copied to each weight's device and dtype: one seed gives the same network on every device.

    Args:
        model: the network; each ``nn.Linear`` weight (``d_out × d_in``) gets ``fan_in`` draws
            per row.
        fan_in: nonzero incoming weights per unit (indices with replacement: at most ``fan_in``).
        scale: coeff multiplying the N(0, 1) values: one float, or one per ``nn.Linear``.
        generator: a CPU ``torch.Generator`` for reproducibility (default: torch's global one).

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: if ``fan_in < 1``, or ``scale`` is a sequence whose length is not the
            number of ``nn.Linear`` layers.

    """
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    scales = [float(scale)] * len(linears) if isinstance(scale, int | float) else list(scale)
    if len(scales) != len(linears):
        raise ValueError(f"got {len(scales)} scales for {len(linears)} nn.Linear layers")
    for layer, coeff in zip(linears, scales, strict=True):
        d_out, d_in = layer.weight.shape
        cols = torch.randint(d_in, (d_out, fan_in), generator=generator)
        values = coeff * torch.randn(d_out, fan_in, generator=generator)
        flat = (torch.arange(d_out)[:, None] * d_in + cols).reshape(-1)
        keep = _last_occurrences(flat)
        weight = torch.zeros(d_out * d_in)
        weight[flat[keep]] = values.reshape(-1)[keep]
        with torch.no_grad():
            layer.weight.copy_(weight.view(d_out, d_in))
            if layer.bias is not None:
                layer.bias.zero_()
    return model


def _last_occurrences(keys: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of each distinct value of the 1-D ``keys``.

    A repeated index keeps its last draw, as the MATLAB code's ``W(j, idx) = ...`` does.
    Deduplicating first makes the write deterministic (indexed writes with duplicates are not).
    """
    order = torch.argsort(keys, stable=True)
    ordered = keys[order]
    is_last = torch.ones_like(ordered, dtype=torch.bool)
    is_last[:-1] = ordered[1:] != ordered[:-1]
    return order[is_last]
