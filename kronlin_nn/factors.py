r"""Kronecker factors of the Fisher for one batch (paper §3, §5; spec §1–§2).

For layer ``i`` with inputs :math:`\bar a` (homogeneous coordinate included when the layer
has a bias) and output gradients :math:`g`, K-FAC approximates the layer's Fisher block by

.. math::
    F_{i,i} \approx \bar A_{i-1,i-1} \otimes G_{i,i}, \qquad
    \bar A = \tfrac1n \textstyle\sum_n \bar a_n \bar a_n^\top, \qquad
    G = \kappa \, \tfrac1n \textstyle\sum_n E[\tilde g_n \tilde g_n^\top]

(the paper's column-stacking order; in kronlin's row-major layout the block is
``Kron(G, A)`` acting on ``[W | b].reshape(-1)``). Here :math:`\tilde g_n` is the gradient
of the per-case negative log-likelihood :math:`\ell` with respect to the layer output, for a
target drawn from the model ("mc"), the data's target ("empirical"), or exactly in
expectation through a square root of the output Fisher ("exact").

**Scaling convention.** :math:`\kappa = sN`, where ``loss_fn`` computes
:math:`s\sum_{n=1}^N \ell_n` on a batch of ``N`` cases (:meth:`PredictiveDistribution.scale`).
Then :math:`\bar A \otimes G` approximates the Fisher (= the generalized Gauss–Newton matrix,
these losses having canonical links) of the objective exactly as ``loss_fn`` defines it,
reduction included; for one case and ``fisher="exact"`` it *equals* the exact GGN block
:math:`\bar a\bar a^\top \otimes s J^\top F_R J`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .capture import forward_recorded, homogeneous, supported_layers
from .losses import PredictiveDistribution, predictive_distribution

__all__ = ["FISHER_KINDS", "kfac_factors"]

FisherKind = Literal["mc", "empirical", "exact"]
FISHER_KINDS = ("mc", "empirical", "exact")


def check_fisher(fisher: str) -> None:
    """Raise ``ValueError`` unless ``fisher`` is one of :data:`FISHER_KINDS`."""
    if fisher not in FISHER_KINDS:
        raise ValueError(f"fisher: expected one of {FISHER_KINDS}, got {fisher!r}")


def output_vectors(
    dist: PredictiveDistribution,
    z: Tensor,
    targets: Tensor | None,
    fisher: FisherKind,
    generator: torch.Generator | None,
) -> Tensor:
    r"""The vectors to backpropagate from the outputs: shape ``(K, n, D)``.

    ``"mc"``: :math:`\nabla_z \ell(\hat y, z)` with :math:`\hat y \sim r(\cdot\mid z)` (``K = 1``);
    ``"empirical"``: the same with the data's targets; ``"exact"``: the ``K = D`` columns of
    :math:`F_R^{1/2}`, so that summing over ``K`` gives :math:`E_{\hat y}` exactly.

    Args:
        dist: the loss's predictive distribution.
        z: detached outputs, shape ``(n, D)``.
        targets: the data's targets (used by ``"empirical"`` only).
        fisher: ``"mc"``, ``"empirical"`` or ``"exact"``.
        generator: random source for ``"mc"``.

    """
    if fisher == "mc":
        return dist.output_grad(z, dist.sample_targets(z, generator))[None]
    if fisher == "empirical":
        return dist.output_grad(z, targets)[None]
    return dist.fisher_sqrt(z)


def output_gradients(z: Tensor, outputs: Sequence[Tensor], vectors: Tensor) -> list[Tensor]:
    """Backpropagate each of the ``K`` vectors from ``z`` to the layer outputs.

    Only the gradients with respect to the layer outputs are computed (no weight gradients),
    which costs about one GEMM per layer and vector. The graph is freed afterwards.

    Args:
        z: the model outputs as ``(n, D)``, part of the graph.
        outputs: the layer outputs ``s``, each of shape ``(n, d_out)``.
        vectors: shape ``(K, n, D)``.

    Returns:
        One tensor per layer of shape ``(K·n, d_out)``: the gradients stacked over ``K``.

    """
    K = vectors.shape[0]
    per_vector = [
        torch.autograd.grad(z, list(outputs), grad_outputs=vectors[k], retain_graph=k < K - 1)
        for k in range(K)
    ]
    if K == 1:
        return [g.detach() for g in per_vector[0]]
    return [torch.cat([grads[i] for grads in per_vector]).detach() for i in range(len(outputs))]


def input_factors(a_bar: Sequence[Tensor]) -> list[Tensor]:
    r""":math:`\bar A = \bar a^\top \bar a / n` per layer, ``a_bar[i]`` of shape ``(n, d)``."""
    return [a.T @ a / a.shape[0] for a in a_bar]


def gradient_factors(g: Sequence[Tensor], n: int) -> list[Tensor]:
    r""":math:`\tilde G = g^\top g / n` per layer (``g[i]`` of shape ``(K·n, d)``, summed over ``K``)."""
    return [gi.T @ gi / n for gi in g]


def cross_factors(
    a_bar: Sequence[Tensor], g: Sequence[Tensor], n: int
) -> tuple[list[Tensor], list[Tensor]]:
    r"""Moments between consecutive layers of a chain (paper §4.3; spec §2.1).

    Returns ``(A_cross, G_cross)`` with ``A_cross[i]`` :math:`= \bar a_{(i)}^\top \bar a_{(i+1)} / n`
    (inputs of layers ``i`` and ``i+1``, shape ``(d_in_i (+1), d_in_{i+1} (+1))``) and
    ``G_cross[i]`` :math:`= g_{(i)}^\top g_{(i+1)} / n` (shape ``(d_out_i, d_out_{i+1})``).
    """
    A_cross = [a_bar[i].T @ a_bar[i + 1] / n for i in range(len(a_bar) - 1)]
    G_cross = [g[i].T @ g[i + 1] / n for i in range(len(g) - 1)]
    return A_cross, G_cross


def kfac_factors(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    fisher: FisherKind = "mc",
    *,
    generator: torch.Generator | None = None,
) -> dict[nn.Linear, tuple[Tensor, Tensor]]:
    r"""The Kronecker factors ``(A, G)`` of every trainable ``nn.Linear`` for one batch.

    Stateless: one forward pass and one backward pass per output vector (``D`` of them for
    ``fisher="exact"``); parameters and their ``.grad`` are untouched.

    Args:
        model: the network; its trainable parameters must all belong to ``nn.Linear`` layers,
            whose inputs are ``(n, d_in)``.
        loss_fn: ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss`` (reduction
            ``"mean"`` or ``"sum"``); its reduction sets :math:`\kappa`.
        inputs: a batch of ``N`` cases, ``model(inputs)`` of shape ``(N, …)``.
        targets: the batch's targets (used by ``fisher="empirical"`` only).
        fisher: ``"mc"`` (one target sampled per case from the model), ``"empirical"`` (data
            targets) or ``"exact"`` (expectation over the model's distribution).
        generator: random source for ``"mc"`` (default: torch's global generator).

    Returns:
        ``{layer: (A, G)}`` with ``A`` of shape ``(d_in + 1, d_in + 1)`` (``d_in`` without bias),
        the homogeneous coordinate last, and ``G`` of shape ``(d_out, d_out)``, scaled so that
        ``A ⊗ G`` (paper order; ``Kron(G, A)`` in kronlin) approximates the Fisher of
        ``loss_fn(model(inputs), targets)``; see the module docstring.

    Raises:
        TypeError, ValueError: an unsupported loss, model, fisher kind or input shape.

    """
    check_fisher(fisher)
    layers = supported_layers(model)
    dist = predictive_distribution(loss_fn)
    z, calls = forward_recorded(model, layers, inputs)
    n = z.shape[0]
    z = z.reshape(n, -1)
    targets = flat_targets(targets, n) if fisher == "empirical" else None
    vectors = output_vectors(dist, z.detach(), targets, fisher, generator)
    g = output_gradients(z, [c.output() for c in calls], vectors)
    a_bar = [homogeneous(c.a, layers[c.layer].bias is not None) for c in calls]
    kappa = dist.scale(n, z.shape[1]) * n
    return {
        layers[c.layer]: (A, kappa * G)
        for c, A, G in zip(calls, input_factors(a_bar), gradient_factors(g, n), strict=True)
    }


def flat_targets(targets: Tensor, n: int) -> Tensor:
    """Targets as the distributions expect them: ``(n, D)``, or class indices ``(n,)``."""
    if targets.ndim == 1 and not targets.dtype.is_floating_point:
        return targets
    return targets.reshape(n, -1)

