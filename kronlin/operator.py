"""The operator protocol and its lazy algebra.

:class:`LinearOperator` follows ``scipy.sparse.linalg.LinearOperator``: ``shape``, ``dtype``,
``matvec``, ``rmatvec``, ``matmat``, ``rmatmat``, ``@``, ``.T``/``.H``; it adds ``to_dense`` and
``to_scipy``. Sums, scalar multiples, products and transposes of operators are themselves
operators that are never materialized. Subclasses implement ``_matmat`` and ``_rmatmat`` on
validated ``(n, k)`` blocks; everything else is shared.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ._backend import Array, device, dtype_name, namespace
from ._validation import check_operand


class LinearOperator:
    """Base class of kronlin's operators: a matrix known through its action on vectors.

    Operands are vectors of shape ``(n,)`` or blocks of vectors ``(n, k)`` (the columns), in the
    backend (NumPy or torch), device and floating dtype of the operator; results promote dtypes
    as NumPy/torch do. Operators are immutable.

    Args:
        shape: ``(m, n)``, the shape of the matrix.
        xp: the array-API namespace of the operator's arrays.
        dtype: the dtype of the matrix entries.
        device: where the arrays live (``"cpu"`` for NumPy).

    """

    ndim = 2
    # NumPy must defer `array @ op` to our __rmatmul__ instead of treating `op` as a scalar.
    __array_ufunc__ = None

    def __init__(self, shape: tuple[int, int], *, xp: ModuleType, dtype: Any, device: Any):
        self._shape = (int(shape[0]), int(shape[1]))
        self._xp = xp
        self._dtype = dtype
        self._device = device

    # -- protocol --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the matrix, ``(m, n)``."""
        return self._shape

    @property
    def dtype(self) -> Any:
        """The dtype of the matrix entries (a NumPy or torch dtype)."""
        return self._dtype

    @property
    def device(self) -> Any:
        """The device of the operator's arrays (``"cpu"`` for NumPy)."""
        return self._device

    @property
    def xp(self) -> ModuleType:
        """The array-API namespace of the operator's backend."""
        return self._xp

    def matvec(self, x: Array) -> Array:
        """``A x`` for ``x`` of shape ``(n,)`` (or ``(n, 1)``, as SciPy allows); same ndim out."""
        x = self._operand(x, self.shape[1], "x")
        if x.ndim == 2 and x.shape[1] != 1:
            raise ValueError(f"x: expected shape ({self.shape[1]},), got {tuple(x.shape)}")
        return self._matmat(x) if x.ndim == 2 else self._matmat(x[:, None])[:, 0]

    def rmatvec(self, x: Array) -> Array:
        """``Aᵀ x`` for ``x`` of shape ``(m,)`` (or ``(m, 1)``); same ndim out."""
        x = self._operand(x, self.shape[0], "x")
        if x.ndim == 2 and x.shape[1] != 1:
            raise ValueError(f"x: expected shape ({self.shape[0]},), got {tuple(x.shape)}")
        return self._rmatmat(x) if x.ndim == 2 else self._rmatmat(x[:, None])[:, 0]

    def matmat(self, X: Array) -> Array:
        """``A X`` for ``X`` of shape ``(n, k)``; returns ``(m, k)``."""
        X = self._operand(X, self.shape[1], "X")
        if X.ndim != 2:
            raise ValueError(f"X: expected shape ({self.shape[1]}, k), got {tuple(X.shape)}")
        return self._matmat(X)

    def rmatmat(self, X: Array) -> Array:
        """``Aᵀ X`` for ``X`` of shape ``(m, k)``; returns ``(n, k)``."""
        X = self._operand(X, self.shape[0], "X")
        if X.ndim != 2:
            raise ValueError(f"X: expected shape ({self.shape[0]}, k), got {tuple(X.shape)}")
        return self._rmatmat(X)

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _Product([self, other])
        x = self._operand(other, self.shape[1], "x")
        return self._matmat(x[:, None])[:, 0] if x.ndim == 1 else self._matmat(x)

    def __rmatmul__(self, other: Any) -> Any:
        # x @ A = (Aᵀ xᵀ)ᵀ for x of shape (m,) or (k, m)
        x = self._operand(other.T if getattr(other, "ndim", 0) == 2 else other, self.shape[0], "x")
        return self._rmatmat(x[:, None])[:, 0] if x.ndim == 1 else self._rmatmat(x).T

    @property
    def T(self) -> LinearOperator:
        """The transpose ``Aᵀ`` (lazy)."""
        return self._transpose()

    @property
    def H(self) -> LinearOperator:
        """The adjoint; equal to :attr:`T` since entries are real."""
        return self._transpose()

    def transpose(self) -> LinearOperator:
        """The transpose ``Aᵀ`` (as SciPy's ``LinearOperator.transpose``)."""
        return self._transpose()

    def adjoint(self) -> LinearOperator:
        """The adjoint (as SciPy's ``LinearOperator.adjoint``)."""
        return self._transpose()

    def to_dense(self) -> Array:
        """The matrix as a dense ``(m, n)`` array (for tests and small problems)."""
        eye = self.xp.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self._matmat(eye)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` view (NumPy-backed operators only).

        Unlike ``scipy.sparse.linalg.aslinearoperator(op)``, which also works, this view
        forwards ``matmat``/``rmatmat`` so blocks are applied in one call.
        """
        import scipy.sparse.linalg

        if _backend(self.xp) != "numpy":
            raise TypeError("to_scipy: only NumPy-backed operators can be viewed by SciPy")
        return scipy.sparse.linalg.LinearOperator(
            self.shape, matvec=self.matvec, rmatvec=self.rmatvec, matmat=self.matmat,
            rmatmat=self.rmatmat, dtype=self.dtype,
        )

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _Sum([self, other])

    def __sub__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _Sum([self, _Scaled(other, -1.0)])

    def __neg__(self) -> LinearOperator:
        return _Scaled(self, -1.0)

    def __mul__(self, scalar: Any) -> LinearOperator:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        return _Scaled(self, float(scalar))

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> LinearOperator:
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        return _Scaled(self, 1.0 / float(scalar))

    def __repr__(self) -> str:
        m, n = self.shape
        backend = "torch" if "torch" in self.xp.__name__ else "numpy"
        return f"<{m}x{n} {type(self).__name__} ({backend}, {dtype_name(self.dtype)}, {self.device})>"

    # -- for subclasses ------------------------------------------------------------------------
    def _matmat(self, X: Array) -> Array:
        raise NotImplementedError

    def _rmatmat(self, X: Array) -> Array:
        raise NotImplementedError

    def _transpose(self) -> LinearOperator:
        return _Transposed(self)

    def _operand(self, x: Any, n: int, name: str) -> Array:
        """Check backend, device and shape of an operand; promote its dtype to the result's."""
        xp = namespace(x, names=(name,))
        if xp is not self.xp:
            raise TypeError(
                f"{name}: the operator holds {_backend(self.xp)} arrays, got a {_backend(xp)} array; "
                "mixed backends are not supported"
            )
        if device(x) != self.device:
            raise ValueError(f"{name}: expected an array on device {self.device}, got {device(x)}")
        check_operand(x, n, name)
        dtype = xp.result_type(x.dtype, self.dtype)
        return x if x.dtype == dtype else xp.astype(x, dtype)


def _backend(xp: ModuleType) -> str:
    return "torch" if "torch" in xp.__name__ else "numpy"


def common_properties(ops: Sequence[LinearOperator], name: str) -> dict[str, Any]:
    """Backend, promoted dtype and device shared by ``ops``; a ``TypeError`` if backends mix."""
    xps = {op.xp for op in ops}
    if len(xps) > 1:
        kinds = ", ".join(f"{name}[{i}] is {_backend(op.xp)}" for i, op in enumerate(ops))
        raise TypeError(f"{name}: mixed array backends ({kinds}); convert all to one backend")
    devices = {str(op.device) for op in ops}
    if len(devices) > 1:
        raise ValueError(f"{name}: operators live on different devices: {sorted(devices)}")
    xp = ops[0].xp
    dtype = ops[0].dtype
    for op in ops[1:]:
        dtype = xp.result_type(dtype, op.dtype)
    return {"xp": xp, "dtype": dtype, "device": ops[0].device}


class _Scaled(LinearOperator):
    """``c · A``."""

    def __init__(self, op: LinearOperator, scalar: float):
        super().__init__(op.shape, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op, self.scalar = op, scalar

    def _matmat(self, X: Array) -> Array:
        return self.scalar * self.op._matmat(X)

    def _rmatmat(self, X: Array) -> Array:
        return self.scalar * self.op._rmatmat(X)

    def _transpose(self) -> LinearOperator:
        return _Scaled(self.op.T, self.scalar)


class _Sum(LinearOperator):
    """``A₁ + A₂ + …``."""

    def __init__(self, ops: Sequence[LinearOperator]):
        shapes = {op.shape for op in ops}
        if len(shapes) > 1:
            raise ValueError(f"operator sum: expected operands of one shape, got {sorted(shapes)}")
        super().__init__(ops[0].shape, **common_properties(ops, "operator sum"))
        self.ops = list(ops)

    def _matmat(self, X: Array) -> Array:
        return sum(op._matmat(X) for op in self.ops[1:]) + self.ops[0]._matmat(X)

    def _rmatmat(self, X: Array) -> Array:
        return sum(op._rmatmat(X) for op in self.ops[1:]) + self.ops[0]._rmatmat(X)

    def _transpose(self) -> LinearOperator:
        return _Sum([op.T for op in self.ops])


class _Product(LinearOperator):
    """``A₁ A₂ ⋯ Aₙ``, applied right to left."""

    def __init__(self, ops: Sequence[LinearOperator]):
        for left, right in zip(ops[:-1], ops[1:], strict=True):
            if left.shape[1] != right.shape[0]:
                raise ValueError(
                    f"operator product: inner dimensions differ, {left.shape} @ {right.shape}"
                )
        super().__init__(
            (ops[0].shape[0], ops[-1].shape[1]), **common_properties(ops, "operator product")
        )
        self.ops = list(ops)

    def _matmat(self, X: Array) -> Array:
        for op in reversed(self.ops):
            X = op._matmat(X)
        return X

    def _rmatmat(self, X: Array) -> Array:
        for op in self.ops:
            X = op._rmatmat(X)
        return X

    def _transpose(self) -> LinearOperator:
        return _Product([op.T for op in reversed(self.ops)])


class _Transposed(LinearOperator):
    """``Aᵀ`` for an operator without a structured transpose."""

    def __init__(self, op: LinearOperator):
        super().__init__((op.shape[1], op.shape[0]), xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op

    def _matmat(self, X: Array) -> Array:
        return self.op._rmatmat(X)

    def _rmatmat(self, X: Array) -> Array:
        return self.op._matmat(X)

    def _transpose(self) -> LinearOperator:
        return self.op
