import pytest
import torch

from kronlin_nn.operators import DiagKron, Diagonal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_and_diag_kron_match_their_dense_matrices(dtype):
    g = torch.Generator().manual_seed(0)
    d, M = torch.rand(4, generator=g, dtype=dtype) + 0.5, torch.randn(3, 2, generator=g, dtype=dtype)
    X = torch.randn(8, 5, generator=g, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
    op = DiagKron(d, M)
    dense = torch.kron(torch.diag(d), M)
    assert op.shape == (12, 8)
    torch.testing.assert_close(op @ X, dense @ X, **tol)
    torch.testing.assert_close(op.T @ torch.ones(12, dtype=dtype), dense.T @ torch.ones(12, dtype=dtype),
                               **tol)
    # the row-major convention: diag(d) ⊗ M maps a (4, 2) matrix W to diag(d) W Mᵀ
    W = X[:, 0].reshape(4, 2)
    torch.testing.assert_close(op @ W.reshape(-1), (torch.diag(d) @ W @ M.T).reshape(-1), **tol)
    diagonal = Diagonal(d)
    torch.testing.assert_close(diagonal @ X[:4], torch.diag(d) @ X[:4], **tol)
    assert diagonal.T is diagonal
