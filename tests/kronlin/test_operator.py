import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import kronlin as kl

from ..conftest import HAS_CUDA, convert
from .chains import chain
from .helpers import assert_close, product_condition, spd
from .test_kron import kron_bound


def test_algebra_errors():
    a, b = kl.Kron(np.eye(2)), kl.Kron(np.eye(3))
    with pytest.raises(ValueError, match=r"operator sum: expected operands of one shape, got \[\(2, 2\), \(3, 3\)\]"):
        a + b
    with pytest.raises(ValueError, match=r"operator product: inner dimensions differ, \(2, 2\) @ \(3, 3\)"):
        a @ b
    with pytest.raises(ValueError, match=r"x: expected shape \(2,\) or \(2, k\), got \(3,\)"):
        a * np.ones(3)
    with pytest.raises(ValueError, match="scalar: expected a finite number, got nan"):
        float("nan") * a
    with pytest.raises(ValueError, match="op / c: c: expected a nonzero number"):
        a / 0
    with pytest.raises(ValueError, match=r"op @ scalar: .* use op \* c"):
        a @ 2.0


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
        "x, info = kl.linalg.cg(op, np.ones(6)); assert info == 0\n"
        "op.to_scipy(); repr(op + op)\n"
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


ROUNDING = kron_bound([np.ones((3, 2)), np.ones((2, 4))])
"""The bound of the Kron of :func:`_rectangular` (test_kron.kron_bound: 13, its factors merged)."""


def close(result, A, X, rounding=ROUNDING):
    """``result ≈ A X`` within ``rounding·κ(A, X)·u``."""
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
    close(product @ x, 2 * dense, x, rounding=2 * ROUNDING)
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
        close(composite.rmatmat(Y), matrix.T, Y, rounding=2 * ROUNDING)
        close(composite.T @ Y, matrix.T, Y, rounding=2 * ROUNDING)
        close(composite.T.rmatmat(X), matrix, X, rounding=2 * ROUNDING)


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
    with pytest.raises(np.linalg.LinAlgError, match=r"^Kron.inv: factors\[0\] is singular to working precision; .* K.eigh\(\).shift\(c\)"):
        kl.Kron(np.array([[1e-320]])).inv()


# -- reprs: the structure, never a private class name -------------------------------------------

def test_repr_of_kron_shows_factor_shapes_backend_dtype_and_device(backend):
    op = kl.Kron(convert(np.ones((3, 4)), backend, "float32"), convert(np.ones((2, 5)), backend, "float32"))
    device = "cuda:0" if backend == "cuda" else "cpu"
    kind = "numpy" if backend == "numpy" else "torch"
    assert repr(op) == f"<6x20 Kron(3x4 ⊗ 2x5) ({kind}, float32, {device})>"
    assert repr(op.T) == f"<20x6 Kron(4x3 ⊗ 5x2) ({kind}, float32, {device})>"


def test_repr_of_kron_eigen_shows_shift_and_inverse():
    rng = np.random.default_rng(0)
    K = kl.Kron(spd(rng, 2), spd(rng, 3))
    E = K.eigh()
    assert repr(E) == "<6x6 KronEigen(Kron(2x2 ⊗ 3x3); bases 2x2 ⊗ 3x3, orthonormal) (numpy, float64, cpu)>"
    assert "KronEigen(Kron(2x2 ⊗ 3x3) + 5·I;" in repr(E.shift(5))
    assert "KronEigen((Kron(2x2 ⊗ 3x3) + 5·I)⁻¹;" in repr(E.shift(5).inv())
    assert "KronEigen(Kron(2x2 ⊗ 3x3) − 0.25·I;" in repr(E.shift(-0.25))
    assert "KronEigen(((Kron(2x2 ⊗ 3x3))⁻¹ + 1·I)⁻¹;" in repr(E.inv().shift(1).inv())
    general = kl.KronEigen([np.eye(2) + 0.1, np.eye(3)], np.ones((2, 3)))
    assert repr(general) == "<6x6 KronEigen(K diag(S) Kᵀ; bases 2x2 ⊗ 3x3, general) (numpy, float64, cpu)>"
    assert "KronEigen((K diag(S) Kᵀ)⁻¹; bases 2x2 ⊗ 3x3, general)" in repr(general.inv())
    assert "KronEigen(K diag(S) Kᵀ;" in repr(E.shift(5).with_values(np.ones((2, 3))))


