"""The paper's configuration of :class:`~kronlin_nn.KFAC`, as one set of keywords.

``KFAC(model, loss_fn, **kronlin_nn.PAPER)`` runs the recipe of Martens & Grosse (2015): λ₀ = 150
and η = 1e-5 on the paper's objective (each case's loss summed over its outputs, averaged over
cases; ``units="case"`` converts them to ``loss_fn``'s units at every step), the greedy γ search
of arXiv §6.6, the LM rule's constant factor, λ unbounded below and τ₂ = 1, as in the authors'
code. Every other keyword's
default is already the paper's value (T₁ = 5, T₂ = T₃ = 20, τ₁ = 1/8, ε_max = 0.95, trace-norm
π, ρ with the λ term). Keywords given beside it override nothing in it
(Python refuses duplicates); to change one of its entries, write ``{**PAPER, "damping": 1.0}``.

The defaults differ by measurement (see the configuration page of the docs): λ₀ from a search on
the first batch instead of 150 (whose units and value suit the paper's autoencoders only), γ
tied to √(λ + η), no weight decay, λ bounded below by 100 ε times the first batch's largest
curvature eigenvalue, an LM factor that compounds while ρ keeps saying the same thing, updates
that raise h on a ρ step rejected, and the quadratic model on a quarter of the batch (at least
256 cases).
"""

from __future__ import annotations

import math
from types import MappingProxyType

__all__ = ["PAPER"]

PAPER = MappingProxyType({
    "units": "case",
    "damping": 150.0,
    "weight_decay": 1e-5,
    "gamma_rule": "greedy",
    "damping_bounds": (0.0, math.inf),
    "quad_fraction": 1.0,
    "lm_streak": 1,
    "reject_uphill": False,
})
