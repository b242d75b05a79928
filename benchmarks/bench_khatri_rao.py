"""asv: ``khatri_rao`` and ``face_split``, allocating and into ``out=``."""

import numpy as np

import kronlin as kl

from ._common import BACKENDS, DTYPES, on


class KhatriRao:
    params = ([(64, 4096), (512, 256)], DTYPES, BACKENDS)
    param_names = ["(rows, columns)", "dtype", "backend"]

    def setup(self, shape, dtype, backend):
        rng = np.random.default_rng(0)
        m, n = shape
        A, B = rng.standard_normal((m, n)), rng.standard_normal((m, n))
        self.A, self.B, self.out = on(backend, dtype, A, B, np.empty((m * m, n)))
        kl.khatri_rao(self.A, self.B, out=self.out)  # compile (or load) the Numba kernel

    def time_khatri_rao(self, shape, dtype, backend):
        kl.khatri_rao(self.A, self.B)

    def time_khatri_rao_out(self, shape, dtype, backend):
        kl.khatri_rao(self.A, self.B, out=self.out)

    def peakmem_khatri_rao(self, shape, dtype, backend):
        kl.khatri_rao(self.A, self.B)


class FaceSplit:
    params = ([(1000, 256, 64)], DTYPES, BACKENDS)
    param_names = ["(rows, m, p)", "dtype", "backend"]

    def setup(self, shape, dtype, backend):
        rng = np.random.default_rng(0)
        n, m, p = shape
        self.g, self.a = on(backend, dtype, rng.standard_normal((n, m)), rng.standard_normal((n, p)))
        kl.face_split(self.g, self.a)

    def time_face_split(self, shape, dtype, backend):
        kl.face_split(self.g, self.a)

    def peakmem_face_split(self, shape, dtype, backend):
        kl.face_split(self.g, self.a)
