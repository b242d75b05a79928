import numpy as np

import kronlin as kl
from kronlin import linalg

from ..conftest import convert
from .helpers import assert_close, product_condition, spd
from .test_kron import kron_bound, kron_eigen_bound


def test_kron_matmul(backend, dtype):
    rng = np.random.default_rng(41)
    A, B, x = rng.standard_normal((3, 2)), rng.standard_normal((2, 4)), rng.standard_normal(8)
    out = linalg.kron_matmul([convert(A, backend, dtype), convert(B, backend, dtype)], convert(x, backend, dtype))
    assert_close(out, np.kron(A, B) @ x, dtype=dtype,
                 bound=kron_bound([A, B]) * product_condition(np.kron(A, B), x), label="linalg")


def test_kron_solve_plain_and_damped(backend, dtype):
    rng = np.random.default_rng(42)
    A, B, b = spd(rng, 3), spd(rng, 4), rng.standard_normal(12)
    fs = [convert(A, backend, dtype), convert(B, backend, dtype)]
    K = np.kron(A, B)
    # factor inverses (backward stable) applied: amplified by cond(A⊗B) = cond(A)·cond(B)
    assert_close(linalg.kron_solve(fs, convert(b, backend, dtype)), np.linalg.solve(K, b),
                 dtype=dtype, bound=np.linalg.cond(K), label="linalg")
    damped = K + 0.2 * np.eye(12)
    assert_close(linalg.kron_solve(fs, convert(b, backend, dtype), damping=0.2),
                 np.linalg.solve(damped, b), dtype=dtype, bound=kron_eigen_bound([A, B]) * np.linalg.cond(damped),
                 label="linalg")


def test_kron_diff_solve(backend, dtype):
    rng = np.random.default_rng(43)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)
    b = rng.standard_normal(6)
    dense = np.kron(A, B) - np.kron(C, D)
    out = linalg.kron_diff_solve(*(convert(M, backend, dtype) for M in (A, B, C, D)), convert(b, backend, dtype))
    assert_close(out, np.linalg.solve(dense, b), dtype=dtype, bound=10 * np.linalg.cond(dense), label="linalg")


def test_damped_solves_use_the_damping():
    rng = np.random.default_rng(44)
    A, B, b = spd(rng, 3), spd(rng, 2), rng.standard_normal(6)
    K = np.kron(A, B)
    damped = K + 1.0 * np.eye(6)
    assert_close(linalg.kron_solve([A, B], b, damping=1.0), np.linalg.solve(damped, b), dtype="float64",
                 bound=kron_eigen_bound([A, B]) * np.linalg.cond(damped), label="linalg")
    C, D = 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)
    # damping δ adds δ·A⊗B: (1 + δ) A⊗B − C⊗D
    dense = 1.5 * K - np.kron(C, D)
    assert_close(linalg.kron_diff_solve(A, B, C, D, b, damping=0.5), np.linalg.solve(dense, b), dtype="float64",
                 bound=10 * np.linalg.cond(dense), label="linalg")


def test_kron_matmul_takes_the_kernel_argument(backend):
    rng = np.random.default_rng(44)
    A, B, X = rng.standard_normal((3, 4)), rng.standard_normal((5, 2)), rng.standard_normal((8, 7))
    kernels = ["auto", "rotate", "modes", kl.KronPlan("modes", ((0, 1),))]
    kernels += ["numba"] if backend == "numpy" else []
    for kernel in kernels:
        out = linalg.kron_matmul([convert(A, backend, "float64"), convert(B, backend, "float64")],
                                 convert(X, backend, "float64"), kernel=kernel)
        assert_close(out, np.kron(A, B) @ X, dtype="float64",
                     bound=kron_bound([A, B]) * product_condition(np.kron(A, B), X), label="linalg")
