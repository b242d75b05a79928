"""Column-wise (Khatri–Rao) and row-wise (face-splitting) Kronecker products.

``khatri_rao(A, B)[:, j] = kron(A[:, j], B[:, j])`` (equals ``scipy.linalg.khatri_rao``);
``face_split(A, B)[i] = kron(A[i], B[i])`` — per-example gradients of a linear layer are
``face_split(g, ā)`` (paper §2: ``DW = g āᵀ``, flattened row-major).
"""

from __future__ import annotations

from ._backend import Array, namespace
from ._validation import check_matrix


def khatri_rao(A: Array, B: Array) -> Array:
    r"""Column-wise Kronecker product, :math:`[a_1 \otimes b_1, \dots, a_n \otimes b_n]`.

    Args:
        A: shape ``(m, n)``.
        B: shape ``(p, n)``.

    Returns:
        Shape ``(m·p, n)``; one pass over the output (``m·p·n`` multiplies).

    Raises:
        ValueError: not 2-D, non-finite, or different column counts.
        TypeError: mixed backends or unsupported dtypes.

    """
    xp = namespace(A, B, names=("A", "B"))
    check_matrix(xp, A, "A")
    check_matrix(xp, B, "B")
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"B: expected {A.shape[1]} columns (as A), got shape {tuple(B.shape)}"
        )
    m, n = A.shape
    return xp.reshape(A[:, None, :] * B[None, :, :], (m * B.shape[0], n))


def face_split(A: Array, B: Array) -> Array:
    r"""Row-wise Kronecker product (face-splitting product), row ``i`` = ``kron(A[i], B[i])``.

    Args:
        A: shape ``(n, m)``.
        B: shape ``(n, p)``.

    Returns:
        Shape ``(n, m·p)``; one pass over the output.

    Raises:
        ValueError: not 2-D, non-finite, or different row counts.
        TypeError: mixed backends or unsupported dtypes.

    """
    xp = namespace(A, B, names=("A", "B"))
    check_matrix(xp, A, "A")
    check_matrix(xp, B, "B")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"B: expected {A.shape[0]} rows (as A), got shape {tuple(B.shape)}")
    n, m = A.shape
    return xp.reshape(A[:, :, None] * B[:, None, :], (n, m * B.shape[1]))
