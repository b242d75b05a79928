r"""Recording what K-FAC needs from a forward pass (paper §2, Algorithm 1).

Every curvature block (:mod:`kronlin_nn.blocks`) turns the inputs and outputs of its module's
calls into statistics; the output gradients :math:`g = \mathcal{D}s` come later from
backpropagating chosen vectors to the recorded outputs ``s`` (:mod:`kronlin_nn.factors`).

- :class:`Recorder`: forward hooks on a list of modules that append one :class:`LayerIO` per
  call while recording is on. The hooks can stay registered between passes; nothing is kept
  while recording is off. The blocks consume the records without caring who ran the forward
  pass.
- :func:`forward_recorded`: one recorded forward pass, checked to call every module.
- :func:`check_chain`: whether the chain modules feed each other in order, as the
  block-tridiagonal approximation needs (paper §4.3).
- :func:`homogeneous`: :math:`\bar a = [a; 1]`, the bias as the homogeneous coordinate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LayerIO",
    "Recorder",
    "check_chain",
    "forward_recorded",
    "group_calls",
    "homogeneous",
]


@dataclass
class LayerIO:
    """One call of a recorded module during a forward pass.

    All tensors have the cases as their first dimension. Calls of one module within one
    recorded forward pass see the same cases (weight sharing): row ``i`` of each is case ``i``.

    Attributes:
        layer: index of the module in the recorder's module list.
        inputs: the positional inputs of the call, detached.
        s: the output, part of the autograd graph.
        node: ``s.grad_fn`` when recorded (used to trace the chain).
        input_node: the first input's ``grad_fn`` when recorded (``None`` for a leaf input).
        version: ``s._version`` when recorded (detects later in-place changes).

    """

    layer: int
    inputs: tuple
    s: Tensor
    node: object
    input_node: object
    version: int

    @property
    def a(self) -> Tensor:
        """The first input (the layer input :math:`a` of a linear layer)."""
        return self.inputs[0]

    def first_rows(self, m: int) -> LayerIO:
        """The record restricted to the first ``m`` cases (views, same version counter)."""
        inputs = tuple(x[:m] if isinstance(x, Tensor) else x for x in self.inputs)
        return LayerIO(self.layer, inputs, self.s[:m], self.node, self.input_node, self.version)

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


class Recorder:
    """Forward hooks that record every call of ``modules`` while recording is on.

    Args:
        modules: the modules to record; :attr:`LayerIO.layer` indexes this list (``None``
            entries are not recorded; a module listed twice gets a record for each entry).

    The hooks are registered by :meth:`attach` (or by :meth:`recording`) and stay until
    :meth:`detach`; they record only between :meth:`start` and :meth:`stop`, so a model whose
    hooks stay attached costs nothing outside K-FAC's passes.

    """

    def __init__(self, modules: Sequence[nn.Module | None]):
        self.modules = list(modules)
        self.calls: list[LayerIO] = []
        self._index: dict[int, list[int]] = {}
        for i, m in enumerate(self.modules):
            if m is not None:
                self._index.setdefault(id(m), []).append(i)
        self._handles: list = []
        self._on = False

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if not self._handles:
            unique = {id(m): m for m in self.modules if m is not None}
            self._handles = [m.register_forward_hook(self._hook) for m in unique.values()]

    def detach(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start(self) -> None:
        """Begin recording into a fresh :attr:`calls` list."""
        self.calls = []
        self._on = True

    def stop(self) -> list[LayerIO]:
        """Stop recording; return the calls recorded since :meth:`start`, in call order."""
        self._on = False
        return self.calls

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[LayerIO]]:
        """Record inside the ``with`` block (attaching the hooks for it if they were not)."""
        attached = bool(self._handles)
        self.attach()
        self.start()
        try:
            yield self.calls
        finally:
            self.stop()
            if not attached:
                self.detach()

    def forward(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[LayerIO]]:
        """``model(inputs)`` recorded, checked to call every recorded module (see below).

        Raises:
            ValueError: a module was not called (its parameters would get no curvature).

        """
        with self.recording() as calls:
            z = model(inputs)
        called = {c.layer for c in calls}
        missing = [i for i, m in enumerate(self.modules) if m is not None and i not in called]
        if missing:
            names = ", ".join(f"{i} ({type(self.modules[i]).__name__})" for i in missing)
            raise ValueError(
                f"model: expected every module with trainable parameters to be called in the "
                f"forward pass; layers {names} were not (a module whose parameters an enclosing "
                f"module uses in its own code is never called: freeze its parameters, or give "
                f"unsupported='first_order' if no block type covers it)"
            )
        return z, calls

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not self._on:
            return
        indices = self._index[id(module)]
        if not isinstance(output, Tensor):
            raise TypeError(
                f"layer {indices[0]} ({type(module).__name__}): K-FAC records a module's output, "
                f"expected a tensor, got {type(output).__name__}"
            )
        inputs = tuple(x.detach() if isinstance(x, Tensor) else x for x in args)
        first = args[0] if args and isinstance(args[0], Tensor) else None
        for i in indices:
            self.calls.append(LayerIO(i, inputs, output, output.grad_fn,
                                      None if first is None else first.grad_fn, output._version))


def forward_recorded(
    model: nn.Module, modules: Sequence[nn.Module | None], inputs: Tensor
) -> tuple[Tensor, list[LayerIO]]:
    """Run ``model(inputs)`` and return its output with one :class:`LayerIO` per module call.

    The list is in call order; a module called twice (weight sharing) has two records.

    Raises:
        ValueError: a module was not called (its parameters would get no curvature).

    """
    return Recorder(modules).forward(model, inputs)


def group_calls(calls: Sequence[LayerIO], n_layers: int) -> list[list[LayerIO]]:
    """The calls of each layer ``0 … n_layers − 1``, in call order (empty for unrecorded layers)."""
    groups: list[list[LayerIO]] = [[] for _ in range(n_layers)]
    for call in calls:
        groups[call.layer].append(call)
    return groups


def homogeneous(a: Tensor, bias: bool) -> Tensor:
    """``ā = [a, 1]`` (the homogeneous coordinate appended on the last dimension) if ``bias``."""
    if not bias:
        return a
    return torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)


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
                "approx='tridiag': the chain layers (nn.Linear, nn.Conv2d) must form a chain in "
                f"forward order (each fed only by the previous one); the input of layer "
                f"{call.layer} (call {pos}) depends on layers {sorted(reached)}, expected "
                f"{sorted(expected)}"
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