def test_repr_of_kron_diff_and_its_inverse():
    rng = np.random.default_rng(1)
    A, B = spd(rng, 3), spd(rng, 2)
    D = kl.KronDiff(A, B, 0.2 * A, 0.3 * B)
    assert repr(D) == "<6x6 KronDiff(A⊗B − C⊗D; A, C 3x3; B, D 2x2) (numpy, float64, cpu)>"
    assert "KronEigen((A⊗B − C⊗D)⁻¹; bases 3x3 ⊗ 2x2, general)" in repr(D.inv())
    assert "KronEigen((A⊗B − C⊗D + 0.1·A⊗B)⁻¹;" in repr(D.inv(damping=0.1))


def test_repr_of_block_operators_lists_their_parts():
    rng = np.random.default_rng(2)
    diag, offdiag = chain(rng, [3, 4, 2], [2, 3, 3])
    T = kl.BlockTridiagInverse(diag, offdiag, damping=0.5)
    assert repr(T) == ("<24x24 BlockTridiagInverse(3 blocks 3x3 ⊗ 2x2, 4x4 ⊗ 3x3, 2x2 ⊗ 3x3; damping 0.5) "
                       "(numpy, float64, cpu)>")
    blocks = [kl.Kron(np.eye(n)) for n in range(1, 8)]
    assert repr(kl.BlockDiag(blocks[:2])) == "<3x3 BlockDiag(Kron(1x1), Kron(2x2)) (numpy, float64, cpu)>"
    many = repr(kl.BlockDiag(blocks))
    assert "BlockDiag(Kron(1x1), Kron(2x2), Kron(3x3), … (3 more), Kron(7x7))" in many


def test_repr_of_composites_prints_parts_without_private_names():
    K = kl.Kron(np.eye(2), np.eye(3))
    M = kl.Kron(np.eye(6))
    combos = {
        2.0 * K - M / 4: "2·Kron(2x2 ⊗ 3x3) − 0.25·Kron(6x6)",
        -(K + M): "−(Kron(2x2 ⊗ 3x3) + Kron(6x6))",
        K @ M.T: "Kron(2x2 ⊗ 3x3) @ Kron(6x6)",
        (K + M) @ K: "(Kron(2x2 ⊗ 3x3) + Kron(6x6)) @ Kron(2x2 ⊗ 3x3)",
        (K @ M).T: "Kron(6x6) @ Kron(2x2 ⊗ 3x3)",
        kl.BlockDiag([K, M]).T.T: "BlockDiag(Kron(2x2 ⊗ 3x3), Kron(6x6))",
        -3 * K + M: "−3·Kron(2x2 ⊗ 3x3) + Kron(6x6)",
    }
    for op, term in combos.items():
        assert repr(op) == f"<{op.shape[0]}x{op.shape[1]} {term} (numpy, float64, cpu)>"
        assert not re.search(r"_Sum|_Scaled|_Product|_Transposed", repr(op))


def test_repr_of_a_transpose_without_structure():
    class Ones(kl.LinearOperator):
        def __init__(self):
            super().__init__((2, 3), xp=kl.Kron(np.eye(1)).xp, dtype=np.float64, device="cpu")

        def _matmat(self, X):
            return np.ones((2, 3)) @ X

        def _rmatmat(self, X):
            return np.ones((3, 2)) @ X

    assert repr(Ones().T) == "<3x2 (Ones)ᵀ (numpy, float64, cpu)>"
    np.testing.assert_array_equal(Ones().T.to_dense(), np.ones((3, 2)))  # sums of ones: exact


# -- the scipy.sparse.linalg.LinearOperator protocol ----------------------------------------------

