import numpy as np
import pytest
import scipy.linalg

import kronlin as kl

from ..conftest import convert, to_numpy
from .helpers import assert_close, logdet_bound, product_condition, spd
from .operator_contract import ErrorModel, InvertibleOperatorContract
from .test_kron import kron_bound


class TestBlockDiagOfKrons(InvertibleOperatorContract):
    label = "BlockDiag"
    symmetric = True

    def build(self, rng, backend, dtype):
        pairs = [(spd(rng, 3), spd(rng, 2)), (spd(rng, 2), spd(rng, 4)), (spd(rng, 1), spd(rng, 3))]
        ops = [kl.Kron(convert(L, backend, dtype), convert(R, backend, dtype)) for L, R in pairs]
        dense = scipy.linalg.block_diag(*(np.kron(L, R) for L, R in pairs))
        return kl.BlockDiag(ops), dense, ErrorModel(
            max(kron_bound(pair) for pair in pairs),
            inverse_condition=max(sum(map(np.linalg.cond, pair)) for pair in pairs))


def test_rectangular_blocks_and_reductions(backend, dtype):
    rng = np.random.default_rng(31)
    A, B = rng.standard_normal((2, 3)), rng.standard_normal((4, 1))
    op = kl.BlockDiag([kl.Kron(convert(A, backend, dtype)), kl.Kron(convert(B, backend, dtype))])
    assert op.shape == (6, 4)
    # entries are the factors' entries: one rounding to the dtype (exact in float64)
    assert_close(op.to_dense(), scipy.linalg.block_diag(A, B), dtype=dtype, bound=1, label="BlockDiag")
    assert_close(op.T.to_dense(), scipy.linalg.block_diag(A, B).T, dtype=dtype, bound=1, label="BlockDiag")
    S1, S2 = spd(rng, 3), spd(rng, 2)
    sq = kl.BlockDiag([kl.Kron(convert(S1, backend, dtype)), kl.Kron(convert(S2, backend, dtype))])
    dense = scipy.linalg.block_diag(S1, S2)
    assert_close(sq.diagonal(), np.diag(dense), dtype=dtype, bound=1, label="BlockDiag")
    # a sum of n positive terms: n roundings
    assert_close(np.array([to_numpy(sq.trace())]), [np.trace(dense)], dtype=dtype, bound=len(dense) + 1,
                 label="BlockDiag")
    assert_close(np.array([to_numpy(sq.logdet())]), [np.linalg.slogdet(dense)[1]], dtype=dtype,
                 bound=logdet_bound(dense), label="BlockDiag")


def test_errors():
    with pytest.raises(ValueError, match="ops: expected at least one block"):
        kl.BlockDiag([])
    with pytest.raises(TypeError, match=r"ops\[1\]: expected a kronlin LinearOperator, got ndarray"):
        kl.BlockDiag([kl.Kron(np.eye(2)), np.eye(2)])
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"ops: mixed array backends \(ops\[0\] is numpy, ops\[1\] is torch\)"):
        kl.BlockDiag([kl.Kron(np.eye(2)), kl.Kron(torch.eye(2, dtype=torch.float64))])


def test_rectangular_blocks_transposed_apply(backend):
    rng = np.random.default_rng(32)
    A, B = rng.standard_normal((2, 3)), rng.standard_normal((4, 1))
    op = kl.BlockDiag([kl.Kron(convert(A, backend, "float64")), kl.Kron(convert(B, backend, "float64"))])
    dense = scipy.linalg.block_diag(A, B)  # 6 × 4
    Y = rng.standard_normal((6, 2))
    # each entry: a dot product of at most 4 terms
    assert_close(op.rmatmat(convert(Y, backend, "float64")), dense.T @ Y, dtype="float64",
                 bound=5 * product_condition(dense.T, Y), label="BlockDiag")
    assert_close(op.rmatvec(convert(Y[:, 0], backend, "float64")), dense.T @ Y[:, 0], dtype="float64",
                 bound=5 * product_condition(dense.T, Y[:, 0]), label="BlockDiag")


def test_empty_message():
    with pytest.raises(ValueError, match="^ops: expected at least one block, got none$"):
        kl.BlockDiag([])
