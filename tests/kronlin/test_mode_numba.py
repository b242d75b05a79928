"""The Numba mode-product kernels (kronlin/_mode_numba.py) against their NumPy expressions."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronlin import _mode_numba
from kronlin._mode import application_order, kron_matmat

from .helpers import UNIT_ROUNDOFF


def assert_matches(result, reference, magnitude, depth, dtype):
    """``|result − reference| ≤ 2·depth·u·magnitude`` entrywise.

    Both sides sum ``depth`` products per entry in the working dtype, in different orders: each
    is within ``γ_depth·|F||T|`` of the exact product (Higham, Thm 3.5); ``magnitude`` is that
    ``|F||T|``, computed by the reference expression on absolute values.
    """
    assert result.dtype == np.dtype(dtype)
    excess = np.abs(result.astype(np.float64) - reference) - 2 * depth * UNIT_ROUNDOFF[dtype] * magnitude
    assert excess.max() <= 0, f"error exceeds the bound by {excess.max():.3g}"


@pytest.mark.parametrize("hi_first", [False, True])
@pytest.mark.parametrize(("P", "lo", "hi", "Q", "width"), [
    (1, (3, 2), (4, 5), 7, 16), (3, (5, 5), (2, 6), 40, 16), (2, (8, 1), (1, 9), 33, 32), (1, (4, 4), (4, 4), 16, 64),
])
def test_pair_product_is_two_mode_products(P, lo, hi, Q, width, hi_first, dtype):
    rng = np.random.default_rng(P * Q + width)
    F_lo, F_hi = rng.standard_normal(lo).astype(dtype), rng.standard_normal(hi).astype(dtype)
    T = rng.standard_normal((P, lo[1], hi[1], Q)).astype(dtype)
    out = np.full((P, lo[0], hi[0], Q), np.nan, dtype)
    rows = max(lo[1] * hi[0], lo[0] * hi[1])
    _mode_numba.pair_product(F_lo, F_hi, hi_first, T, out, np.empty((4, rows * width), dtype))
    assert_matches(out, np.einsum("ia,jb,pabq->pijq", F_lo, F_hi, T),
                   np.einsum("ia,jb,pabq->pijq", abs(F_lo), abs(F_hi), abs(T)), lo[1] + hi[1], dtype)


def reference_chain(factors, X):
    """The plain NumPy chain of mode products (the expression the kernels replace)."""
    k = X.shape[1]
    T = X.reshape(*(f.shape[1] for f in factors), k)
    for j, F in enumerate(factors):
        T = np.moveaxis(np.tensordot(F, T, axes=(1, j)), 0, j)
    return T.reshape(-1, k)


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=5),
       st.integers(1, 40), st.sampled_from(["float64", "float32"]), st.integers(0, 2**31))
def test_chain_matches_reference_for_any_factors(shapes, k, dtype, seed):
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal(s).astype(dtype) for s in shapes]
    X = rng.standard_normal((math.prod(c for _, c in shapes), k)).astype(dtype)
    Y = _mode_numba.kron_matmat(factors, X, application_order(shapes))
    assert_matches(Y, reference_chain(factors, X), reference_chain([abs(f) for f in factors], abs(X)),
                   sum(c for _, c in shapes), dtype)


def test_four_small_factors_run_as_two_pair_passes():
    passes = _mode_numba.pass_plan([(16, 16)] * 4, [16] * 4, [0, 1, 2, 3], 8)
    assert [axes for axes, *_ in passes] == [(0, 1), (2, 3)]


def test_non_adjacent_steps_and_large_pairs_run_alone():
    shrink, grow = np.ones((2, 8)), np.ones((8, 2))
    order = application_order([s.shape for s in (shrink, grow, shrink)])
    assert order == [0, 2, 1]  # the shrinking factors first: axes 0 and 2 are not adjacent
    passes = _mode_numba.pass_plan([s.shape for s in (shrink, grow, shrink)], [8, 2, 8], order, 8)
    assert [axes for axes, *_ in passes] == [(0,), (2, 1)]  # then 2 and 1 are, in that order
    assert [axes for axes, *_ in _mode_numba.pass_plan([(64, 64)] * 2, [64, 64], [0, 1], 8)] == [(0,), (1,)]
    # a pair needs PAIR_MIN_WIDTH entries after it: with k = 1 the last two axes run alone
    assert [axes for axes, *_ in _mode_numba.pass_plan([(8, 8)] * 4, [8] * 4, [0, 1, 2, 3], 1)] == [
        (0, 1), (2,), (3,)]


def test_numba_kernel_through_the_engine_matches_blas():
    rng = np.random.default_rng(7)
    factors = [rng.standard_normal((16, 16)) for _ in range(4)]
    X = rng.standard_normal((16**4, 64))
    magnitude = kron_matmat(np, [abs(f) for f in factors], abs(X), kernel="modes")
    assert_matches(kron_matmat(np, factors, X, kernel="numba"), kron_matmat(np, factors, X, kernel="modes"),
                   magnitude, 64, "float64")


@pytest.mark.parametrize(("m", "n"), [(1, 1), (3, 70), (33, 31), (64, 64), (100, 7)])
def test_transpose_is_a_transposed_copy(m, n, dtype):
    A = np.random.default_rng(m * n).standard_normal((m, n)).astype(dtype)
    out = np.full((n, m), np.nan, dtype)
    _mode_numba.transpose_into(A, out)
    np.testing.assert_array_equal(out, A.T)
