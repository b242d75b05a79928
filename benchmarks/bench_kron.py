"""asv: ``Kron`` and ``KronEigen`` (the damped Kronecker inverse), setup and apply separately;
the Kronecker-matmat grid of issue 15 (``kron_grid.py``) for kronlin, pyfastkron and the NumPy
expressions."""

import numpy as np

import kronlin as kl

from ._common import BACKENDS, DTYPES, on, spd
from .kron_grid import all_cells, data, numpy_expressions, pyfastkron

GRID = {cell.key: cell for cell in all_cells()}
EXPRESSIONS = ["matmul modes", "shuffle", "tensordot", "A @ X @ B.T"]

# name: (factor sides, right-hand sides). "2x256": the GEMM floor; "4x16": many small factors
# (the Numba kernel on NumPy); "3x32": in between.
KRON_CASES = {"2x256 k64": ([256, 256], 64), "3x32 k64": ([32, 32, 32], 64), "4x16 k256": ([16] * 4, 256)}


class KronApply:
    params = (list(KRON_CASES), DTYPES, BACKENDS)
    param_names = ["case", "dtype", "backend"]

    def setup(self, case, dtype, backend):
        sides, k = KRON_CASES[case]
        rng = np.random.default_rng(0)
        *factors, X = on(backend, dtype, *(rng.standard_normal((n, n)) for n in sides),
                         rng.standard_normal((int(np.prod(sides)), k)))
        self.op, self.X, self.x = kl.Kron(*factors), X, X[:, 0]
        self.op @ self.X  # warm-up: Numba compiles or loads its cache outside the timed region

    def time_matmat(self, case, dtype, backend):
        self.op @ self.X

    def time_matvec(self, case, dtype, backend):
        self.op @ self.x

    def peakmem_matmat(self, case, dtype, backend):
        self.op @ self.X


class KronSetup:
    params = ([64, 256], DTYPES, BACKENDS)
    param_names = ["n", "dtype", "backend"]

    def setup(self, n, dtype, backend):
        rng = np.random.default_rng(0)
        self.A, self.B = on(backend, dtype, spd(rng, n), spd(rng, n // 2))
        self.op = kl.Kron(self.A, self.B)

    def time_construct(self, n, dtype, backend):
        kl.Kron(self.A, self.B)

    def time_inv(self, n, dtype, backend):
        self.op.inv()

    def time_damped_inverse(self, n, dtype, backend):
        self.op.eigh().shift(1e-2).inv()

    def peakmem_damped_inverse(self, n, dtype, backend):
        self.op.eigh().shift(1e-2).inv()


class KronEigenApply:
    params = ([256], [1, 64], DTYPES, BACKENDS)
    param_names = ["n", "k", "dtype", "backend"]

    def setup(self, n, k, dtype, backend):
        rng = np.random.default_rng(0)
        A, B, X = on(backend, dtype, spd(rng, n), spd(rng, n // 2), rng.standard_normal((n * (n // 2), k)))
        self.op, self.X = kl.Kron(A, B).eigh().shift(1e-2).inv(), X
        self.op @ self.X

    def time_apply(self, n, k, dtype, backend):
        self.op @ self.X

    def peakmem_apply(self, n, k, dtype, backend):
        self.op @ self.X


class KronGrid:
    """``Kron(*factors) @ X`` over the grid, the plan chosen by the cost model (NumPy)."""

    params = (list(GRID), DTYPES)
    param_names = ["cell", "dtype"]
    timeout = 600

    def setup(self, cell, dtype):
        factors, self.X = data(GRID[cell], dtype)
        self.op = kl.Kron(*factors)
        self.op @ self.X  # Numba compiles or loads its cache, the plan is chosen: not timed

    def time_kronlin(self, cell, dtype):
        self.op @ self.X


class KronGridPyfastkron:
    """``pyfastkron.fastkronnumpy.gekmm(factors, X)`` on the same cells (skipped if not installed)."""

    params = (list(GRID), DTYPES)
    param_names = ["cell", "dtype"]
    timeout = 600

    def setup(self, cell, dtype):
        self.fk = pyfastkron()
        if self.fk is None:
            raise NotImplementedError("pyfastkron is not installed")
        self.factors, self.X = data(GRID[cell], dtype)
        self.fk.gekmm(self.factors, self.X)  # its autotuner runs on the first call: not timed

    def time_pyfastkron(self, cell, dtype):
        self.fk.gekmm(self.factors, self.X)


class KronGridNumPy:
    """The NumPy/BLAS expressions of ``kron_grid.numpy_expressions`` on the same cells."""

    params = (list(GRID), DTYPES, EXPRESSIONS)
    param_names = ["cell", "dtype", "expression"]
    timeout = 600

    def setup(self, cell, dtype, expression):
        factors, X = data(GRID[cell], dtype)
        expressions = numpy_expressions(factors, X)
        if expression not in expressions:
            raise NotImplementedError(f"{expression} needs two factors")
        self.fn = expressions[expression]

    def time_expression(self, cell, dtype, expression):
        self.fn()
