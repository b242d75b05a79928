import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import kronlin as kl

from ..conftest import convert
from .helpers import assert_close


@pytest.mark.parametrize(("m", "p", "n"), [(1, 1, 1), (3, 4, 5), (64, 2, 7)])
def test_khatri_rao_matches_scipy(backend, dtype, m, p, n):
    rng = np.random.default_rng(m * p * n)
    A, B = rng.standard_normal((m, n)), rng.standard_normal((p, n))
    out = kl.khatri_rao(convert(A, backend, dtype), convert(B, backend, dtype))
    assert tuple(out.shape) == (m * p, n)
    # one product of two rounded entries per output entry: 3 roundings (exact in float64)
    assert_close(out, scipy.linalg.khatri_rao(A, B), dtype=dtype, bound=3, label="khatri_rao")


@pytest.mark.parametrize(("n", "m", "p"), [(1, 1, 1), (5, 3, 4), (7, 64, 2)])
def test_face_split_rows_are_krons(backend, dtype, n, m, p):
    rng = np.random.default_rng(n * m * p)
    A, B = rng.standard_normal((n, m)), rng.standard_normal((n, p))
    out = kl.face_split(convert(A, backend, dtype), convert(B, backend, dtype))
    expected = np.stack([np.kron(A[i], B[i]) for i in range(n)])
    assert_close(out, expected, dtype=dtype, bound=3, label="face_split")


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**31))
def test_face_split_is_transposed_khatri_rao(n, m, p, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((n, m)), rng.standard_normal((n, p))
    np.testing.assert_array_equal(kl.face_split(A, B), kl.khatri_rao(A.T, B.T).T)


def test_face_split_gives_per_example_gradients():
    # g ⊗ ā flattened row-major is the per-example gradient g āᵀ of a linear layer
    rng = np.random.default_rng(0)
    g, a = rng.standard_normal((4, 3)), rng.standard_normal((4, 5))
    grads = kl.face_split(g, a)
    for i in range(4):
        # one product per entry, rounded the same way: equal bit for bit
        np.testing.assert_array_equal(grads[i], np.outer(g[i], a[i]).reshape(-1))


def test_errors():
    with pytest.raises(ValueError, match=r"B: expected 3 columns \(as A\), got shape \(2, 4\)"):
        kl.khatri_rao(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"B: expected 2 rows \(as A\), got shape \(3, 4\)"):
        kl.face_split(np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="A: expected finite entries"):
        kl.khatri_rao(np.full((2, 2), np.nan), np.ones((2, 2)))
