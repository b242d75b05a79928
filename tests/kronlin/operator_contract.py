"""The operator contract every kronlin operator passes (design.md §2, §6).

A test class inherits :class:`OperatorContract` and implements ``build(rng, backend, dtype)``,
returning the operator, its dense float64 NumPy reference and its error bound: the rounding
errors of one entry of ``to_dense()`` in units of the unit roundoff (tests/kronlin/helpers.py),
optionally with the dense ``|·|`` of its structure (``|K| diag|S| |K|ᵀ``) when its terms can
cancel. Every check scales that bound by the condition of its own product. Every test then runs
on NumPy and torch (CUDA when present), float64 and float32, with a seed derived from the class
label, backend and dtype by ``zlib.crc32`` (replayable across processes and hash seeds).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse.linalg

import kronlin

from ..conftest import convert, to_numpy
from .helpers import UNIT_ROUNDOFF, assert_close, product_condition


def stable_seed(*parts) -> int:
    """A seed from ``parts`` that is the same in every process (``hash`` is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


@dataclass(frozen=True)
class ErrorModel:
    """How far a computed operator may be from its dense reference.

    ``bound``: the error of one ``to_dense()`` entry in units of ``u``; ``absolute``: the dense
    ``|·|`` of the operator's structure (default ``|A|``); ``apply``: the rounding errors of one
    apply alone (default ``bound``; smaller where ``bound`` counts a factorization's error);
    ``inverse_condition``: what amplifies the inverse's error (default ``cond(A)``; ``Σⱼ cond(Fⱼ)``
    for a Kronecker product, whose factors are inverted one by one).
    """

    bound: float
    absolute: np.ndarray | None = None
    apply: float | None = None
    inverse_condition: float | None = None

    def condition(self, dense, X, transpose=False):
        """``κ(A, X)`` of :func:`product_condition` for ``A = dense`` (or ``denseᵀ``)."""
        absolute = self.absolute
        if transpose:
            dense, absolute = dense.T, None if absolute is None else absolute.T
        return product_condition(dense, X, absolute)


class OperatorContract:
    label = "operator"
    symmetric = False

    def build(self, rng, backend, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def case(self, backend, dtype):
        rng = np.random.default_rng(stable_seed(self.label, backend, dtype))
        op, dense, model = self.build(rng, backend, dtype)
        model = model if isinstance(model, ErrorModel) else ErrorModel(model)
        return op, np.asarray(dense, dtype=np.float64), model, rng, backend, dtype

    def close(self, result, reference, case, X=None, transpose=False, scale=1.0, what=""):
        """``result ≈ reference`` within ``scale · bound · κ(A, X)`` (``κ = 1`` without ``X``)."""
        _, dense, model, _, _, dtype = case
        kappa = 1.0 if X is None else model.condition(dense, X, transpose)
        assert_close(result, reference, dtype=dtype, bound=scale * model.bound * kappa,
                     label=self.label + what)

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
        self.close(y, dense @ x, case, X=x)
        self.close(op @ convert(x, backend, dtype), dense @ x, case, X=x)

    def test_matmat_and_at_block(self, case):
        op, dense, _, rng, backend, dtype = case
        X = rng.standard_normal((dense.shape[1], 3))
        Y = op.matmat(convert(X, backend, dtype))
        assert tuple(Y.shape) == (dense.shape[0], 3)
        self.close(Y, dense @ X, case, X=X)
        self.close(op @ convert(X, backend, dtype), dense @ X, case, X=X)

    def test_rmatvec_rmatmat_and_left_multiplication(self, case):
        op, dense, _, rng, backend, dtype = case
        x = rng.standard_normal(dense.shape[0])
        X = rng.standard_normal((dense.shape[0], 2))
        self.close(op.rmatvec(convert(x, backend, dtype)), dense.T @ x, case, X=x, transpose=True)
        self.close(op.rmatmat(convert(X, backend, dtype)), dense.T @ X, case, X=X, transpose=True)
        self.close(convert(X.T, backend, dtype) @ op, X.T @ dense, case, X=X, transpose=True)

    def test_transpose(self, case):
        op, dense, *_ = case
        self.close(op.T.to_dense(), dense.T, case)
        self.close(op.T.T.to_dense(), dense, case)

    def test_adjoint_identity(self, case):
        # ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ (PyLops' dot test)
        # for 8 pairs at once: ⟨A xᵢ, yⱼ⟩ = ⟨xᵢ, Aᵀ yⱼ⟩, so that the error is not one lucky number
        op, dense, _, rng, backend, dtype = case
        X = rng.standard_normal((dense.shape[1], 8))
        Y = rng.standard_normal((dense.shape[0], 8))
        lhs = to_numpy(op @ convert(X, backend, dtype)).T @ Y
        rhs = X.T @ to_numpy(op.T @ convert(Y, backend, dtype))
        # both sides run the same apply (the inner products are float64, on the host): they differ
        # by its rounding, not by the representation's error. Independent roundings of n terms
        # of sizes |yᵢ|(|A||x|)ᵢ sum to at most λ·√n·u·‖t‖₂ with probability 1 − 2e^(−λ²/2)
        # (Higham & Mary 2019, Thm 3.1); λ = 5
        model = case[2]
        absolute = np.abs(dense) if model.absolute is None else model.absolute
        AX = absolute @ np.abs(X)  # tᵢⱼ = ‖|yⱼ| ∘ (|A||xᵢ|)‖₂
        terms = np.sqrt((AX**2).T @ Y**2)
        rounding = model.bound if model.apply is None else model.apply
        bound = 2 * 5 * np.sqrt(rounding) * np.linalg.norm(terms) / np.linalg.norm(rhs)
        assert_close(lhs, rhs, dtype=dtype, bound=bound, label=self.label)

    def test_promotes_float32_operand_dtype(self, case):
        op, dense, _, rng, backend, dtype = case
        x = convert(rng.standard_normal(dense.shape[1]), backend, "float64")
        assert str((op @ x).dtype).endswith("float64")

    def test_algebra(self, case):
        op, dense, _, rng, backend, dtype = case
        combo = 2.0 * op - op / 4.0
        # the scalings by 2 and 1/4 are exact; the difference of same-sign terms adds 2 roundings
        self.close(combo.to_dense(), 1.75 * dense, case, scale=1 + 2 / case[2].bound)
        self.close((-op).T.to_dense(), -dense.T, case)
        product = op.T @ op
        # Aᵀ (A X): two products, each within the bound of its own condition
        self.close(product.to_dense(), dense.T @ dense, case, X=dense, transpose=True, scale=2.0)

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
            self.close(view.matmat(X), dense @ X, case, X=X)
            self.close(view.rmatvec(y), dense.T @ y, case, X=y, transpose=True)
        if self.symmetric and dtype == "float64":
            b = rng.standard_normal(dense.shape[0])
            x, info = scipy.sparse.linalg.gmres(op.to_scipy(), b, rtol=1e-10, maxiter=500,
                                                restart=dense.shape[0])
            assert info == 0
            # a posteriori: ‖x − x*‖/‖x*‖ ≤ cond(A)·‖b − A x‖/‖b‖, plus the operator's own error
            cond = np.linalg.cond(dense)
            residual = np.linalg.norm(b - dense @ x) / np.linalg.norm(b)
            model = case[2]
            assert_close(x, np.linalg.solve(dense, b), dtype=dtype, label=self.label,
                         bound=model.bound + cond * residual / UNIT_ROUNDOFF["float64"])
            w = scipy.sparse.linalg.eigsh(op.to_scipy(), k=1, which="LA",
                                          return_eigenvectors=False)
            # Weyl: |Δλ| ≤ ‖A_computed − A‖₂ ≤ bound·u·‖A‖₂, ‖A‖₂ = λ_max here; Lanczos adds n·u
            assert_close(w, np.linalg.eigvalsh(dense)[-1:], dtype=dtype, label=self.label,
                         bound=model.bound + dense.shape[0])

    def check_torch_scipy_interop(self, case):
        """Torch operators: a SciPy view on the CPU (refused on a GPU), and kronlin's Krylov solvers
        on the device against SciPy's on the NumPy twin (the dense reference)."""
        op, dense, model, rng, backend, dtype = case
        with pytest.raises(TypeError):  # SciPy's own wrapper cannot read a torch dtype
            scipy.sparse.linalg.aslinearoperator(op)
        if backend == "cuda":
            with pytest.raises(TypeError, match="use kronlin.linalg.cg or kronlin.linalg.lanczos"):
                op.to_scipy()
        else:
            view = op.to_scipy()
            X = rng.standard_normal((dense.shape[1], 2)).astype(dtype)
            y = rng.standard_normal(dense.shape[0]).astype(dtype)
            self.close(view.matmat(X), dense @ X, case, X=X)
            self.close(view.rmatvec(y), dense.T @ y, case, X=y, transpose=True)
        if self.symmetric and dtype == "float64":
            b = rng.standard_normal(dense.shape[0])
            x, info = kronlin.linalg.cg(op @ op, op @ convert(b, backend, dtype), rtol=1e-12,
                                        maxiter=50 * dense.shape[0])
            x_ref, info_ref = scipy.sparse.linalg.cg(dense @ dense, dense @ b, rtol=1e-12,
                                                     maxiter=50 * dense.shape[0])
            assert info == info_ref == 0
            # a posteriori, each against x* = (A²)⁻¹ A b: ‖x − x*‖/‖x*‖ ≤ cond(A²)·‖A b − A² x‖/‖A b‖
            # (the residual on the dense system counts kronlin's rounding of A b and A² x too)
            x = to_numpy(x)
            rhs = dense @ b
            residuals = [np.linalg.norm(rhs - dense @ (dense @ v)) / np.linalg.norm(rhs) for v in (x, x_ref)]
            assert_close(x, x_ref, dtype=dtype, label=self.label,
                         bound=model.bound + np.linalg.cond(dense) ** 2 * sum(residuals)
                         / UNIT_ROUNDOFF["float64"])
            w = kronlin.linalg.lanczos(op, k=1, which="LA", return_eigenvectors=False)
            w_ref = scipy.sparse.linalg.eigsh(dense, k=1, which="LA", return_eigenvectors=False)
            # Weyl as above; each Lanczos adds n·u
            assert_close(w, w_ref, dtype=dtype, label=self.label, bound=model.bound + 2 * dense.shape[0])


class InvertibleOperatorContract(OperatorContract):
    """The contract plus ``inv()`` and ``solve()`` against ``np.linalg``."""

    def test_inverse_round_trip(self, case):
        op, dense, _, rng, backend, dtype = case
        # the computed inverse is within bound·u of A⁻¹ relative to A's entries: cond(A) times that
        model = case[2]
        cond = np.linalg.cond(dense) if model.inverse_condition is None else model.inverse_condition
        inv = op.inv()
        x = rng.standard_normal(dense.shape[0])
        self.close(op @ (inv @ convert(x, backend, dtype)), x, case, scale=2 * cond)
        self.close(inv.to_dense(), np.linalg.inv(dense), case, scale=cond)
        self.close(op.solve(convert(x, backend, dtype)), np.linalg.solve(dense, x), case, scale=cond)
