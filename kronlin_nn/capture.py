r"""Capturing what K-FAC needs from the training forward pass (paper §2, Algorithm 1).

For every supported layer ``s = W a + b`` (``nn.Linear``) K-FAC needs the layer inputs ``a``
(activations, paper :math:`a_{i-1}`) and outputs ``s`` of the forward pass; the output
gradients :math:`g = \mathcal{D}s` come later from backpropagating chosen vectors to ``s``
(see :mod:`kronlin_nn.factors`). The bias is the paper's homogeneous coordinate: the layer's
parameter matrix is ``[W | b]`` of shape ``(d_out, d_in + 1)`` acting on ``ā = [a; 1]``.

This module finds the supported layers of a model, records their inputs and outputs with
forward hooks, and checks that they form a chain (needed by the block-tridiagonal
approximation, paper §4.3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LayerIO",
    "check_chain",
    "forward_recorded",
    "homogeneous",
    "record_layers",
    "supported_layers",
]


def supported_layers(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of ``model`` that K-FAC optimizes, in registration order.

    A layer is optimized when its weight requires a gradient; its bias (if any) must then
    require one too. Every other trainable parameter is an error, since K-FAC would have no
    curvature block for it.

    Raises:
        ValueError: no trainable ``nn.Linear`` layer, a trainable parameter outside them, or a
            layer whose weight and bias disagree on ``requires_grad``.

    """
    layers, owned = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            if module.bias is not None and not module.bias.requires_grad:
                raise ValueError(
                    f"model.{name}: expected the bias to require grad like the weight (the bias is "
                    f"the layer's homogeneous coordinate), got a frozen bias"
                )
            layers.append(module)
            owned.update(id(p) for p in module.parameters())
    if not layers:
        raise ValueError("model: expected at least one trainable nn.Linear layer, found none")
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in owned:
            raise ValueError(
                f"model.{name}: K-FAC supports trainable parameters of nn.Linear layers only; got "
                f"a trainable parameter of shape {tuple(p.shape)} elsewhere (freeze it with "
                f"requires_grad_(False) or drop it)"
            )
    return layers


@dataclass
class LayerIO:
    """One call of a supported layer during a forward pass.

    Attributes:
        layer: index of the layer in the optimizer's layer list.
        a: the layer input, shape ``(n, d_in)`` (no homogeneous coordinate).
        s: the layer output, shape ``(n, d_out)``, part of the autograd graph.
        node: ``s.grad_fn`` when recorded (used to trace the chain).
        input_node: ``a.grad_fn`` when recorded (``None`` for a leaf input).
        version: ``s._version`` when recorded (detects later in-place changes).

    """

    layer: int
    a: Tensor
    s: Tensor
    node: object
    input_node: object
    version: int

    def first_rows(self, m: int) -> LayerIO:
        """The record restricted to the first ``m`` cases (views, same version counter)."""
        return LayerIO(self.layer, self.a[:m], self.s[:m], self.node, self.input_node,
                       self.version)

    def output(self) -> Tensor:
        """The recorded output ``s``, checked to be unmodified since the forward pass.

        Raises:
            RuntimeError: ``s`` was modified in place (e.g. by ``nn.ReLU(inplace=True)``).

        """
        if self.s._version != self.version:
            raise RuntimeError(
                f"layer {self.layer}: its output was modified in place after the forward pass "
                f"(e.g. an activation with inplace=True); K-FAC needs it unchanged"
            )
        return self.s


@contextlib.contextmanager
def record_layers(layers: Sequence[nn.Linear]) -> Iterator[list[LayerIO]]:
    """Record the input and output of every call of ``layers`` inside the ``with`` block.

    Yields the list that the calls are appended to, in call order.

    Raises:
        ValueError: (during the forward pass) a layer input that is not 2-D ``(n, d_in)``.

    """
    calls: list[LayerIO] = []
    index = {id(m): i for i, m in enumerate(layers)}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        a = args[0]
        if a.ndim != 2:
            raise ValueError(
                f"layer {index[id(module)]} ({module}): K-FAC expects inputs of shape (n, d_in), "
                f"got {tuple(a.shape)}; flatten the extra dimensions into the batch first"
            )
        calls.append(LayerIO(index[id(module)], a.detach(), output, output.grad_fn,
                             a.grad_fn, output._version))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def forward_recorded(
    model: nn.Module, layers: Sequence[nn.Linear], inputs: Tensor
) -> tuple[Tensor, list[LayerIO]]:
    """Run ``model(inputs)`` and return its output with one :class:`LayerIO` per layer.

    The list is in forward (call) order.

    Raises:
        ValueError: a supported layer was called more than once, or not at all (weight
            sharing and skipped layers have no K-FAC block here).

    """
    with record_layers(layers) as calls:
        z = model(inputs)
    seen = [c.layer for c in calls]
    if sorted(seen) != list(range(len(layers))):
        counts = {i: seen.count(i) for i in range(len(layers)) if seen.count(i) != 1}
        raise ValueError(
            f"model: expected each trainable nn.Linear to be called exactly once per forward "
            f"pass; got call counts {counts} (layer index: calls)"
        )
    return z, calls


def homogeneous(a: Tensor, bias: bool) -> Tensor:
    """``ā = [a, 1]`` (the homogeneous coordinate appended as a last column) if ``bias``, else ``a``."""
    if not bias:
        return a
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)


def check_chain(calls: Sequence[LayerIO]) -> None:
    """Check that the layers, in call order, form a chain: each consumes only its predecessor.

    The input of the ``i``-th called layer must depend, in the autograd graph, on the output of
    layer ``i − 1`` and on no other layer's output (no skip connections); the first may depend
    on none. This is what the block-tridiagonal approximation assumes (paper §4.3).

    Raises:
        ValueError: naming the first layer whose input violates this.

    """
    outputs = {c.node: c.layer for c in calls if c.node is not None}
    for pos, call in enumerate(calls):
        reached = _layers_upstream(call.input_node, outputs)
        expected = {calls[pos - 1].layer} if pos > 0 else set()
        if reached != expected:
            raise ValueError(
                "approx='tridiag': the trainable nn.Linear layers must form a chain in forward "
                f"order (each fed only by the previous one); the input of layer {call.layer} "
                f"(call {pos}) depends on layers {sorted(reached)}, expected {sorted(expected)}"
            )


def _layers_upstream(node: object, outputs: dict) -> set[int]:
    """Layers whose output nodes are reachable from ``node``, without passing through one."""
    found: set[int] = set()
    stack, visited = [node], set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in visited:
            continue
        visited.add(id(current))
        if current in outputs:
            found.add(outputs[current])
            continue
        stack.extend(n for n, _ in current.next_functions)
    return found
