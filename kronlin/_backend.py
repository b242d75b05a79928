"""The backend shim: one code path for NumPy and torch arrays.

Operators find the array namespace of their inputs with array-api-compat and call only the
functions of the array API standard, plus the few that the standard lacks and that live here
(triangular solves, dtype and device queries). torch is never imported by this module: a torch
namespace only appears when a torch tensor is handed in.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""A NumPy array or a torch tensor (any array that array-api-compat recognises)."""

SUPPORTED_DTYPES = ("float32", "float64")


def namespace(*arrays: Array, names: tuple[str, ...] | None = None) -> ModuleType:
    """Return the array-API namespace shared by ``arrays``.

    Args:
        *arrays: NumPy arrays or torch tensors (``None`` entries are ignored).
        names: the argument names of ``arrays``, for the error message.

    Raises:
        TypeError: if an entry is not an array, or if NumPy and torch arrays are mixed.

    """
    names = names or tuple(f"argument {i}" for i in range(len(arrays)))
    present = [(n, a) for n, a in zip(names, arrays, strict=True) if a is not None]
    for name, a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name}: expected a NumPy array or a torch tensor, got {type(a).__name__}")
    kinds = {_backend_name(a) for _, a in present}
    if len(kinds) > 1:
        described = ", ".join(f"{n} is {_backend_name(a)}" for n, a in present)
        raise TypeError(
            f"mixed array backends in one operator ({described}); convert all inputs to one backend"
        )
    return array_api_compat.array_namespace(*(a for _, a in present))


def _backend_name(a: Array) -> str:
    if array_api_compat.is_torch_array(a):
        return "torch"
    if array_api_compat.is_numpy_array(a):
        return "numpy"
    return type(a).__module__.split(".")[0]


def is_torch(xp: ModuleType) -> bool:
    """Whether ``xp`` is the torch namespace."""
    return array_api_compat.is_torch_namespace(xp)


def device(a: Array) -> Any:
    """The device of ``a`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(a)


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """``"float32"``/``"float64"``/… for a NumPy or torch dtype (or a NumPy scalar type)."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        name = _dtype_name(dtype)
    try:
        _DTYPE_NAMES[dtype] = name
    except TypeError:  # unhashable: not cached
        pass
    return name


def _dtype_name(dtype: Any) -> str:
    text = str(dtype)
    if text.startswith("torch."):
        return text.removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        return text


def check_dtype(a: Array, name: str) -> None:
    """Raise ``TypeError`` unless ``a`` holds float32 or float64 values."""
    if dtype_name(a.dtype) not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {dtype_name(a.dtype)}")


def result_dtype(xp: ModuleType, *arrays: Array) -> Any:
    """The promoted dtype of ``arrays`` (as NumPy/torch promote them)."""
    return xp.result_type(*arrays)


def solve_triangular(xp: ModuleType, L: Array, B: Array, *, lower: bool, left: bool = True) -> Array:
    """Solve ``L X = B`` (``left``) or ``X L = B`` for triangular ``L``.

    Cost: ``n² k`` flops for ``L`` of size ``n × n`` and ``k`` right-hand sides.
    """
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(L, B, upper=not lower, left=left)
    import scipy.linalg

    if left:
        return scipy.linalg.solve_triangular(L, B, lower=lower, check_finite=False)
    # X L = B  <=>  Lᵀ Xᵀ = Bᵀ
    return scipy.linalg.solve_triangular(L, B.T, lower=lower, trans="T", check_finite=False).T


def is_all_finite(xp: ModuleType, a: Array) -> bool:
    """Whether every entry of ``a`` is finite (one host synchronization on GPU)."""
    return bool(xp.all(xp.isfinite(a)))


def to_numpy(a: Array) -> np.ndarray:
    """A NumPy copy (or view) of ``a``, moved to host memory if needed."""
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)
