import subprocess
import sys

import numpy as np
import pytest

import kronlin as kl

from .helpers import assert_close, product_condition


def test_algebra_errors():
    a, b = kl.Kron(np.eye(2)), kl.Kron(np.eye(3))
    with pytest.raises(ValueError, match=r"operator sum: expected operands of one shape, got \[\(2, 2\), \(3, 3\)\]"):
        a + b
    with pytest.raises(ValueError, match=r"operator product: inner dimensions differ, \(2, 2\) @ \(3, 3\)"):
        a @ b
    with pytest.raises(TypeError):
        a * np.ones(2)


def test_repr_names_backend_dtype_and_device():
    op = kl.Kron(np.eye(2, dtype=np.float32), np.eye(3, dtype=np.float32))
    assert repr(op) == "<6x6 Kron (numpy, float32, cpu)>"


def test_mixed_dtype_factors_promote():
    op = kl.Kron(np.eye(2, dtype=np.float32), np.eye(2))
    assert op.dtype == np.float64


def test_import_without_torch_and_never_imports_torch():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, kronlin as kl\n"
        "op = kl.Kron(np.eye(2), np.eye(3)).eigh().shift(1.0).inv()\n"
        "assert np.allclose(op @ np.ones(6), 0.5)\n"
        "kl.BlockTridiagInverse([(np.eye(2), np.eye(2))] * 2, [(0.1 * np.eye(2), 0.1 * np.eye(2))])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, kronlin; assert 'torch' not in sys.modules and 'kronlin_nn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_device_mismatch_is_reported():
    torch = pytest.importorskip("torch")
    op = kl.Kron(torch.eye(2, dtype=torch.float64))
    meta = torch.ones(2, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="x: expected an array on device cpu, got meta"):
        op @ meta


def _rectangular():
    rng = np.random.default_rng(51)
    A, B = rng.standard_normal((3, 2)), rng.standard_normal((2, 4))
    return kl.Kron(A, B), np.kron(A, B)


def close(result, A, X, rounding=11):
    """``result ≈ A X`` within ``rounding·κ(A, X)·u`` (11: the bound of the Kron above, test_kron.kron_bound)."""
    assert_close(result, A @ X, dtype="float64", bound=rounding * product_condition(A, X), label="operator")


def test_vector_methods_accept_a_single_column_and_refuse_more():
    op, dense = _rectangular()  # 6 × 8
    x, y = np.arange(8.0), np.arange(6.0)
    assert op.matvec(x[:, None]).shape == (6, 1)
    close(op.matvec(x[:, None])[:, 0], dense, x)
    assert op.rmatvec(y[:, None]).shape == (8, 1)
    close(op.rmatvec(y[:, None])[:, 0], dense.T, y)
    close(op.rmatvec(y), dense.T, y)
    with pytest.raises(ValueError, match=r"^x: expected shape \(8,\), got \(8, 2\)$"):
        op.matvec(np.ones((8, 2)))
    with pytest.raises(ValueError, match=r"^x: expected shape \(6,\), got \(6, 2\)$"):
        op.rmatvec(np.ones((6, 2)))
    with pytest.raises(ValueError, match=r"^x: expected shape \(6,\) or \(6, k\), got \(8,\)$"):
        op.rmatvec(x)


def test_block_methods_refuse_vectors_naming_X():
    op, _ = _rectangular()
    with pytest.raises(ValueError, match=r"^X: expected shape \(8, k\), got \(8,\)$"):
        op.matmat(np.ones(8))
    with pytest.raises(ValueError, match=r"^X: expected shape \(6, k\), got \(6,\)$"):
        op.rmatmat(np.ones(6))
    with pytest.raises(ValueError, match=r"^X: expected shape \(8,\) or \(8, k\), got \(6, 2\)$"):
        op.matmat(np.ones((6, 2)))
    with pytest.raises(ValueError, match=r"^X: expected shape \(6,\) or \(6, k\), got \(8, 2\)$"):
        op.rmatmat(np.ones((8, 2)))


def test_left_multiplication_by_a_vector_and_bad_operands():
    op, dense = _rectangular()
    y = np.arange(6.0)
    out = y @ op
    assert out.shape == (8,)
    close(out, dense.T, y)
    with pytest.raises(ValueError, match=r"^x: expected shape \(6,\) or \(6, k\), got \(8,\)$"):
        np.ones(8) @ op
    with pytest.raises(TypeError, match="^x: expected a NumPy array or a torch tensor, got list$"):
        [1.0] * 6 @ op