def test_scipy_protocol_products(backend, dtype):
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((2, 2))
    K = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype))
    dense = np.kron(A, B)
    x, X = rng.standard_normal(8), rng.standard_normal((8, 3))
    y = rng.standard_normal(6)
    c = lambda a: convert(a, backend, dtype)  # noqa: E731
    bound = kron_bound([A, B])  # one apply, in units of u for κ = 1
    # (result, its expected value, and the matrix and operand whose κ scales the bound)
    for got, expected, M, Z in [
        (K.dot(c(x)), dense @ x, dense, x), (K.dot(c(X)), dense @ X, dense, X), (K * c(x), dense @ x, dense, x),
        (K * c(X), dense @ X, dense, X), (K(c(x)), dense @ x, dense, x), (c(y) * K, y @ dense, dense.T, y),
        (c(y[None]) * K, y[None] @ dense, dense.T, y), (K.dot(c(x[:, None])), dense @ x[:, None], dense, x),
        (K.adjoint() @ c(y), dense.T @ y, dense.T, y), (K.transpose() @ c(y), dense.T @ y, dense.T, y),
        (K.H @ c(y), dense.T @ y, dense.T, y),
    ]:
        assert tuple(got.shape) == expected.shape
        assert_close(got, expected, dtype=dtype, bound=bound * product_condition(M, Z), label="protocol")
    # scalings by powers of two are exact, by 3 one more rounding
    assert_close((K * 2.0).to_dense(), 2 * dense, dtype=dtype, bound=bound, label="protocol")
    assert_close((0.5 * K).to_dense(), 0.5 * dense, dtype=dtype, bound=bound, label="protocol")
    assert_close((K.dot(3)).to_dense(), 3 * dense, dtype=dtype, bound=bound + 1, label="protocol")
    S = kl.Kron(c(B), c(B))
    # Aᵀ (A X): two applies, each within the bound of its own condition (as the contract's algebra)
    assert_close((K.T * K).to_dense(), dense.T @ dense, dtype=dtype, label="protocol",
                 bound=2 * bound * product_condition(dense.T, dense))
    assert_close(K.T.dot(K).to_dense(), dense.T @ dense, dtype=dtype, label="protocol",
                 bound=2 * bound * product_condition(dense.T, dense))
    BB = np.kron(B, B)
    assert_close((S.T * S).to_dense(), BB.T @ BB, dtype=dtype, label="protocol",
                 bound=2 * kron_bound([B, B]) * product_condition(BB.T, BB))


def test_addition_with_a_scipy_operator():
    rng = np.random.default_rng(4)
    A, B = spd(rng, 3), spd(rng, 2)
    K = kl.Kron(A, B)
    M = rng.standard_normal((6, 6))
    other = spla.aslinearoperator(M)
    dense = np.kron(A, B)
    x = rng.standard_normal(6)
    # K x and M x, each within its own dot products' rounding, then one sum: |K| + |M| in κ
    bound = kron_bound([A, B]) + M.shape[1] + 1
    absolute = np.abs(dense) + np.abs(M)
    for op, expected in [(K + other, dense + M), (other + K, M + dense), (K - other, dense - M),
                         (other - K, M - dense)]:
        assert isinstance(op, spla.LinearOperator)
        assert_close(op @ x, expected @ x, dtype="float64", label="protocol",
                     bound=bound * product_condition(expected, x, absolute))
        assert_close(op.rmatvec(x), expected.T @ x, dtype="float64", label="protocol",
                     bound=bound * product_condition(expected.T, x, absolute.T))
    assert_close((K * other) @ x, dense @ M @ x, dtype="float64", label="protocol",
                 bound=bound * product_condition(dense @ M, x, np.abs(dense) @ np.abs(M)))
    with pytest.raises(TypeError, match=r"x: a SciPy LinearOperator; compose with op.to_scipy\(\) @ x"):
        K @ other


def test_torch_operator_with_a_scipy_operator_is_refused():
    torch = pytest.importorskip("torch")
    K = kl.Kron(torch.eye(3, dtype=torch.float64))
    other = spla.aslinearoperator(np.eye(3))
    with pytest.raises(TypeError, match=r"SciPy operators hold NumPy arrays .* op.to_scipy\(\) \+ other"):
        K + other
    with pytest.raises(TypeError, match=r"op.to_scipy\(\) - other"):
        other - K
    view = K.to_scipy() + other  # the documented route
    np.testing.assert_array_equal(view @ np.ones(3), 2 * np.ones(3))  # I x + I x: exact


# -- SciPy views of torch operators, and their error paths ---------------------------------------------

