"""Input checks shared by the operators.

Every check raises an error that names the argument, says what was expected and what came
(design.md §3 "Numerics"). Symmetric inputs are symmetrized once here rather than trusted, and
factorizations that need SPD factors report which factor failed and suggest damping.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ._backend import Array, check_dtype, device, dtype_name, is_all_finite

# Relative asymmetry ‖F − Fᵀ‖_max / ‖F‖_max tolerated before a "symmetric" factor is rejected.
_SYMMETRY_RTOL = {"float32": 1e-4, "float64": 1e-10}


def check_matrix(xp: ModuleType, a: Array, name: str, *, square: bool = False) -> Array:
    """Check that ``a`` is a finite float32/float64 2-D array (square if asked) and return it."""
    check_dtype(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got an array of shape {tuple(a.shape)}")
    if square and a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got shape {tuple(a.shape)}")
    if 0 in a.shape:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(a.shape)}")
    if not is_all_finite(xp, a):
        raise ValueError(f"{name}: expected finite entries, got NaN or inf")
    return a


def symmetrized(xp: ModuleType, a: Array, name: str) -> Array:
    """Return ``(a + aᵀ)/2`` after checking that ``a`` is a finite square matrix close to symmetric.

    Raises:
        ValueError: if ``a`` is not square, not finite, or its asymmetry exceeds rounding level.

    """
    check_matrix(xp, a, name, square=True)
    scale = float(xp.max(xp.abs(a)))
    asym = float(xp.max(xp.abs(a - a.T)))
    if asym > _SYMMETRY_RTOL[dtype_name(a.dtype)] * max(scale, 1e-300):
        raise ValueError(
            f"{name}: expected a symmetric matrix, got max|{name} - {name}ᵀ| = {asym:.3g} "
            f"(max|{name}| = {scale:.3g})"
        )
    return (a + a.T) / 2


def check_operand(x: Array, n: int, name: str = "x") -> None:
    """Check that ``x`` is a vector ``(n,)`` or a block of vectors ``(n, k)``."""
    if x.ndim not in (1, 2) or x.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) or ({n}, k), got {tuple(x.shape)}")


def check_same_device(arrays: Sequence[Array], what: str) -> None:
    """Raise ``ValueError`` unless every array of ``arrays`` (named ``what``) is on one device."""
    devices = {str(device(a)) for a in arrays}
    if len(devices) > 1:
        raise ValueError(f"{what}: expected one device, got {sorted(devices)}")


def check_scalar(
    value: Any, name: str, *, minimum: float | None = None, positive_magnitude: bool = False
) -> float:
    """``value`` as a float after checking it is a finite real number (``≥ minimum``, or nonzero).

    Raises:
        TypeError: not a real number (a bool, a complex number, an array, …).
        ValueError: NaN or inf, below ``minimum``, or zero when ``positive_magnitude``.

    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected a number ≥ {minimum:g}, got {value:g}")
    if positive_magnitude and value == 0:
        raise ValueError(f"{name}: expected a nonzero number, got 0")
    return value
