r"""The curvature of one batch: output vectors, output gradients, and every block's factors.

The optimizer and :func:`kfac_factors` share these steps: sample (or take, or factor) the
vectors to backpropagate from the outputs (:func:`output_vectors`), backpropagate them to the
recorded layer outputs only (:func:`output_gradients`), and let each curvature block
(:mod:`kronlin_nn.blocks`) turn its records and gradients into statistics; a chain's cross
moments come from :func:`cross_factors`. For a linear layer (paper §3, §5; spec §1–§2)
with inputs :math:`\bar a` (homogeneous coordinate included when the layer
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

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .blocks import CurvatureBlock, model_blocks
from .capture import forward_recorded, group_calls
from .losses import PredictiveDistribution, predictive_distribution

__all__ = ["FISHER_KINDS", "BlockFactors", "kfac_factors"]

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
    scale: Tensor | None = None,
    rows: tuple[Sequence[int], int] | None = None,
) -> Tensor:
    r"""The vectors to backpropagate from the outputs: shape ``(K, n, D)``.

    ``"mc"``: :math:`\nabla_z \ell(\hat y, z)` with :math:`\hat y \sim r(\cdot\mid z)` (``K = 1``);
    ``"empirical"``: the loss's gradient for the data's targets; ``"exact"``: the ``K = D``
    columns of :math:`F_R^{1/2}`, so that summing over ``K`` gives :math:`E_{\hat y}` exactly.

    Args:
        dist: the loss's predictive distribution.
        z: detached outputs, shape ``(n, D)``.
        targets: the data's targets (used by ``"empirical"`` only).
        fisher: ``"mc"``, ``"empirical"`` or ``"exact"``.
        generator: random source for ``"mc"``.
        scale: ``(n, D)`` or ``(n, 1)`` factors of the loss's weights
            (:attr:`~kronlin_nn.losses.SubBatchWeights.outputs`), or ``None``.
        rows: ``(positions, N)``: the cases of ``z`` are rows ``positions`` of a batch of
            ``N`` cases (a shard of a union batch); ``"mc"`` then draws the sample of all ``N``
            cases and gives each case its row, so that a case's target does not depend on how
            the batch is split. Each distribution's sample of a row depends on that row's
            outputs and random draws only. Default: the ``n`` cases are the batch.

    """
    if fisher == "mc":
        vectors = dist.output_grad(z, _sample(dist, z, generator, rows))[None]
    elif fisher == "empirical":
        vectors = dist.data_grad(z, targets)[None]
    else:
        vectors = dist.fisher_sqrt(z)
    return vectors if scale is None else vectors * scale


def _sample(dist: PredictiveDistribution, z: Tensor, generator: torch.Generator | None,
            rows: tuple[Sequence[int], int] | None) -> Tensor:
    """Targets for the cases ``z`` drawn as rows ``rows`` of a batch (see :func:`output_vectors`)."""
    if rows is None or rows[1] == z.shape[0]:
        return dist.sample_targets(z, generator)
    index = torch.as_tensor(rows[0], dtype=torch.long, device=z.device)
    union = z.new_zeros(rows[1], z.shape[1]).index_copy_(0, index, z)
    return dist.sample_targets(union, generator)[index]


def output_gradients(z: Tensor, outputs: Sequence[Tensor], vectors: Tensor) -> list[Tensor]:
    """Backpropagate each of the ``K`` vectors from ``z`` to the recorded outputs.

    Only the gradients with respect to the recorded outputs are computed (no weight
    gradients), which costs about one GEMM per layer and vector. The graph is freed afterwards.

    Args:
        z: the model outputs as ``(n, D)``, part of the graph.
        outputs: the recorded outputs ``s``, each of shape ``(n, …)``.
        vectors: shape ``(K, n, D)``.

    Returns:
        One tensor per output of shape ``(K·n, …)``: the gradients stacked over ``K``.

    """
    if not outputs:  # nothing recorded (first-order blocks only)
        return []
    K = vectors.shape[0]
    per_vector = [
        torch.autograd.grad(z, list(outputs), grad_outputs=vectors[k], retain_graph=k < K - 1)
        for k in range(K)
    ]
    if K == 1:
        return [g.detach() for g in per_vector[0]]
    return [torch.cat([grads[i] for grads in per_vector]).detach() for i in range(len(outputs))]


def cross_factors(
    a_bar: Sequence[Tensor], g: Sequence[Tensor], n: int
) -> tuple[list[Tensor], list[Tensor]]:
    r"""Moments between consecutive layers of a chain (paper §4.3; spec §2.1).

    Args:
        a_bar: per layer, its input rows :math:`\bar a` (``(n·R, d_a)``, homogeneous
            coordinate included), the same ``R`` locations per case for every layer.
        g: per layer, its output-gradient rows (``(K·n·R, d_out)``), in the same order.
        n: the number of cases.

    Returns ``(A_cross, G_cross)`` with ``A_cross[i]`` :math:`= \bar a_{(i)}^\top \bar a_{(i+1)} / (nR)`
    (inputs of layers ``i`` and ``i+1``, shape ``(d_a_i, d_a_{i+1})``) and ``G_cross[i]``
    :math:`= g_{(i)}^\top g_{(i+1)} / n` (shape ``(d_out_i, d_out_{i+1})``): location ``r`` of
    layer ``i`` is paired with location ``r`` of layer ``i + 1``.

    """
    A_cross = [a_bar[i].T @ a_bar[i + 1] / a_bar[i].shape[0] for i in range(len(a_bar) - 1)]
    G_cross = [g[i].T @ g[i + 1] / n for i in range(len(g) - 1)]
    return A_cross, G_cross


class BlockFactors(Mapping):
    """``{module: factors}`` of every curvature block, also indexed by names.

    Iterating gives the modules in block order. A key may be a module, its name in the model
    (``"features.0"``; ``""`` for the model itself) or the name of one of its parameters
    (``"features.0.weight"``).
    """

    def __init__(self, blocks: Sequence[CurvatureBlock], factors: Sequence[tuple]):
        self._by_module = {b.module: f for b, f in zip(blocks, factors, strict=True)}
        self._by_name = {b.name: f for b, f in zip(blocks, factors, strict=True)}
        for b, f in zip(blocks, factors, strict=True):
            self._by_name.update({name: f for name in b.param_names if name is not None})

    def __getitem__(self, key: nn.Module | str) -> tuple:
        table = self._by_name if isinstance(key, str) else self._by_module
        if key not in table:
            raise KeyError(f"{key!r}: no curvature block of this model has that module or name")
        return table[key]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._by_module)

    def __len__(self) -> int:
        return len(self._by_module)


def kfac_factors(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    fisher: FisherKind = "mc",
    *,
    generator: torch.Generator | None = None,
    unsupported: str = "diagonal",
) -> BlockFactors:
    r"""The factors of every curvature block of ``model`` for one batch.

    Stateless: one forward pass and one backward pass per output vector (``D`` of them for
    ``fisher="exact"``); parameters and their ``.grad`` are untouched.

    Args:
        model: the network; every trainable parameter gets a block (:mod:`kronlin_nn.blocks`).
        loss_fn: ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss`` (reduction
            ``"mean"`` or ``"sum"``, any other option: :mod:`kronlin_nn.losses`); its reduction
            sets :math:`\kappa`.
        inputs: a batch of ``N`` cases, ``model(inputs)`` of shape ``(N, …)``.
        targets: the batch's targets (by ``fisher="empirical"``, and for the loss's weights:
            ``ignore_index``, class weights, ``pos_weight``).
        fisher: ``"mc"`` (one target sampled per case from the model), ``"empirical"`` (data
            targets) or ``"exact"`` (expectation over the model's distribution).
        generator: random source for ``"mc"`` (default: torch's global generator).
        unsupported: what parameters without a registered block get
            (:data:`~kronlin_nn.blocks.UNSUPPORTED`); ``"first_order"`` blocks have no
            factors and are left out.

    Returns:
        A mapping from each block's module (or its name, or a parameter's name) to its
        factors, scaled so that they approximate the Fisher of ``loss_fn(model(inputs),
        targets)`` (see the module docstring):

        - Kronecker blocks (``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``):
          :class:`~kronlin_nn.blocks.KroneckerFactors` ``(A, G)``, ``A`` of shape
          ``(d_a, d_a)`` (the homogeneous coordinate last; a vector ``(V,)`` for an
          embedding's diagonal factor) and ``G`` of shape ``(d_out, d_out)``, the block being
          ``A ⊗ G`` (paper order; ``Kron(G, A)`` in kronlin);
        - diagonal blocks: :class:`~kronlin_nn.blocks.DiagonalFactors`, the Fisher's
          diagonal of each parameter, shaped like it.

    Raises:
        TypeError, ValueError: an unsupported loss, model, fisher kind or input shape.

    """
    check_fisher(fisher)
    blocks = [b for b in model_blocks(model, unsupported) if b.recorded]
    dist = predictive_distribution(loss_fn)
    dist.check_fisher(fisher)
    z, calls = forward_recorded(model, [b.module for b in blocks], inputs)
    dist.check_output(z)
    per_block = group_calls(calls, len(blocks))
    for block, block_calls in zip(blocks, per_block, strict=True):
        block.check(block_calls)
    n = z.shape[0]
    z = z.reshape(n, -1)
    weights = dist.weights(targets, n, z.dtype)
    y = flat_targets(targets, n) if fisher == "empirical" else None
    vectors = output_vectors(dist, z.detach(), y, fisher, generator, weights.outputs)
    grads = iter(output_gradients(z, [c.output() for cs in per_block for c in cs], vectors))
    kappa = dist.scale(n, z.shape[1]) * n
    factors = []
    for block, block_calls in zip(blocks, per_block, strict=True):
        block_grads = [next(grads) for _ in block_calls]
        stats = block.batch_statistics(block_calls, block_grads, n, weights.inputs)
        factors.append(block.factors(stats, kappa))
    return BlockFactors(blocks, factors)


def flat_targets(targets: Tensor, n: int) -> Tensor:
    """Targets as the distributions expect them: ``(n, D)``, or class indices ``(n,)``."""
    if targets.ndim == 1 and not targets.dtype.is_floating_point:
        return targets
    return targets.reshape(n, -1)

