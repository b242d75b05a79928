"""The mode-product engine (kronlin/_mode.py): factor order, memory layouts, dtypes, kernels."""

import itertools

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import kronlin as kl
from kronlin import _backend
from kronlin._mode import application_order, chain_flops, kron_matmat

from ..conftest import HAS_CUDA, convert
from .chains import chain
from .helpers import assert_close, product_condition, spd
from .test_kron import kron_bound, kron_eigen_bound

shapes_strategy = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=5)


def dense_kron(factors):
    out = np.ones((1, 1))
    for f in factors:
        out = np.kron(out, f)
    return out


@given(shapes_strategy, st.integers(1, 7))
def test_application_order_minimizes_flops_over_all_orders(shapes, k):
    best = min(chain_flops(shapes, order, k) for order in itertools.permutations(range(len(shapes))))
    assert chain_flops(shapes, application_order(shapes), k) == best


def test_application_order_beats_the_ratio_heuristic():
    # sorting by r/c would apply the (10, 100) factor first: 4040 flops instead of 2400
    shapes = [(1, 2), (10, 100)]
    assert application_order(shapes) == [0, 1]
    assert chain_flops(shapes, [0, 1], 1) == 2400 < chain_flops(shapes, [1, 0], 1) == 4040


def test_chain_flops_of_two_square_factors_is_two_gemms():
    n, k = 5, 3
    assert chain_flops([(n, n), (n, n)], [0, 1], k) == 2 * (2 * n**3 * k)


LAYOUTS = {
    "row-major": lambda X: X,
    "column-major": lambda X: X.T.copy().T,
    "strided": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", ["auto", "xp", "numba"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("k", [1, 5, 70])
def test_matches_dense_kron_numpy(layout, kernel, transpose, k, dtype):
    rng = np.random.default_rng(k)
    factors = [rng.standard_normal(s) for s in ((3, 2), (2, 4), (5, 5))]
    dense = dense_kron(factors)
    dense = dense.T if transpose else dense
    X = LAYOUTS[layout](rng.standard_normal((dense.shape[1], k)).astype(dtype))
    Y = kron_matmat(np, [f.astype(dtype) for f in factors], X, transpose=transpose, kernel=kernel)
    assert Y.dtype == np.dtype(dtype)
    assert Y.shape == (dense.shape[0], k)
    bound = kron_bound(factors) * product_condition(dense, X)
    assert_close(Y, dense @ X.astype(np.float64), dtype=dtype, bound=bound, label="kron_matmat")


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
def test_matches_dense_kron_every_backend(backend, dtype, layout):
    rng = np.random.default_rng(0)
    factors = [rng.standard_normal(s) for s in ((4, 3), (2, 5))]
    X = rng.standard_normal((15, 6))
    Xb = convert(X, backend, dtype) if layout == "row-major" else convert(X.T.copy(), backend, dtype).T
    xp = _backend.namespace(Xb)
    Y = kron_matmat(xp, [convert(f, backend, dtype) for f in factors], Xb)
    assert str(Y.dtype).endswith(dtype)
    bound = kron_bound(factors) * product_condition(dense_kron(factors), X)
    assert_close(Y, dense_kron(factors) @ X, dtype=dtype, bound=bound, label="kron_matmat")


def test_column_major_block_gives_column_major_result_without_copies():
    # x @ op hands the engine Xᵀ of a row-major block: the batched A @ X @ Bᵀ, result transposed
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((5, 2))
    X3 = rng.standard_normal((7, 3, 2))  # seven 3×2 matrices, row-major
    Y = kron_matmat(np, [A, B], X3.reshape(7, 6).T)
    assert Y.flags.f_contiguous
    X = X3.reshape(7, 6).T
    assert_close(Y.T.reshape(7, 4, 5), A @ X3 @ B.T, dtype="float64",
                 bound=kron_bound([A, B]) * product_condition(np.kron(A, B), X), label="kron_matmat")


def test_float32_many_small_factors_use_the_numba_kernel_and_stay_float32():
    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((8, 8)).astype(np.float32) for _ in range(5)]
    X = rng.standard_normal((8**5, 32)).astype(np.float32)
    Y = kl.Kron(*factors) @ X
    assert Y.dtype == np.float32
    reference = kron_matmat(np, [f.astype(np.float64) for f in factors], X.astype(np.float64), kernel="xp")
    # the reference applies the same float32 values in float64: only the accumulation differs
    absolute = kron_matmat(np, [np.abs(f).astype(np.float64) for f in factors], np.abs(X).astype(np.float64))
    kappa = np.linalg.norm(absolute) / np.linalg.norm(reference)  # ‖|F||X|‖ / ‖F X‖
    assert_close(Y, reference, dtype="float32", bound=sum(f.shape[1] for f in factors) * kappa,
                 label="kron_matmat")


