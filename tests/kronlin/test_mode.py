"""The mode-product engine (kronlin/_mode.py): factor order, memory layouts, dtypes, kernels."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import kronlin as kl
from kronlin import _backend
from kronlin._mode import (
    KronMatmat,
    _split_matmul,
    application_order,
    chain_flops,
    kron_matmat,
    split_batch,
    transposed_copy,
)
from kronlin._plan import KERNELS, KronPlan, groupings

from ..conftest import HAS_CUDA, convert, to_numpy
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
@pytest.mark.parametrize("kernel", ["auto", *KERNELS])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("k", [1, 5, 70])
def test_matches_dense_kron_numpy(layout, kernel, transpose, k, dtype):
    rng = np.random.default_rng(k)
    factors = [rng.standard_normal(s) for s in ((3, 2), (2, 4), (5, 5))]
    dense = dense_kron(factors)
    dense = dense.T if transpose else dense
    X = LAYOUTS[layout](rng.standard_normal((dense.shape[1], k)).astype(dtype))
    bound = kron_bound(factors) * product_condition(dense, X)
    for want in (None, "row", "column", "any"):
        Y = kron_matmat(np, [f.astype(dtype) for f in factors], X, transpose=transpose, kernel=kernel,
                        layout=want)
        assert Y.dtype == np.dtype(dtype)
        assert Y.shape == (dense.shape[0], k)
        assert_close(Y, dense @ X.astype(np.float64), dtype=dtype, bound=bound, label="kron_matmat")
        if k > 1 and want in ("row", "column"):
            assert Y.flags["C_CONTIGUOUS" if want == "row" else "F_CONTIGUOUS"], (kernel, want)
        if k > 1 and want is None and layout != "strided":
            assert Y.flags["C_CONTIGUOUS" if layout == "row-major" else "F_CONTIGUOUS"], kernel


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_grouping_of_every_kernel_matches_dense_kron(kernel):
    rng = np.random.default_rng(9)
    factors = [rng.standard_normal(s) for s in ((3, 2), (2, 4), (4, 4), (1, 3))]
    dense = dense_kron(factors)
    X = rng.standard_normal((dense.shape[1], 6))
    Xt = rng.standard_normal((dense.shape[0], 6))
    found = list(groupings([f.shape for f in factors]))
    assert len(found) == 2 ** (len(factors) - 1)  # all small: every split into runs is allowed
    check = lambda Y, A, Z: assert_close(Y, A @ Z, dtype="float64", label="kron_matmat",  # noqa: E731
                                         bound=kron_bound(factors) * product_condition(A, Z))
    for groups in found:
        engine = KronMatmat(np, factors, KronPlan(kernel, groups))
        for Z in (X, np.asfortranarray(X)):
            check(engine(Z), dense, X)
        check(engine(Xt, transpose=True), dense.T, Xt)
        check(engine(X[:, :1]), dense, X[:, :1])


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


@pytest.mark.parametrize("kernel", ["auto", *KERNELS])
def test_float32_many_small_factors_stay_float32(kernel):
    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((8, 8)).astype(np.float32) for _ in range(5)]
    X = rng.standard_normal((8**5, 32)).astype(np.float32)
    Y = kl.Kron(*factors, kernel=kernel) @ X
    assert Y.dtype == np.float32
    reference = kron_matmat(np, [f.astype(np.float64) for f in factors], X.astype(np.float64), kernel="modes")
    # the reference applies the same float32 values in float64: only the accumulation differs
    absolute = kron_matmat(np, [np.abs(f).astype(np.float64) for f in factors], np.abs(X).astype(np.float64))
    kappa = np.linalg.norm(absolute) / np.linalg.norm(reference)  # ‖|F||X|‖ / ‖F X‖
    assert_close(Y, reference, dtype="float32", bound=kron_bound(factors) * kappa, label="kron_matmat")


def test_float64_operand_of_a_float32_operator_promotes_in_every_kernel():
    factors = [np.eye(3, dtype=np.float32) * 2] * 2
    for kernel in KERNELS:
        Y = kl.Kron(*factors, kernel=kernel) @ np.ones((9, 4))
        assert Y.dtype == np.float64
        np.testing.assert_array_equal(Y, 4.0)  # 2·2·1, exact


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="kernel: expected 'auto', 'rotate', 'modes', 'numba' or a KronPlan, got 'blas'"):
        kron_matmat(np, [np.eye(2)], np.ones((2, 1)), kernel="blas")
    with pytest.raises(ValueError, match="kernel: the plan covers 3 factors, the operator has 2"):
        kl.Kron(np.eye(2), np.eye(2), kernel=KronPlan("rotate", ((0,), (1, 2))))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="kernel='numba' needs NumPy arrays"):
        kron_matmat(_backend.namespace(torch.eye(2)), [torch.eye(2)], torch.ones(2, 1), kernel="numba")
    with pytest.raises(TypeError, match="kernel='numba' needs NumPy arrays"):
        kl.Kron(torch.eye(2), kernel="numba")


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


# -- plans, the cost model and the threaded batches ------------------------------------------------

def test_split_batch_is_the_batched_matmul():
    rng = np.random.default_rng(6)
    F, T3 = rng.standard_normal((5, 4)), rng.standard_normal((11, 4, 3))
    for threads in (2, 3, 11):
        np.testing.assert_array_equal(_split_matmul(F, T3, threads), np.matmul(F, T3))
    assert split_batch(16, 16, 16, 4096, 2)
    assert not split_batch(16, 16, 16, 4096, 1)  # one thread: nothing to split
    assert not split_batch(128, 128, 256, 64, 2)  # BLAS threads each GEMM itself
    assert not split_batch(4, 4, 4, 8, 2)  # too little work to pay for the dispatch


def test_transposed_copy_on_every_backend(backend, dtype):
    A = np.random.default_rng(7).standard_normal((37, 5))
    out = transposed_copy(_backend.namespace(convert(A, backend, dtype)), convert(A, backend, dtype))
    np.testing.assert_array_equal(to_numpy(out), A.T.astype(dtype))  # a copy: exact
    assert tuple(out.shape) == (5, 37)


def test_plans_follow_the_kernel_argument(backend):
    factors = [convert(np.eye(4) + 0.1, backend, "float64") for _ in range(3)]
    auto = kl.Kron(*factors)
    assert auto.kernel == "auto" and auto.plan(16).seconds > 0
    assert auto.plan(16).kernel in (("rotate", "modes", "numba") if backend == "numpy" else ("rotate", "modes"))
    for kernel in ("rotate", "modes"):
        K = kl.Kron(*factors, kernel=kernel)
        assert K.plan(16).kernel == kernel and K.T.plan(16).kernel == kernel and K.inv().kernel == kernel
        assert f"kernel {kernel}" in repr(K)
    fixed = KronPlan("modes", ((0, 1), (2,)))
    K = kl.Kron(*factors, kernel=fixed)
    assert (K.plan(3).kernel, K.plan(3).groups) == ("modes", ((0, 1), (2,)))
    assert str(K.plan(3)).startswith("modes [F1⊗F2, F3] (estimated ")
    x, dense = np.ones(64), dense_kron([np.eye(4) + 0.1] * 3)
    assert_close(K @ convert(x, backend, "float64"), dense @ x, dtype="float64", label="kron_matmat",
                 bound=kron_bound([np.eye(4)] * 3) * product_condition(dense, x))
    with pytest.raises(ValueError, match="k: expected a positive integer, got 0"):
        K.plan(0)


def test_plan_validation():
    with pytest.raises(ValueError, match="kernel: expected one of"):
        KronPlan("blas", ((0,),))
    for bad in ((), ((0,), (2,)), ((1,), (0,)), ((0, 1), ())):
        with pytest.raises(ValueError, match="groups: expected runs of consecutive factor indices"):
            KronPlan("modes", bad)


def test_groupings_respect_the_largest_merged_side():
    from kronlin._plan import MAX_GROUP_SIDE

    shapes = [(32, 32), (32, 32), (2, 2)]
    found = list(groupings(shapes))
    assert ((0,), (1,), (2,)) in found and ((0, 1), (2,)) in found  # 1024 fits
    assert all(max(np.prod([shapes[j][0] for j in g]), np.prod([shapes[j][1] for j in g])) <= MAX_GROUP_SIDE
               for groups in found for g in groups if len(g) > 1)
    assert ((0, 1, 2),) not in found


@given(st.lists(st.sampled_from([(2, 2), (3, 5), (8, 8), (16, 16), (4, 1)]), min_size=1, max_size=4),
       st.sampled_from([1, 16, 256]), st.sampled_from(["float32", "float64"]),
       st.sampled_from(["numpy", "torch", "cuda"]), st.booleans(), st.sampled_from(["row", "column", "any"]))
def test_choose_returns_the_cheapest_estimate(shapes, k, dtype, backend, column_major, layout):
    from kronlin._plan import Problem, allowed_kernels, choose, estimate, machine

    problem = Problem(tuple(shapes), k, dtype, backend, column_major and k > 1, layout)
    best = choose(problem)
    m = machine(backend)
    costs = [estimate(KronPlan(kernel, g), problem, m) for kernel in allowed_kernels("auto", backend)
             for g in groupings(shapes)]
    assert 0 < best.seconds == min(costs) < float("inf")
    assert best.kernel != "numba" or backend == "numpy"


def test_kron_eigen_keeps_the_operand_layout_without_copies_in_between():
    rng = np.random.default_rng(8)
    A, B = spd(rng, 6), spd(rng, 5)
    E = kl.Kron(A, B).eigh().shift(0.1)
    X = rng.standard_normal((30, 7))
    dense = np.kron(A, B) + 0.1 * np.eye(30)
    for Z in (X, np.asfortranarray(X)):
        Y = E @ Z
        # the eigendecomposition's error times cond, as for "KronEigen" in _dense_operators
        assert_close(Y, dense @ X, dtype="float64", label="apply KronEigen",
                     bound=kron_eigen_bound([A, B]) * np.linalg.cond(dense))
        assert Y.flags.c_contiguous == Z.flags.c_contiguous


def test_torch_products_never_import_numba():
    # importing Numba takes a second and changes torch's CPU results in the last bits
    pytest.importorskip("torch")
    code = ("import sys, torch, kronlin as kl\n"
            "K = kl.Kron(*[torch.eye(8, dtype=torch.float64)] * 3)\n"
            "K @ torch.ones(512, 16, dtype=torch.float64); K.eigh().inv() @ torch.ones(512)\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kernel", ["rotate", "modes"])
def test_scratch_buffers_do_not_change_results(monkeypatch, kernel):
    # chains above SCRATCH_BYTES write their intermediates into two reused buffers
    import kronlin._mode as mode

    rng = np.random.default_rng(10)
    factors = [rng.standard_normal(s) for s in ((3, 2), (2, 4), (4, 4), (5, 3))]
    dense = dense_kron(factors)
    monkeypatch.setattr(mode, "SCRATCH_BYTES", 0)
    for X in (rng.standard_normal((dense.shape[1], 5)), rng.standard_normal((5, dense.shape[1])).T):
        for layout in (None, "row", "column"):
            Y = KronMatmat(np, factors, kernel)(X, layout=layout)
            assert_close(Y, dense @ X, dtype="float64", label="kron_matmat",
                         bound=kron_bound(factors) * product_condition(dense, X))
