"""asv: ``KronDiff`` (the difference and its exact inverse), setup and apply separately."""

import numpy as np

import kronlin as kl

from ._common import BACKENDS, DTYPES, on, spd


class KronDiff:
    params = ([128], DTYPES, BACKENDS)
    param_names = ["n", "dtype", "backend"]

    def setup(self, n, dtype, backend):
        rng = np.random.default_rng(0)
        A, B = spd(rng, n), spd(rng, n // 2)
        self.args = on(backend, dtype, A, B, 0.5 * spd(rng, n, 0), 0.5 * spd(rng, n // 2, 0))
        (self.X,) = on(backend, dtype, rng.standard_normal((n * (n // 2), 16)))
        self.op = kl.KronDiff(*self.args)
        self.inv = self.op.inv()
        self.inv @ self.X

    def time_construct(self, n, dtype, backend):
        kl.KronDiff(*self.args)

    def time_inv_setup(self, n, dtype, backend):
        self.op.inv()

    def time_apply(self, n, dtype, backend):
        self.op @ self.X

    def time_inv_apply(self, n, dtype, backend):
        self.inv @ self.X

    def peakmem_inv_setup(self, n, dtype, backend):
        self.op.inv()