def test_auto_kernel_rule():
    from kronlin._mode import NUMBA_MAX_FACTOR, NUMBA_MIN_ENTRIES, NUMBA_MIN_RHS, _numba_pays

    n = NUMBA_MAX_FACTOR
    small, big = [np.ones((n, n))] * 4, [np.ones((n + 1, n + 1))] * 4
    X = np.ones((n**4, NUMBA_MIN_RHS))
    assert X.size >= NUMBA_MIN_ENTRIES
    assert _numba_pays(small, X)
    assert not _numba_pays(big, np.ones(((n + 1) ** 4, NUMBA_MIN_RHS)))
    assert not _numba_pays(small, X[:, : NUMBA_MIN_RHS - 1])
    assert not _numba_pays(small[:2], np.ones((n**2, NUMBA_MIN_RHS)))  # too few entries
    assert not _numba_pays(small, np.asfortranarray(X))
    assert not _numba_pays([f.astype(np.float32) for f in small], X)


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="kernel: expected 'auto', 'xp' or 'numba', got 'blas'"):
        kron_matmat(np, [np.eye(2)], np.ones((2, 1)), kernel="blas")
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="kernel='numba' needs NumPy arrays"):
        kron_matmat(_backend.namespace(torch.eye(2)), [torch.eye(2)], torch.ones(2, 1), kernel="numba")


# -- torch/CUDA: no host synchronization inside apply ----------------------------------------------

def _operators(rng, backend, dtype):
    A, B = spd(rng, 4), spd(rng, 3)
    factors = [spd(rng, 3) for _ in range(4)]
    diag, offdiag = chain(rng, [3, 4, 2], [2, 3, 3])
    c = lambda M: convert(M, backend, dtype)  # noqa: E731
    kron = kl.Kron(c(A), c(B))
    return {
        "Kron": kron,
        "Kron (4 factors)": kl.Kron(*map(c, factors)),
        "KronEigen": kron.eigh().shift(0.1).inv(),
        "KronDiff": kl.KronDiff(c(A), c(B), c(0.3 * A), c(0.2 * B)),
        "KronDiff.inv": kl.KronDiff(c(A), c(B), c(0.3 * A), c(0.2 * B)).inv(),
        "BlockDiag": kl.BlockDiag([kron.inv(), kl.Kron(c(A))]),
        "BlockTridiagInverse": kl.BlockTridiagInverse(
            [tuple(map(c, p)) for p in diag], [tuple(map(c, p)) for p in offdiag]
        ),
    }, _dense_operators(A, B, factors, diag, offdiag)


def _dense_operators(A, B, factors, diag, offdiag):
    """The dense float64 matrices of :func:`_operators`, from np.kron and np.linalg alone."""
    from .test_block_tridiag import reference_inverse

    K = np.kron(A, B)
    difference = K - np.kron(0.3 * A, 0.2 * B)
    dense = {
        "Kron": K,
        "Kron (4 factors)": dense_kron(factors),
        "KronEigen": np.linalg.inv(K + 0.1 * np.eye(len(K))),
        "KronDiff": difference,
        "KronDiff.inv": np.linalg.inv(difference),
        "BlockDiag": scipy.linalg.block_diag(np.linalg.inv(K), A),
        "BlockTridiagInverse": reference_inverse(diag, offdiag),
    }
    # error bounds in units of u for X with κ(A, X) = 1 (multiplied by it in the test): exact
    # representations err by their applies; factorizations by their setup times cond
    cond = {name: np.linalg.cond(M) for name, M in dense.items()}
    bounds = {
        "Kron": kron_bound([A, B]),
        "Kron (4 factors)": kron_bound(factors),
        "KronEigen": kron_eigen_bound([A, B]) * cond["KronEigen"],
        "KronDiff": 18.0,
        "KronDiff.inv": 10 * cond["KronDiff.inv"],
        "BlockDiag": kron_bound([A, B]) * (np.linalg.cond(A) + np.linalg.cond(B)),
        "BlockTridiagInverse": cond["BlockTridiagInverse"],
    }
    absolute = {"KronDiff": np.abs(K) + np.abs(np.kron(0.3 * A, 0.2 * B))}
    return dense, bounds, absolute


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_apply_paths_never_synchronize_with_the_host(dtype):
    import torch

    ops, _ = _operators(np.random.default_rng(3), "cuda", dtype)
    blocks = {name: convert(np.ones((op.shape[1], 5)), "cuda", dtype) for name, op in ops.items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any implicit device→host sync now raises
    try:
        for name, op in ops.items():
            X = blocks[name]
            op @ X, op.matvec(X[:, 0]), op.rmatmat(X), X.T @ op  # noqa: B018
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_apply_paths_match_dense_oracles_on_every_backend(backend, dtype):
    # every operator through the NumPy and the torch/CUDA engines, against np.kron/np.linalg
    ops, (dense, bounds, absolute) = _operators(np.random.default_rng(4), backend, dtype)
    for name, op in ops.items():
        X = np.random.default_rng(5).standard_normal((op.shape[1], 3))
        bound = bounds[name] * product_condition(dense[name], X, absolute.get(name))
        assert_close(op @ convert(X, backend, dtype), dense[name] @ X, dtype=dtype, bound=bound,
                     label="apply " + name)
