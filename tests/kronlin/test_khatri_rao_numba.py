"""The Numba Khatri–Rao/face-splitting kernels and ``out=`` (kronlin/_khatri_rao_numba.py)."""

import numpy as np
import pytest

import kronlin as kl
from kronlin._khatri_rao_numba import face_split_into, khatri_rao_into

from ..conftest import convert
from .helpers import assert_close


@pytest.mark.parametrize(("m", "p", "n"), [(1, 1, 1), (3, 4, 5), (17, 2, 300)])
def test_kernels_equal_the_numpy_expressions_exactly(m, p, n, dtype):
    rng = np.random.default_rng(m + p + n)
    A, B = rng.standard_normal((m, n)).astype(dtype), rng.standard_normal((p, n)).astype(dtype)
    out = np.full((m * p, n), np.nan, dtype)
    khatri_rao_into(A, B, out)
    np.testing.assert_array_equal(out, (A[:, None, :] * B[None, :, :]).reshape(m * p, n))
    out = np.full((n, m * p), np.nan, dtype)
    face_split_into(A.T.copy(), B.T.copy(), out)
    np.testing.assert_array_equal(out, (A.T[:, :, None] * B.T[:, None, :]).reshape(n, m * p))


def test_non_contiguous_and_mixed_precision_inputs():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 5))[:, ::2]  # strided view, float64
    B = rng.standard_normal((3, 4)).astype(np.float32)[:, :3]
    out = kl.khatri_rao(A, B)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, (A[:, None, :] * B[None, :, :].astype(np.float64)).reshape(18, 3))


@pytest.mark.parametrize("function", [kl.khatri_rao, kl.face_split])
def test_out_receives_the_product(function, backend, dtype):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    expected = function(A, B)
    out = convert(np.zeros(expected.shape), backend, dtype)
    result = function(convert(A, backend, dtype), convert(B, backend, dtype), out=out)
    assert result is out
    # one product of two rounded entries per output entry: 3 roundings (exact in float64)
    assert_close(out, expected, dtype=dtype, bound=3, label=function.__name__)


def test_out_errors():
    A = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3\), got \(3, 4\)"):
        kl.khatri_rao(A, A, out=np.empty((3, 4)))
    with pytest.raises(TypeError, match="out: expected dtype float64, got float32"):
        kl.khatri_rao(A, A, out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        kl.face_split(A, A, out=np.empty((9, 2)).T)
    readonly = np.empty((4, 3))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        kl.khatri_rao(A, A, out=readonly)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mixed array backends"):
        kl.khatri_rao(A, A, out=torch.empty(4, 3, dtype=torch.float64))