def test_to_scipy_of_a_cpu_torch_operator_converts_at_the_boundary(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    A, B = spd(rng, 4), spd(rng, 3)
    op = kl.Kron(torch.from_numpy(A.astype(dtype)), torch.from_numpy(B.astype(dtype)))
    view = op.to_scipy()
    assert view.dtype == np.dtype(dtype) and view.shape == (12, 12)
    dense = np.kron(A, B)
    x = rng.standard_normal(12).astype(dtype)
    x.flags.writeable = False  # SciPy may hand over read-only arrays
    out = view @ x
    assert isinstance(out, np.ndarray)
    bound = kron_bound([A, B])
    ones = np.ones((12, 2), dtype)
    assert_close(out, dense @ x, dtype=dtype, bound=bound * product_condition(dense, x), label="to_scipy")
    assert_close(view.matmat(ones), dense @ ones, dtype=dtype, bound=bound * product_condition(dense, ones),
                 label="to_scipy")
    assert_close(view.rmatvec(x), dense.T @ x, dtype=dtype, bound=bound * product_condition(dense.T, x),
                 label="to_scipy")
    with pytest.raises(ValueError, match="dimension mismatch"):  # SciPy checks shapes first
        view.matvec(np.ones(5, dtype))
    # SciPy's own wrapper cannot take a torch dtype: the documented limitation behind to_scipy()
    with pytest.raises(TypeError):
        spla.aslinearoperator(op)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_to_scipy_of_a_cuda_operator_points_to_the_device_solvers():
    import torch

    op = kl.Kron(torch.eye(3, dtype=torch.float64, device="cuda"))
    with pytest.raises(TypeError, match=r"lives on cuda:0; use kronlin.linalg.cg or kronlin.linalg.lanczos"):
        op.to_scipy()


# -- guiding errors for the usual mistakes ------------------------------------------------------------

def test_shift_on_kron_points_to_eigh_shift():
    K = kl.Kron(np.eye(2), np.eye(3))
    with pytest.raises(AttributeError, match=r"'Kron' object has no attribute 'shift': .* K.eigh\(\).shift\(c\)"):
        K.shift(0.1)
    assert not hasattr(K, "shift")
    with pytest.raises(AttributeError, match=r"^'Kron' object has no attribute 'shfit'$"):
        K.shfit  # noqa: B018


@pytest.mark.parametrize("other", [0.1 * np.eye(6), 0.1], ids=["array", "scalar"])
def test_adding_an_array_or_scalar_points_to_eigh_shift(other):
    K = kl.Kron(np.eye(2), np.eye(3))
    what = "a scalar" if np.isscalar(other) else r"an array \(ndarray\)"
    for expression in (lambda: K + other, lambda: other + K):
        with pytest.raises(TypeError, match=rf"Kron \+ {what}: .* K.eigh\(\).shift\(c\) .* kl.Kron\(M\)"):
            expression()
    with pytest.raises(TypeError, match=rf"Kron - {what}:"):
        K - other
    with pytest.raises(TypeError, match=r"KronEigen \+ .* M.shift\(c\)"):
        K.eigh() + other
    with pytest.raises(TypeError, match=r"^operator \+ .* op \+ kl.Kron\(M\)"):
        (K + K) + other


def test_adding_a_torch_tensor_is_refused_with_the_hint():
    torch = pytest.importorskip("torch")
    K = kl.Kron(torch.eye(2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"Kron \+ an array \(Tensor\): .* K.eigh\(\).shift\(c\)"):
        K + 0.1 * torch.eye(2, dtype=torch.float64)


def test_inv_with_damping_points_to_eigh_shift_inv():
    K = kl.Kron(np.eye(2), np.eye(3))
    with pytest.raises(TypeError, match=r"Kron.inv\(\) takes no damping: \(K \+ 0.1·I\)⁻¹ .* K.eigh\(\).shift\(0.1\).inv\(\)"):
        K.inv(damping=0.1)


def test_singular_factor_in_solve_names_solve_and_the_damped_route(backend):
    K = kl.Kron(convert(np.eye(2), backend, "float64"), convert(np.zeros((3, 3)), backend, "float64"))
    b = convert(np.ones(6), backend, "float64")
    with pytest.raises(kl.LinAlgError, match=r"^Kron.solve: factors\[1\] is singular.* K.eigh\(\).shift\(c\)"):
        K.solve(b)
    with pytest.raises(kl.LinAlgError, match=r"^Kron.inv: factors\[1\] is singular"):
        K.inv()


def test_kron_eigen_zero_values_name_the_method_and_suggest_shift():
    E = kl.KronEigen([np.eye(2)], np.array([1.0, 0.0]), orthonormal=True)
    with pytest.raises(kl.LinAlgError, match=r"^KronEigen.solve: values contain zeros.* M.shift\(c\)"):
        E.solve(np.ones(2))
    with pytest.raises(kl.LinAlgError, match=r"^KronEigen.inv: values contain zeros"):
        E.inv()
    with pytest.raises(ValueError, match="shift: needs orthonormal bases .* is not M \\+ cI"):
        kl.KronEigen([np.eye(2)], np.ones(2)).shift(1.0)
    with pytest.raises(ValueError, match="c: expected a finite number, got inf"):
        E.shift(np.inf)


def test_protocol_results_stay_in_the_operand_backend():
    torch = pytest.importorskip("torch")
    K = kl.Kron(torch.eye(2, dtype=torch.float64))
    for out in (K * torch.ones(2, dtype=torch.float64), K.dot(torch.ones(2, 1, dtype=torch.float64)),
                torch.ones(2, dtype=torch.float64) * K):
        assert isinstance(out, torch.Tensor)
