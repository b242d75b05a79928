import numpy as np
import pytest
import torch

from kronlin_nn.operators import DiagKron, Diagonal

from ..kronlin.helpers import assert_close, product_condition


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_and_diag_kron_match_their_dense_matrices(dtype):
    """Against float64 products of the same entries. Bounds (units of u, the kronlin table in
    docs/dev/testing.md): diag(d) ⊗ M by mode products, (1 + 2 + 2·2 + 1)·κ for the result and
    as much again for the reference; a diagonal scaling, one rounding per entry."""
    name = str(dtype).removeprefix("torch.")
    g = torch.Generator().manual_seed(0)
    d, M = torch.rand(4, generator=g, dtype=dtype) + 0.5, torch.randn(3, 2, generator=g, dtype=dtype)
    X = torch.randn(8, 5, generator=g, dtype=dtype)
    op = DiagKron(d, M)
    dense = torch.kron(torch.diag(d), M).double()
    assert op.shape == (12, 8)

    def check(result, matrix, operand, label):
        operand = operand.double()
        kappa = product_condition(matrix.numpy(), operand.numpy())
        assert_close(result, (matrix @ operand).numpy(), dtype=name, bound=16 * kappa, label=label)

    check(op @ X, dense, X, "DiagKron")
    ones = torch.ones(12, dtype=dtype)
    check(op.T @ ones, dense.T, ones, "DiagKron.T")
    # the row-major convention: diag(d) ⊗ M maps a (4, 2) matrix W to diag(d) W Mᵀ
    W = X[:, 0].reshape(4, 2)
    check(op @ W.reshape(-1), dense, W.reshape(-1), "DiagKron row-major")
    assert_close(Diagonal(d) @ X[:4], np.diag(d.double().numpy()) @ X[:4].double().numpy(),
                 dtype=name, bound=1, label="Diagonal")
    diagonal = Diagonal(d)
    assert diagonal.T is diagonal
