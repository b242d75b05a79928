"""Numba kernels for :func:`kronlin.khatri_rao` and :func:`kronlin.face_split` on NumPy arrays.

Both products are one multiply per output entry, so their cost is writing the output once. The
NumPy expression ``A[:, None, :] * B[None, :, :]`` (also SciPy's) does that on one thread; these
kernels write each output row straight from the two input rows on all of Numba's threads, into a
caller's ``out`` when given (no allocation, no page faults). ``tests/kronlin/test_khatri_rao_numba.py``
keeps the NumPy expression as the reference.

Compile time: about 2 s per dtype on the first call, then cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
from numba import prange


@numba.njit(parallel=True, cache=True)
def khatri_rao_into(A, B, out):
    """``out[i·p + j, :] = A[i, :] * B[j, :]``; ``A`` ``(m, n)``, ``B`` ``(p, n)``, ``out`` ``(m·p, n)``.

    One parallel task per output row.
    """
    p, n = B.shape
    for row in prange(out.shape[0]):
        a, b, o = A[row // p], B[row % p], out[row]
        for col in range(n):
            o[col] = a[col] * b[col]


@numba.njit(parallel=True, cache=True)
def face_split_into(A, B, out):
    """``out[i, j·p + l] = A[i, j] * B[i, l]``; ``A`` ``(n, m)``, ``B`` ``(n, p)``, ``out`` ``(n, m·p)``.

    One parallel task per output row.
    """
    m, p = A.shape[1], B.shape[1]
    for i in prange(A.shape[0]):
        b = B[i]
        for j in range(m):
            a, o = A[i, j], out[i, j * p : (j + 1) * p]
            for col in range(p):
                o[col] = a * b[col]
