"""Column-wise (Khatri–Rao) and row-wise (face-splitting) Kronecker products.

``khatri_rao(A, B)[:, j] = kron(A[:, j], B[:, j])`` (equals ``scipy.linalg.khatri_rao``);
``face_split(A, B)[i] = kron(A[i], B[i])`` — per-example gradients of a linear layer are
``face_split(g, ā)`` (paper §2: ``DW = g āᵀ``, flattened row-major).

Both cost one multiply per output entry, i.e. one write of the output. NumPy inputs go to the
parallel Numba kernels of :mod:`kronlin._khatri_rao_numba`; torch inputs (CPU or CUDA) to one
broadcast multiply. With ``out=`` the product is written straight into the caller's array, with
no temporary, on either backend.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from ._backend import Array, device, dtype_name, namespace
from ._validation import check_matrix, check_same_device


def khatri_rao(A: Array, B: Array, *, out: Array | None = None) -> Array:
    r"""Column-wise Kronecker product, :math:`[a_1 \otimes b_1, \dots, a_n \otimes b_n]`.

    Args:
        A: shape ``(m, n)``.
        B: shape ``(p, n)``.
        out: optional C-contiguous array of shape ``(m·p, n)`` and the promoted dtype, same
            backend and device, to write the result into (it is returned).

    Returns:
        Shape ``(m·p, n)``; one pass over the output (``m·p·n`` multiplies).

    Raises:
        ValueError: not 2-D, non-finite, or different column counts; ``out`` of the wrong
            shape, device or layout.
        TypeError: mixed backends or unsupported dtypes; ``out`` of another dtype.

    """
    xp = _checked_namespace(A, B, out)
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"B: expected {A.shape[1]} columns (as A), got shape {tuple(B.shape)}"
        )
    (m, n), p = A.shape, B.shape[0]
    if array_api_compat.is_numpy_array(A):
        from ._khatri_rao_numba import khatri_rao_into

        return _numpy_product(khatri_rao_into, A, B, out, (m * p, n))
    return _xp_product(xp, A[:, None, :], B[None, :, :], out, (m * p, n))


def face_split(A: Array, B: Array, *, out: Array | None = None) -> Array:
    r"""Row-wise Kronecker product (face-splitting product), row ``i`` = ``kron(A[i], B[i])``.

    Args:
        A: shape ``(n, m)``.
        B: shape ``(n, p)``.
        out: optional C-contiguous array of shape ``(n, m·p)`` and the promoted dtype, same
            backend and device, to write the result into (it is returned).

    Returns:
        Shape ``(n, m·p)``; one pass over the output.

    Raises:
        ValueError: not 2-D, non-finite, or different row counts; ``out`` of the wrong shape,
            device or layout.
        TypeError: mixed backends or unsupported dtypes; ``out`` of another dtype.

    """
    xp = _checked_namespace(A, B, out)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"B: expected {A.shape[0]} rows (as A), got shape {tuple(B.shape)}")
    (n, m), p = A.shape, B.shape[1]
    if array_api_compat.is_numpy_array(A):
        from ._khatri_rao_numba import face_split_into

        return _numpy_product(face_split_into, A, B, out, (n, m * p))
    return _xp_product(xp, A[:, :, None], B[:, None, :], out, (n, m * p))


def _checked_namespace(A: Array, B: Array, out: Array | None):
    """The shared namespace of the operands, after checking ``A`` and ``B``."""
    xp = namespace(A, B, out, names=("A", "B", "out"))
    check_same_device((A, B), "A, B")
    check_matrix(xp, A, "A")
    check_matrix(xp, B, "B")
    return xp


def _numpy_product(kernel, A: np.ndarray, B: np.ndarray, out: np.ndarray | None, shape) -> np.ndarray:
    """Run a Numba ``kernel(A, B, out)`` on C-contiguous operands of the promoted dtype."""
    dtype = np.result_type(A, B)
    out = np.empty(shape, dtype) if out is None else _checked_out(out, shape, dtype, "cpu")
    kernel(np.ascontiguousarray(A, dtype), np.ascontiguousarray(B, dtype), out)
    return out


def _xp_product(xp, a: Array, b: Array, out: Array | None, shape) -> Array:
    """``a * b`` (torch views broadcast to 3-D) as ``shape``; written into ``out`` when given."""
    if out is None:
        return xp.reshape(a * b, shape)
    _checked_out(out, shape, xp.result_type(a, b), device(a))
    import torch

    torch.mul(a, b, out=out.view(torch.broadcast_shapes(a.shape, b.shape)))
    return out


def _checked_out(out: Array, shape: tuple[int, int], dtype, where) -> Array:
    """``out`` if it can take the result: shape, dtype, device, C-contiguous and writeable."""
    if tuple(out.shape) != shape:
        raise ValueError(f"out: expected shape {shape}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out: expected dtype {dtype_name(dtype)}, got {dtype_name(out.dtype)}")
    if str(device(out)) != str(where):
        raise ValueError(f"out: expected an array on device {where}, got {device(out)}")
    contiguous = out.is_contiguous() if array_api_compat.is_torch_array(out) else out.flags.c_contiguous
    if not contiguous:
        raise ValueError("out: expected a C-contiguous array")
    if not getattr(getattr(out, "flags", None), "writeable", True):
        raise ValueError("out: expected a writeable array")
    return out