def test_lazy_algebra_applies_and_keeps_shapes():
    op, dense = _rectangular()  # 6 × 8
    x = np.arange(8.0)
    close((2.0 * op) @ x, 2 * dense, x)
    close((op + op) @ x, 2 * dense, x, rounding=12)
    square = kl.Kron(np.eye(3) * 2, np.eye(2))
    product = square @ op  # (6 × 6) (6 × 8)
    assert product.shape == (6, 8)
    close(product @ x, 2 * dense, x, rounding=2 * 11)
    assert (op.T @ square).shape == (8, 6)


def test_to_dense_keeps_the_operator_dtype():
    op = kl.Kron(np.eye(2, dtype=np.float32), np.ones((2, 3), np.float32))
    assert op.to_dense().dtype == np.float32
    assert (2.0 * op).to_dense().dtype == np.float32


def test_to_scipy_forwards_blocks_in_one_call(monkeypatch):
    op, dense = _rectangular()
    calls = []
    for method in ("matmat", "rmatmat"):
        real = getattr(op, method)
        monkeypatch.setattr(op, method, lambda X, real=real, method=method: calls.append(method) or real(X))
    view = op.to_scipy()
    X = np.ones((8, 5))
    close(view.matmat(X), dense, X)
    close(view.rmatmat(np.ones((6, 4))), dense.T, np.ones((6, 4)))
    assert calls == ["matmat", "rmatmat"]


def test_algebra_of_mixed_backends_names_the_operation():
    torch = pytest.importorskip("torch")
    a, b = kl.Kron(np.eye(2)), kl.Kron(torch.eye(2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^operator sum: mixed array backends \(operator sum\[0\] is numpy"):
        a + b
    with pytest.raises(TypeError, match=r"^operator product: mixed array backends \(operator product\[0\] is numpy"):
        a @ b


class _Dense(kl.LinearOperator):
    """A minimal subclass with no structured transpose: ``.T`` is the generic lazy transpose."""

    def __init__(self, M):
        super().__init__(M.shape, xp=kl.Kron(M).xp, dtype=M.dtype, device="cpu")
        self.M = M

    def _matmat(self, X):
        return self.M @ X

    def _rmatmat(self, X):
        return self.M.T @ X


def test_lazy_transposes_and_adjoint_applies_of_composites():
    op, dense = _rectangular()  # 6 × 8
    generic = _Dense(dense)
    Y, X = np.arange(12.0).reshape(6, 2), np.arange(16.0).reshape(8, 2)
    assert generic.T.shape == (8, 6) and generic.T.dtype == np.float64 and generic.T.T is generic
    close(generic.T @ Y, dense.T, Y)
    close(generic.T.rmatmat(X), dense, X)
    # rmatmat of sums, scalings and products, and their transposes, against the dense algebra
    square = kl.Kron(2 * np.eye(3), np.eye(2))
    for composite, matrix in [
        (op + generic, 2 * dense), (3.0 * op, 3 * dense), (square @ op, 2 * dense), (square @ generic, 2 * dense),
    ]:
        close(composite.rmatmat(Y), matrix.T, Y, rounding=2 * 11)
        close(composite.T @ Y, matrix.T, Y, rounding=2 * 11)
        close(composite.T.rmatmat(X), matrix, X, rounding=2 * 11)


def test_composites_promote_dtypes_over_all_operands():
    f32 = kl.Kron(np.eye(2, dtype=np.float32))
    f64 = kl.Kron(np.eye(2))
    assert (f32 + f64).dtype == np.float64 and (f64 + f32).dtype == np.float64
    assert (f32 @ f64).dtype == np.float64 and (f32 + f32).dtype == np.float32
    assert kl.BlockDiag([f32, f64, f32]).dtype == np.float64
    assert kl.BlockDiag([f32, f32, f64]).dtype == np.float64
    single = kl.BlockDiag([f32])
    assert single.dtype == np.float32 and single.device == "cpu" and single.shape == (2, 2)


def test_inverse_refuses_an_inverse_that_overflows():
    # LAPACK inverts a 1×1 subnormal without complaint; its inverse is inf
    with pytest.raises(np.linalg.LinAlgError, match=r"^Kron.inv: factors\[0\] is singular to working precision$"):
        kl.Kron(np.array([[1e-320]])).inv()
