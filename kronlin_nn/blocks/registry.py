"""The registry: which block class covers which module type.

A block class registers the module types it covers with :func:`register_block`; a module
matches a registered type when it is an instance of it that does not override its
``forward`` (a subclass with its own forward computes something else). A new layer type is
one new file in :mod:`kronlin_nn.blocks` with a registered block class, imported by the
package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .base import CurvatureBlock

__all__ = ["REGISTRY", "block_for", "register_block", "registered_class"]

REGISTRY: dict[type[nn.Module], type[CurvatureBlock]] = {}
"""Module type → the block class that covers it."""


def register_block(*module_types: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator: ``block_class`` covers ``module_types`` (one registry entry each).

    The block class provides ``owning(name, module)``, which returns its block for the module
    (``None`` if the module has nothing trainable for it) or raises for a configuration it
    cannot handle exactly.
    """
    def register(block_class: type) -> type:
        for module_type in module_types:
            REGISTRY[module_type] = block_class
        return block_class

    return register


def registered_class(module: nn.Module) -> type[CurvatureBlock] | None:
    """The block class registered for ``module``'s type (or a base whose forward it keeps)."""
    for cls in type(module).__mro__:
        if cls in REGISTRY:
            return REGISTRY[cls] if type(module).forward is cls.forward else None
    return None


def block_for(module: nn.Module, name: str = "") -> CurvatureBlock | None:
    """The registered block of ``module`` (``None`` if no block type covers it or owns anything)."""
    block_class = registered_class(module)
    return None if block_class is None else block_class.owning(name, module)
