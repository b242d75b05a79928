r"""The curvature blocks of a whole model: every trainable parameter in exactly one block.

:func:`model_blocks` gives each module its registered block (:mod:`.registry`) and the
trainable parameters that no registered block owns the ``unsupported`` policy's:

- ``"diagonal"`` (default): a diagonal-Fisher block per module
  (:class:`~kronlin_nn.blocks.diagonal.ParameterDiagonalBlock`), from per-case gradients of
  the module's own forward;
- ``"first_order"``: the damping alone, :math:`\gamma^2 I`
  (:class:`~kronlin_nn.blocks.first_order.FirstOrderBlock`): a gradient step whose size
  the quadratic model chooses with the rest of the update;
- ``"error"``: a ``ValueError`` naming the parameter (the behaviour before blocks existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from ..capture import check_chain
from .base import CurvatureBlock, module_path
from .diagonal import ParameterDiagonalBlock
from .first_order import FirstOrderBlock
from .registry import block_for

if TYPE_CHECKING:
    from ..capture import LayerIO

__all__ = ["UNSUPPORTED", "check_tridiag_chain", "model_blocks"]

UNSUPPORTED = ("diagonal", "first_order", "error")


def model_blocks(model: nn.Module, unsupported: str = "diagonal") -> list[CurvatureBlock]:
    """One curvature block per module with trainable parameters, in registration order.

    Args:
        model: the network.
        unsupported: what trainable parameters without a registered block get: one of
            :data:`UNSUPPORTED` (see the module docstring).

    Raises:
        ValueError: no trainable parameter, a configuration a block refuses, a parameter
            shared by two modules (tied weights), an unknown ``unsupported``, or with
            ``unsupported="error"`` a parameter no block covers.

    """
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported: expected one of {UNSUPPORTED}, got {unsupported!r}")
    modules = list(model.named_modules())
    found: list[tuple[int, CurvatureBlock]] = []  # (module position, block)
    owner: dict[int, str] = {}  # id(parameter) → its name

    def claim(position: int, block: CurvatureBlock) -> None:
        for p, pname in zip(block.params, block.param_names, strict=True):
            if p is None:
                continue
            if id(p) in owner:
                raise ValueError(
                    f"model.{pname}: is the same parameter as model.{owner[id(p)]} (tied "
                    f"weights); K-FAC gives each parameter one curvature block: untie them or "
                    f"freeze one with requires_grad_(False)"
                )
            owner[id(p)] = pname
        found.append((position, block))

    for position, (name, module) in enumerate(modules):
        block = block_for(module, name)
        if block is not None:
            claim(position, block)
    for position, (name, module) in enumerate(modules):
        rest = [(f"{name}.{pname}" if name else pname, p)
                for pname, p in module.named_parameters(recurse=False)
                if p.requires_grad and id(p) not in owner]
        if rest:
            claim(position, _unsupported_block(name, module, rest, unsupported))
    if not found:
        raise ValueError("model: expected at least one trainable parameter, found none")
    return [block for _, block in sorted(found, key=lambda item: item[0])]


def _unsupported_block(name: str, module: nn.Module, params: list, policy: str) -> CurvatureBlock:
    if policy == "error":
        pname, p = params[0]
        raise ValueError(
            f"model.{pname}: no curvature block covers this trainable parameter of a "
            f"{type(module).__name__} (shape {tuple(p.shape)}); give unsupported='diagonal' "
            f"(a diagonal Fisher block) or 'first_order', or freeze it with requires_grad_(False)"
        )
    block_class = ParameterDiagonalBlock if policy == "diagonal" else FirstOrderBlock
    return block_class(name, module, [p for _, p in params], [n for n, _ in params])


def check_tridiag_chain(blocks: Sequence[CurvatureBlock], calls: Sequence[LayerIO]) -> None:
    """Refuse chain calls that the block-tridiagonal approximation cannot pair up (paper §4.3).

    Args:
        blocks: the model's blocks (``calls[j].layer`` indexes them).
        calls: the recorded calls of the chainable blocks, in call order.

    Raises:
        ValueError: a chain layer called more than once, layers that are not a chain
            (:func:`~kronlin_nn.capture.check_chain`), or neighbours with different numbers of
            locations per case (their cross moments pair location ``r`` with location ``r``).

    """
    seen: dict[int, int] = {}
    for c in calls:
        seen[c.layer] = seen.get(c.layer, 0) + 1
    for i, count in seen.items():
        if count > 1:
            raise ValueError(
                f"approx='tridiag': {module_path(blocks[i].name)} is called {count} times per "
                f"forward pass (weight sharing); a block-tridiagonal chain needs each layer "
                f"called once: use approx='blockdiag'"
            )
    check_chain(calls)
    for c, d in zip(calls, calls[1:], strict=False):
        b, e = blocks[c.layer], blocks[d.layer]
        r, s = b.locations(c), e.locations(d)
        if r != s:
            raise ValueError(
                f"approx='tridiag': neighbouring chain layers {module_path(b.name)} "
                f"({type(b.module).__name__}, {r} locations per case) and {module_path(e.name)} "
                f"({type(e.module).__name__}, {s}) have different numbers of locations, so "
                f"their cross moments are not defined: use approx='blockdiag'"
            )
