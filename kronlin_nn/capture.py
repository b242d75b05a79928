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
- :class:`PassRecorder`: hooks on the model, its layers and the loss module that record the
  user's own forward passes (``loss = loss_fn(model(x), y); loss.backward(); opt.step()``):
  the model's input, every layer's call, the loss's arguments and value, and the weight with
  which backward passes reached the loss. One :class:`Pass` per forward pass of the model;
  several passes backpropagated before a step are micro-batches of one batch
  (:func:`merged_calls`). :func:`own_passes` marks K-FAC's own passes, which it ignores.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "LayerIO",
    "Pass",
    "PassRecorder",
    "Recorder",
    "check_chain",
    "forward_recorded",
    "group_calls",
    "homogeneous",
    "merged_calls",
    "own_passes",
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


# -- the user's own forward passes -------------------------------------------------------------
_OWN_PASSES = 0  # > 0 while K-FAC runs passes of its own: no user pass is recorded then


@contextlib.contextmanager
def own_passes() -> Iterator[None]:
    """K-FAC's own passes run inside: every :class:`PassRecorder` ignores them."""
    global _OWN_PASSES
    _OWN_PASSES += 1
    try:
        yield
    finally:
        _OWN_PASSES -= 1


@dataclass(eq=False)
class Pass:
    """One forward pass of the model in the user's code, as a :class:`PassRecorder` saw it.

    Attributes:
        inputs: the model's input (detached).
        calls: the recorded modules' calls, in call order (outputs detached; ``layer`` indexes
            the recorder's module list).
        autocast: ``(device type, dtype)`` of the autocast region the pass ran in, or ``None``.
        z, targets: the arguments of the ``loss_fn`` call on the model's output (detached),
            ``None`` until that call.
        loss: the value of that call (detached, 0-d).
        weight: the sum of the gradients that backward passes sent into that value (0-d), or
            ``None`` while it has not been backpropagated: ``loss.backward()`` gives 1, a
            micro-batch's ``(loss / k).backward()`` gives ``1/k``, a ``GradScaler`` its scale.
        error: why the pass cannot be used by a step (``None`` if it can).

    """

    inputs: Tensor | None
    calls: list[LayerIO] = field(default_factory=list)
    autocast: tuple[str, torch.dtype] | None = None
    z: Tensor | None = None
    targets: Tensor | None = None
    loss: Tensor | None = None
    weight: Tensor | None = None
    error: str | None = None
    accumulated: bool = False  # its gradient is in .grad (the watched parameter says so)
    output_ref: weakref.ref | None = None
    loss_ref: weakref.ref | None = None

    def alive(self) -> bool:
        """Whether the pass can still be backpropagated (its output or loss is referenced)."""
        if self.weight is not None:
            return True
        ref = self.loss_ref if self.loss is not None else self.output_ref
        return ref is not None and ref() is not None


