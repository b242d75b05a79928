import numpy as np
import pytest
import scipy.linalg

import kronlin as kl

from ..conftest import convert, to_numpy
from .helpers import assert_close, spd
from .operator_contract import InvertibleOperatorContract


class TestBlockDiagOfKrons(InvertibleOperatorContract):
    label = "BlockDiag"
    symmetric = True

    def build(self, rng, backend, dtype):
        pairs = [(spd(rng, 3), spd(rng, 2)), (spd(rng, 2), spd(rng, 4)), (spd(rng, 1), spd(rng, 3))]
        ops = [kl.Kron(convert(L, backend, dtype), convert(R, backend, dtype)) for L, R in pairs]
        dense = scipy.linalg.block_diag(*(np.kron(L, R) for L, R in pairs))
        return kl.BlockDiag(ops), dense, 10.0


def test_rectangular_blocks_and_reductions(backend, dtype):
    rng = np.random.default_rng(31)
    A, B = rng.standard_normal((2, 3)), rng.standard_normal((4, 1))
    op = kl.BlockDiag([kl.Kron(convert(A, backend, dtype)), kl.Kron(convert(B, backend, dtype))])
    assert op.shape == (6, 4)
    assert_close(op.to_dense(), scipy.linalg.block_diag(A, B), dtype=dtype, label="BlockDiag")
    assert_close(op.T.to_dense(), scipy.linalg.block_diag(A, B).T, dtype=dtype, label="BlockDiag")
    S1, S2 = spd(rng, 3), spd(rng, 2)
    sq = kl.BlockDiag([kl.Kron(convert(S1, backend, dtype)), kl.Kron(convert(S2, backend, dtype))])
    dense = scipy.linalg.block_diag(S1, S2)
    assert_close(sq.diagonal(), np.diag(dense), dtype=dtype, label="BlockDiag")
    assert_close(np.array([to_numpy(sq.trace())]), [np.trace(dense)], dtype=dtype, label="BlockDiag")
    assert_close(np.array([to_numpy(sq.logdet())]), [np.linalg.slogdet(dense)[1]], dtype=dtype,
                 cond=10, label="BlockDiag")


def test_errors():
    with pytest.raises(ValueError, match="ops: expected at least one block"):
        kl.BlockDiag([])
    with pytest.raises(TypeError, match=r"ops\[1\]: expected a kronlin LinearOperator, got ndarray"):
        kl.BlockDiag([kl.Kron(np.eye(2)), np.eye(2)])
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"ops: mixed array backends \(ops\[0\] is numpy, ops\[1\] is torch\)"):
        kl.BlockDiag([kl.Kron(np.eye(2)), kl.Kron(torch.eye(2, dtype=torch.float64))])
