"""asv: ``BlockDiag`` and ``BlockTridiagInverse`` on K-FAC-like chains, setup and apply separately."""

import numpy as np

import kronlin as kl

from ._common import BACKENDS, DTYPES, chain, on

# name: (left factor sides, right factor sides) of the diagonal blocks
CHAINS = {"3 blocks of 64x32": ([64] * 3, [32] * 3), "4 blocks of 128x64": ([128] * 4, [64] * 4)}


class BlockOperators:
    params = (list(CHAINS), DTYPES, BACKENDS)
    param_names = ["chain", "dtype", "backend"]

    def setup(self, name, dtype, backend):
        rng = np.random.default_rng(0)
        diag, offdiag = chain(rng, *CHAINS[name])
        self.diag = [tuple(on(backend, dtype, *p)) for p in diag]
        self.offdiag = [tuple(on(backend, dtype, *p)) for p in offdiag]
        self.tridiag = kl.BlockTridiagInverse(self.diag, self.offdiag)
        self.blockdiag = self._blockdiag()
        (self.X,) = on(backend, dtype, rng.standard_normal((self.tridiag.shape[1], 8)))
        self.tridiag @ self.X
        self.blockdiag @ self.X

    def _blockdiag(self):
        return kl.BlockDiag([kl.Kron(L, R).inv() for L, R in self.diag])

    def time_tridiag_setup(self, name, dtype, backend):
        kl.BlockTridiagInverse(self.diag, self.offdiag)

    def time_blockdiag_setup(self, name, dtype, backend):
        self._blockdiag()

    def time_tridiag_apply(self, name, dtype, backend):
        self.tridiag @ self.X

    def time_blockdiag_apply(self, name, dtype, backend):
        self.blockdiag @ self.X

    def peakmem_tridiag_setup(self, name, dtype, backend):
        kl.BlockTridiagInverse(self.diag, self.offdiag)

    def peakmem_tridiag_apply(self, name, dtype, backend):
        self.tridiag @ self.X
