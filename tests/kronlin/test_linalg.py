import numpy as np

import kronlin as kl
from kronlin import linalg

from ..conftest import convert
from .helpers import assert_close, spd


def test_kron_matmul(backend, dtype):
    rng = np.random.default_rng(41)
    A, B, x = rng.standard_normal((3, 2)), rng.standard_normal((2, 4)), rng.standard_normal(8)
    out = linalg.kron_matmul([convert(A, backend, dtype), convert(B, backend, dtype)], convert(x, backend, dtype))
    assert_close(out, np.kron(A, B) @ x, dtype=dtype, cond=10, label="linalg")


def test_kron_solve_plain_and_damped(backend, dtype):
    rng = np.random.default_rng(42)
    A, B, b = spd(rng, 3), spd(rng, 4), rng.standard_normal(12)
    fs = [convert(A, backend, dtype), convert(B, backend, dtype)]
    K = np.kron(A, B)
    assert_close(linalg.kron_solve(fs, convert(b, backend, dtype)), np.linalg.solve(K, b),
                 dtype=dtype, cond=np.linalg.cond(K), label="linalg")
    assert_close(linalg.kron_solve(fs, convert(b, backend, dtype), damping=0.2),
                 np.linalg.solve(K + 0.2 * np.eye(12), b), dtype=dtype, cond=np.linalg.cond(K), label="linalg")


def test_kron_diff_solve(backend, dtype):
    rng = np.random.default_rng(43)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)
    b = rng.standard_normal(6)
    dense = np.kron(A, B) - np.kron(C, D)
    out = linalg.kron_diff_solve(*(convert(M, backend, dtype) for M in (A, B, C, D)), convert(b, backend, dtype))
    assert_close(out, np.linalg.solve(dense, b), dtype=dtype, cond=np.linalg.cond(dense), label="linalg")


def test_kron_matmul_takes_the_kernel_argument(backend):
    rng = np.random.default_rng(44)
    A, B, X = rng.standard_normal((3, 4)), rng.standard_normal((5, 2)), rng.standard_normal((8, 7))
    kernels = ["auto", "rotate", "modes", kl.KronPlan("modes", ((0, 1),))]
    kernels += ["numba"] if backend == "numpy" else []
    for kernel in kernels:
        out = linalg.kron_matmul([convert(A, backend, "float64"), convert(B, backend, "float64")],
                                 convert(X, backend, "float64"), kernel=kernel)
        assert_close(out, np.kron(A, B) @ X, dtype="float64", cond=10, label="linalg")