class PassRecorder:
    """Record the user's forward passes of ``model`` and the ``loss_fn`` calls on their outputs.

    Args:
        model: the network.
        modules: the modules whose calls to record (``None`` entries are not recorded), as for
            :class:`Recorder`.
        loss_fn: the loss module.
        watched: a trainable parameter whose ``.grad`` tells when the gradients were reset
            (``zero_grad``) between backward passes.

    The hooks stay registered while the recorder lives (they are removed when it is garbage
    collected, and a copy or a pickle of the model gets inert ones). A pass is recorded when the
    model is called with gradients enabled outside K-FAC's own passes (:func:`own_passes`); a
    pass whose output and loss are no longer referenced without having been backpropagated is
    dropped at the next pass.

    Attributes:
        passes: the recorded passes, oldest first.
        stray: a message, once a ``loss_fn`` call on something that is not a recorded model
            output was backpropagated.
        compiled: whether the model ran under ``torch.compile`` (compiled after the recorder
            was built), whose graphs the hooks do not record reliably.
        stale: whether a backward pass added to gradients left over from before the last step.

    """

    def __init__(self, model: nn.Module, modules: Sequence[nn.Module | None], loss_fn: nn.Module,
                 watched: Tensor):
        self.model, self.loss_fn, self.watched = model, loss_fn, watched
        self._index: dict[int, list[int]] = {}
        for i, m in enumerate(modules):
            if m is not None:
                self._index.setdefault(id(m), []).append(i)
        self.passes: list[Pass] = []
        self.stray: str | None = None
        self.stale = False
        self.compiled = False  # the model ran under torch.compile (built after the recorder)
        self._current: Pass | None = None
        self._grad_state: tuple[int, int] | None = None  # (id, version) of watched.grad
        self._after_step = False
        me = weakref.ref(self)
        unique = {id(m): m for m in modules if m is not None}
        handles = [
            model.register_forward_pre_hook(_Hook(me, "_model_started"), with_kwargs=True),
            model.register_forward_hook(_Hook(me, "_model_done"), always_call=True),
            loss_fn.register_forward_hook(_Hook(me, "_loss_called"), with_kwargs=True),
            watched.register_post_accumulate_grad_hook(_Hook(me, "_accumulated")),
            *(m.register_forward_hook(_Hook(me, "_layer_called")) for m in unique.values()),
        ]
        weakref.finalize(self, _remove_all, handles)

    def backpropagated(self) -> list[Pass]:
        """The passes whose loss was backpropagated since the last :meth:`clear`, in order."""
        return [p for p in self.passes if p.weight is not None]

    def clear(self) -> None:
        """Forget every pass (a step consumed them); the gradients now belong to the step."""
        self.passes, self.stray, self.stale, self.compiled = [], None, False, False
        self.mark_step()

    def mark_step(self) -> None:
        """Remember the state of ``watched.grad`` that a step leaves behind."""
        grad = self.watched.grad
        self._grad_state = None if grad is None else (id(grad), grad._version)
        self._after_step = True

    def discard_backpropagated(self) -> None:
        """Drop the passes whose gradients were erased (``zero_grad``)."""
        self.passes = [p for p in self.passes if p.weight is None]
        self.stale = False

    # -- hooks ----------------------------------------------------------------------------------
    def _model_started(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_compiling():
            self.compiled = True
            return
        if module is not self.model or self._current is not None or not self._recording():
            return
        self.passes = [p for p in self.passes if p.alive()]
        x = args[0] if len(args) == 1 and not kwargs else None
        current = Pass(None if not isinstance(x, Tensor) else x.detach())
        if current.inputs is None:
            current.error = (
                f"model: K-FAC evaluates the model on sub-batches of its input, expected one "
                f"tensor argument, got {len(args)} positional and {sorted(kwargs)} keyword ones"
            )
        device = current.inputs.device.type if current.inputs is not None else "cpu"
        if torch.is_autocast_enabled(device):
            current.autocast = (device, torch.get_autocast_dtype(device))
        self._current = current

    def _model_done(self, module: nn.Module, args: tuple, output: object) -> None:
        current = self._current
        if module is not self.model or current is None:
            return
        self._current = None
        if isinstance(output, Tensor):
            current.output_ref = weakref.ref(output)
        else:
            current.error = (f"model: K-FAC needs the model's output to be a tensor, got "
                             f"{type(output).__name__}")
        self.passes.append(current)

    def _layer_called(self, module: nn.Module, args: tuple, output: object) -> None:
        current = self._current
        if current is None or id(module) not in self._index:
            return
        indices = self._index[id(module)]
        if not isinstance(output, Tensor):
            current.error = (f"layer {indices[0]} ({type(module).__name__}): K-FAC records a "
                             f"module's output, expected a tensor, got {type(output).__name__}")
            return
        inputs = tuple(x.detach() if isinstance(x, Tensor) else x for x in args)
        s = output.detach()  # shares the version counter: later in-place changes are seen
        current.calls.extend(LayerIO(i, inputs, s, None, None, output._version) for i in indices)

    def _loss_called(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        if module is not self.loss_fn or not self._recording():
            return
        values = list(args) + [kwargs[k] for k in ("input", "target") if k in kwargs]
        z, y = (values + [None, None])[:2]
        found = next((p for p in reversed(self.passes)
                      if p.output_ref is not None and p.output_ref() is z), None)
        if found is None:
            if output.requires_grad:
                output.register_hook(_Hook(weakref.ref(self), "_stray_backward"))
            return
        if found.loss is not None:
            found.error = ("loss_fn: called twice on the output of one forward pass; K-FAC's "
                           "objective is one loss_fn(model(x), y) per forward pass")
        found.z, found.targets, found.loss = z.detach(), y.detach(), output.detach()
        found.loss_ref = weakref.ref(output)
        if output.requires_grad:
            output.register_hook(_Hook(weakref.ref(self), "_backward", found))

    def _backward(self, found: Pass, grad: Tensor) -> None:
        current = self.watched.grad
        state = None if current is None else (id(current), current._version)
        if state is not None and state == self._grad_state:
            self.stale = self.stale or self._after_step  # added to a step's gradients
        else:  # reset (zero_grad) since the last accumulation or step
            self.passes = [p for p in self.passes if not p.accumulated]
            self.stale = False
        found.weight = grad.detach() if found.weight is None else found.weight + grad.detach()

    def _stray_backward(self, grad: Tensor) -> None:
        self.stray = ("loss_fn: a call on a tensor that is not the output of a recorded "
                      "model(x) was backpropagated; K-FAC's objective is loss_fn(model(x), y) "
                      "with the model itself (no transformation between them: put it inside "
                      "the model)")

    def _accumulated(self, param: Tensor) -> None:
        for p in self.passes:
            if p.weight is not None:
                p.accumulated = True
        self._grad_state = (id(param.grad), param.grad._version)
        self._after_step = False

    @staticmethod
    def _recording() -> bool:
        return _OWN_PASSES == 0 and torch.is_grad_enabled()


class _Hook:
    """A hook that calls a recorder's method while the recorder lives.

    A copy or a pickle of the model (``copy.deepcopy``, ``torch.save``) gets an inert hook:
    only the model K-FAC was given records.
    """

    def __init__(self, recorder: weakref.ref, method: str, *bound: object):
        self.recorder, self.method, self.bound = recorder, method, bound

    def __call__(self, *args: object, **kwargs: object) -> None:
        recorder = self.recorder()
        if recorder is not None:
            getattr(recorder, self.method)(*self.bound, *args, **kwargs)

    def __reduce__(self) -> tuple:
        return (_InertHook, ())


class _InertHook:
    def __call__(self, *args: object, **kwargs: object) -> None:
        return None


def _remove_all(handles: Sequence) -> None:
    for handle in handles:
        handle.remove()


def merged_calls(passes: Sequence[Pass], n: int, dtype: torch.dtype) -> list[LayerIO]:
    """The layer records of the first ``n`` cases of the passes' union batch, in ``dtype``.

    The union's cases are the passes' cases in order; record ``j`` of the result is the
    ``j``-th call of every pass (each pass must call the layers in the same order), its
    tensors concatenated over the passes that hold the first ``n`` cases. Floating tensors are
    cast to ``dtype`` (records of an autocast pass are in half precision).

    Raises:
        RuntimeError: a recorded output was changed in place after its pass.
        ValueError: passes that called the layers in different orders.

    """
    order = [c.layer for c in passes[0].calls]
    for p in passes[1:]:
        if [c.layer for c in p.calls] != order:
            raise ValueError(
                "opt.step(): the micro-batches' forward passes called the layers in different "
                "orders; K-FAC needs the same forward structure in every pass"
            )
    used, total = [], 0
    for p in passes:
        if total >= n:
            break
        used.append((p, min(n - total, p.inputs.shape[0])))
        total += used[-1][1]
    merged = []
    for j, layer in enumerate(order):
        parts = [(p.calls[j], rows) for p, rows in used]
        for call, _ in parts:
            call.output()  # raises if changed in place
        inputs = tuple(_joined([c.inputs[i] for c, _ in parts], [r for _, r in parts], dtype)
                       for i in range(len(parts[0][0].inputs)))
        s = _joined([c.s for c, _ in parts], [r for _, r in parts], dtype)
        merged.append(LayerIO(layer, inputs, s, None, None, s._version))
    return merged


def _joined(values: Sequence[object], rows: Sequence[int], dtype: torch.dtype) -> object:
    """The first ``rows[i]`` cases of each value, concatenated and cast (non-tensors: the first)."""
    if not isinstance(values[0], Tensor):
        return values[0]
    parts = [v[:r] for v, r in zip(values, rows, strict=True)]
    joined = parts[0] if len(parts) == 1 else torch.cat(parts)
    return joined.to(dtype) if joined.is_floating_point() else joined
