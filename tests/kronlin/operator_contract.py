"""The operator contract every kronlin operator passes (design.md §2, §6).

A test class inherits :class:`OperatorContract` and implements ``build(rng, backend, dtype)``,
returning the operator and its dense float64 NumPy reference (and a condition-number scale for
tolerances). Every test then runs on NumPy and torch (CUDA when present), float64 and float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg

import kronlin

from ..conftest import convert, to_numpy
from .helpers import assert_close


class OperatorContract:
    label = "operator"
    symmetric = False

    def build(self, rng, backend, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def case(self, backend, dtype):
        rng = np.random.default_rng(abs(hash((self.label, backend, dtype))) % 2**32)
        built = self.build(rng, backend, dtype)
        op, dense = built[:2]
        cond = built[2] if len(built) > 2 else 1.0
        return op, np.asarray(dense, dtype=np.float64), cond, rng, backend, dtype

    def close(self, result, reference, case, cond_scale=1.0, what=""):
        *_, cond, _, _, dtype = case
        assert_close(result, reference, dtype=dtype, cond=cond * cond_scale, label=self.label + what)

    def test_shape_dtype_device(self, case):
        op, dense, _, _, backend, dtype = case
        assert op.shape == dense.shape
        assert str(op.dtype).endswith(dtype)
        assert str(op.device).startswith("cuda" if backend == "cuda" else "cpu")

    def test_to_dense(self, case):
        op, dense, *_ = case
        self.close(op.to_dense(), dense, case)

    def test_matvec_and_at_vector(self, case):
        op, dense, _, rng, backend, dtype = case
        x = rng.standard_normal(dense.shape[1])
        y = op.matvec(convert(x, backend, dtype))
        assert tuple(y.shape) == (dense.shape[0],)
        self.close(y, dense @ x, case)
        self.close(op @ convert(x, backend, dtype), dense @ x, case)

    def test_matmat_and_at_block(self, case):
        op, dense, _, rng, backend, dtype = case
        X = rng.standard_normal((dense.shape[1], 3))
        Y = op.matmat(convert(X, backend, dtype))
        assert tuple(Y.shape) == (dense.shape[0], 3)
        self.close(Y, dense @ X, case)
        self.close(op @ convert(X, backend, dtype), dense @ X, case)

    def test_rmatvec_rmatmat_and_left_multiplication(self, case):
        op, dense, _, rng, backend, dtype = case
        x = rng.standard_normal(dense.shape[0])
        X = rng.standard_normal((dense.shape[0], 2))
        self.close(op.rmatvec(convert(x, backend, dtype)), dense.T @ x, case)
        self.close(op.rmatmat(convert(X, backend, dtype)), dense.T @ X, case)
        self.close(convert(X.T, backend, dtype) @ op, X.T @ dense, case)

    def test_transpose(self, case):
        op, dense, *_ = case
        self.close(op.T.to_dense(), dense.T, case)
        self.close(op.T.T.to_dense(), dense, case)

    def test_adjoint_identity(self, case):
        # ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ (PyLops' dot test)
        op, dense, _, rng, backend, dtype = case
        x = rng.standard_normal(dense.shape[1])
        y = rng.standard_normal(dense.shape[0])
        lhs = float(to_numpy(op @ convert(x, backend, dtype)) @ y)
        rhs = float(x @ to_numpy(op.T @ convert(y, backend, dtype)))
        scale = np.linalg.norm(dense) * np.linalg.norm(x) * np.linalg.norm(y)
        self.close(np.array([lhs]), np.array([rhs]), case, cond_scale=scale / max(abs(rhs), 1e-300))

    def test_promotes_float32_operand_dtype(self, case):
        op, dense, _, rng, backend, dtype = case
        x = convert(rng.standard_normal(dense.shape[1]), backend, "float64")
        assert str((op @ x).dtype).endswith("float64")

    def test_algebra(self, case):
        op, dense, _, rng, backend, dtype = case
        combo = 2.0 * op - op / 4.0
        self.close(combo.to_dense(), 1.75 * dense, case)
        self.close((-op).T.to_dense(), -dense.T, case)
        product = op.T @ op
        self.close(product.to_dense(), dense.T @ dense, case, cond_scale=10.0)

    def test_rejects_wrong_operand_shape(self, case):
        op, dense, _, _, backend, dtype = case
        bad = convert(np.ones(dense.shape[1] + 1), backend, dtype)
        with pytest.raises(ValueError, match=rf"x: expected shape \({dense.shape[1]},\)"):
            op @ bad

    def test_rejects_mixed_backends(self, case):
        op, dense, _, _, backend, _ = case
        if backend == "numpy":
            torch = pytest.importorskip("torch")
            other = torch.ones(dense.shape[1], dtype=torch.float64)
            expected = "holds numpy arrays, got a torch array"
        else:
            other = np.ones(dense.shape[1])
            expected = "holds torch arrays, got a numpy array"
        with pytest.raises(TypeError, match=expected):
            op @ other

    def test_scipy_interop(self, case):
        op, dense, _, rng, backend, dtype = case
        if backend != "numpy":
            return self.check_torch_scipy_interop(case)
        for view in (scipy.sparse.linalg.aslinearoperator(op), op.to_scipy()):
            X = rng.standard_normal((dense.shape[1], 2))
            y = rng.standard_normal(dense.shape[0])
            self.close(view.matmat(X), dense @ X, case)
            self.close(view.rmatvec(y), dense.T @ y, case)
        if self.symmetric and dtype == "float64":
            b = rng.standard_normal(dense.shape[0])
            x, info = scipy.sparse.linalg.gmres(op.to_scipy(), b, rtol=1e-10, maxiter=500,
                                                restart=dense.shape[0])
            assert info == 0
            self.close(x, np.linalg.solve(dense, b), case, cond_scale=1e5)
            w = scipy.sparse.linalg.eigsh(op.to_scipy(), k=1, which="LA",
                                          return_eigenvectors=False)
            self.close(w, np.linalg.eigvalsh(dense)[-1:], case, cond_scale=1e3)

    def check_torch_scipy_interop(self, case):
        """Torch operators: a SciPy view on the CPU (refused on a GPU), and kronlin's Krylov solvers
        on the device against SciPy's on the NumPy twin (the dense reference)."""
        op, dense, _, rng, backend, dtype = case
        with pytest.raises(TypeError):  # SciPy's own wrapper cannot read a torch dtype
            scipy.sparse.linalg.aslinearoperator(op)
        if backend == "cuda":
            with pytest.raises(TypeError, match="use kronlin.linalg.cg or kronlin.linalg.lanczos"):
                op.to_scipy()
        else:
            view = op.to_scipy()
            X = rng.standard_normal((dense.shape[1], 2)).astype(dtype)
            y = rng.standard_normal(dense.shape[0]).astype(dtype)
            self.close(view.matmat(X), dense @ X, case)
            self.close(view.rmatvec(y), dense.T @ y, case)
        if self.symmetric and dtype == "float64":
            b = rng.standard_normal(dense.shape[0])
            x, info = kronlin.linalg.cg(op @ op, op @ convert(b, backend, dtype), rtol=1e-12,
                                        maxiter=50 * dense.shape[0])
            x_ref, info_ref = scipy.sparse.linalg.cg(dense @ dense, dense @ b, rtol=1e-12,
                                                     maxiter=50 * dense.shape[0])
            assert info == info_ref == 0
            self.close(x, x_ref, case, cond_scale=np.linalg.cond(dense) ** 2)
            w = kronlin.linalg.lanczos(op, k=1, which="LA", return_eigenvectors=False)
            w_ref = scipy.sparse.linalg.eigsh(dense, k=1, which="LA", return_eigenvectors=False)
            self.close(w, w_ref, case, cond_scale=1e3)



class InvertibleOperatorContract(OperatorContract):
    """The contract plus ``inv()`` and ``solve()`` against ``np.linalg``."""

    def test_inverse_round_trip(self, case):
        op, dense, _, rng, backend, dtype = case
        cond = np.linalg.cond(dense)
        inv = op.inv()
        x = rng.standard_normal(dense.shape[0])
        self.close(op @ (inv @ convert(x, backend, dtype)), x, case, cond_scale=cond)
        self.close(inv.to_dense(), np.linalg.inv(dense), case, cond_scale=cond)
        self.close(op.solve(convert(x, backend, dtype)), np.linalg.solve(dense, x), case,
                   cond_scale=cond)
