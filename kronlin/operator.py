"""The operator protocol and its lazy algebra.

:class:`LinearOperator` follows the protocol of ``scipy.sparse.linalg.LinearOperator``: ``shape``,
``dtype``, ``matvec``, ``rmatvec``, ``matmat``, ``rmatmat``, ``dot``, ``@``, ``*`` (a scalar
scales, an array is multiplied, an operator composes), ``op(x)``, ``.T``/``.H``,
``transpose()``/``adjoint()``, and ``+``/``-`` with a SciPy operator; it adds ``to_dense`` and
``to_scipy``. Sums, scalar multiples, products and transposes of operators are themselves
operators that are never materialized. Subclasses implement ``_matmat`` and ``_rmatmat`` on
validated ``(n, k)`` blocks, and ``_term`` (their part of the repr); everything else is shared.

Why not a subclass of ``scipy.sparse.linalg.LinearOperator``: SciPy's class holds a NumPy
``dtype`` and its solvers hand NumPy arrays to ``matvec``, while a kronlin operator may hold
torch tensors on a GPU (``dtype`` a torch dtype, operands torch tensors). A subclass would pass
SciPy's ``isinstance`` checks and then fail inside the solvers for every torch operator, and
its inherited algebra (``+``, ``*``, ``.T``) would build SciPy operators that cannot hold torch
tensors. So kronlin implements the same protocol itself, ``to_scipy()`` gives a genuine SciPy
operator (NumPy, or CPU torch converted at the boundary), and :mod:`kronlin.linalg` has CG and
Lanczos for every backend and device.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from ._backend import Array, check_dtype, device, dtype_name, namespace, to_numpy
from ._validation import check_operand, check_scalar

# Parts of a composite listed in its repr before the rest is summarized.
_REPR_PARTS = 4


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
    # attribute name -> the hint given when it is looked up but missing (see __getattr__)
    _missing_attribute_hints: dict[str, str] = {}
    # how to add c·I to this kind of operator (for the error of `op + array`)
    _shift_hint = "op + c·I has no structured form for this operator"

    def __init__(self, shape: tuple[int, int], *, xp: ModuleType, dtype: Any, device: Any):
        self._shape = (int(shape[0]), int(shape[1]))
        self._xp = xp
        self._dtype = dtype
        self._device = device
        self._numpy = _backend(xp) == "numpy"

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

    def dot(self, x: Any) -> Any:
        """``A x`` as SciPy's ``LinearOperator.dot``.

        An array is multiplied (``(n,)`` or ``(n, 1)`` as :meth:`matvec`, ``(n, k)`` as
        :meth:`matmat`), a real scalar scales, an operator composes (lazily).
        """
        if isinstance(x, LinearOperator):
            return _Product([self, x])
        if _is_real_scalar(x):
            return _Scaled(self, x)
        x = self._operand(x, self.shape[1], "x")
        return self._matmat(x[:, None])[:, 0] if x.ndim == 1 else self._matmat(x)

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _Product([self, other])
        if not hasattr(other, "ndim") and _is_real_scalar(other):
            raise ValueError("op @ scalar: scalars are not matrices; use op * c to scale")
        x = self._operand(other, self.shape[1], "x")
        return self._matmat(x[:, None])[:, 0] if x.ndim == 1 else self._matmat(x)

    def __rmatmul__(self, other: Any) -> Any:
        # x @ A = (Aᵀ xᵀ)ᵀ for x of shape (m,) or (k, m)
        if _is_real_scalar(other):
            raise ValueError("scalar @ op: scalars are not matrices; use c * op to scale")
        x = self._operand(other.T if getattr(other, "ndim", 0) == 2 else other, self.shape[0], "x")
        return self._rmatmat(x[:, None])[:, 0] if x.ndim == 1 else self._rmatmat(x).T

    def __call__(self, x: Array) -> Array:
        """``op(x) = op @ x`` (as SciPy's operators)."""
        return self @ x

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
        """The adjoint ``Aᴴ = Aᵀ`` (as SciPy's ``LinearOperator.adjoint``; entries are real)."""
        return self._transpose()

    def to_dense(self) -> Array:
        """The matrix as a dense ``(m, n)`` array (for tests and small problems)."""
        eye = self.xp.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self._matmat(eye)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` view for SciPy's solvers.

        NumPy-backed operators are viewed directly. Operators of CPU torch tensors are converted
        at the boundary: each product turns the NumPy operand into a tensor (no copy when it is
        writeable) and the result back into a NumPy array (no copy). The view forwards
        ``matmat``/``rmatmat``, so blocks are applied in one call.

        Raises:
            TypeError: the operator lives on a GPU: SciPy works on host arrays, and a copy per
                product would dominate; use :func:`kronlin.linalg.cg` or
                :func:`kronlin.linalg.lanczos`, which run on the device.

        """
        import scipy.sparse.linalg

        if _backend(self.xp) == "numpy":
            forward = self
        elif str(self.device) == "cpu":
            forward = _NumpyBoundary(self)
        else:
            raise TypeError(
                f"to_scipy: SciPy works on host NumPy arrays and this operator lives on "
                f"{self.device}; use kronlin.linalg.cg or kronlin.linalg.lanczos, which run on "
                "the device (or build the operator from CPU tensors)"
            )
        return scipy.sparse.linalg.LinearOperator(
            self.shape, matvec=forward.matvec, rmatvec=forward.rmatvec, matmat=forward.matmat,
            rmatmat=forward.rmatmat, dtype=np.dtype(dtype_name(self.dtype)),
        )

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _Sum([self, other])
        if _is_scipy_operator(other):
            return self._scipy_view_for(other, "+") + other
        raise TypeError(self._not_an_operator("+", other))

    def __radd__(self, other: Any) -> Any:
        if _is_scipy_operator(other):
            return other + self._scipy_view_for(other, "+")
        raise TypeError(self._not_an_operator("+", other))

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _Sum([self, _Scaled(other, -1.0)])
        if _is_scipy_operator(other):
            return self._scipy_view_for(other, "-") - other
        raise TypeError(self._not_an_operator("-", other))

    def __rsub__(self, other: Any) -> Any:
        if _is_scipy_operator(other):
            return other - self._scipy_view_for(other, "-")
        raise TypeError(self._not_an_operator("-", other))

    def __neg__(self) -> LinearOperator:
        return _Scaled(self, -1.0)

    def __mul__(self, other: Any) -> Any:
        """``op * c`` scales, ``op * x`` multiplies an array, ``op * B`` composes (SciPy's ``*``)."""
        if _is_scipy_operator(other):
            return self._scipy_view_for(other, "*") * other
        return self.dot(other)

    def __rmul__(self, other: Any) -> Any:
        if _is_real_scalar(other):
            return _Scaled(self, other)
        if isinstance(other, LinearOperator):
            return _Product([other, self])
        return other @ self

    def __truediv__(self, scalar: Any) -> LinearOperator:
        if not _is_real_scalar(scalar):
            return NotImplemented
        check_scalar(scalar, "op / c: c", positive_magnitude=True)
        return _Scaled(self, 1.0 / float(scalar))

    def __getattr__(self, name: str) -> Any:
        # only reached for missing attributes: add the hint for the usual mistakes
        message = f"{_public_name(self)!r} object has no attribute {name!r}"
        hint = type(self)._missing_attribute_hints.get(name)
        raise AttributeError(message if hint is None else f"{message}: {hint}")

    def __repr__(self) -> str:
        m, n = self.shape
        return (f"<{m}x{n} {self._term()} "
                f"({_backend(self.xp)}, {dtype_name(self.dtype)}, {self.device})>")

    # -- for subclasses ------------------------------------------------------------------------
    def _matmat(self, X: Array) -> Array:
        raise NotImplementedError

    def _rmatmat(self, X: Array) -> Array:
        raise NotImplementedError

    def _transpose(self) -> LinearOperator:
        return _Transposed(self)

    def _term(self) -> str:
        """The operator's structure as a short expression, for reprs (no backend or dtype)."""
        return type(self).__name__

    def _solve_with(self, inverse: Callable[[], LinearOperator], b: Array) -> Array:
        """``inverse() @ b`` for ``solve(b)``: ``b`` is checked (as ``b``) before the inverse is built."""
        b = self._operand(b, self.shape[0], "b")
        op = inverse()
        return op._matmat(b[:, None])[:, 0] if b.ndim == 1 else op._matmat(b)

    def _operand(self, x: Any, n: int, name: str) -> Array:
        """Check backend, device, dtype and shape of an operand; promote its dtype to the result's.

        Its values are not read (no finiteness check): applying an operator never synchronizes
        a GPU with the host.
        """
        if self._numpy and type(x) is np.ndarray and x.dtype.char in "fd" and x.ndim in (1, 2) \
                and x.shape[0] == n:
            # the common case, checked in a microsecond (the general path below takes ten)
            return x if x.dtype == self._dtype else x.astype(np.result_type(x.dtype, self._dtype))
        if _is_scipy_operator(x):
            raise TypeError(f"{name}: a SciPy LinearOperator; compose with op.to_scipy() @ {name}")
        xp = namespace(x, names=(name,))
        if xp is not self.xp:
            raise TypeError(
                f"{name}: the operator holds {_backend(self.xp)} arrays, got a {_backend(xp)} array; "
                "mixed backends are not supported"
            )
        if device(x) != self.device:
            raise ValueError(f"{name}: expected an array on device {self.device}, got {device(x)}")
        check_dtype(x, name)
        check_operand(x, n, name)
        dtype = xp.result_type(x.dtype, self.dtype)
        return x if x.dtype == dtype else xp.astype(x, dtype)

    def _scipy_view_for(self, other: Any, op: str) -> Any:
        """``self.to_scipy()`` for an operation with the SciPy operator ``other`` (NumPy only)."""
        if _backend(self.xp) != "numpy":
            raise TypeError(
                f"op {op} SciPy operator: SciPy operators hold NumPy arrays and this operator holds "
                f"{_backend(self.xp)} tensors; use op.to_scipy() {op} other (CPU), or wrap the "
                "other matrix as a kronlin operator, kl.Kron(M), in the operator's backend"
            )
        return self.to_scipy()

    def _not_an_operator(self, op: str, other: Any) -> str:
        """The guiding message for ``self op other`` with a scalar or an array ``other``."""
        what = "a scalar" if _is_real_scalar(other) else f"an array ({type(other).__name__})"
        return (
            f"{_public_name(self)} {op} {what}: kronlin combines operators only with "
            f"operators, never entrywise with arrays or scalars; {self._shift_hint}; to add a "
            f"matrix M lazily (e.g. for an iterative solver), wrap it as an operator: op {op} kl.Kron(M)"
        )


class _NumpyBoundary:
    """The products of a CPU torch operator on NumPy operands (for :meth:`LinearOperator.to_scipy`)."""

    def __init__(self, op: LinearOperator):
        self._op = op

    def _call(self, method: str, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.asarray(x)
        if not x.flags.writeable:  # torch.from_numpy shares memory and warns on read-only arrays
            x = x.copy()
        return to_numpy(getattr(self._op, method)(torch.from_numpy(x)))

    def matvec(self, x):
        return self._call("matvec", x)

    def rmatvec(self, x):
        return self._call("rmatvec", x)

    def matmat(self, X):
        return self._call("matmat", X)

    def rmatmat(self, X):
        return self._call("rmatmat", X)


def _backend(xp: ModuleType) -> str:
    return "torch" if array_api_compat.is_torch_namespace(xp) else "numpy"


def _public_name(op: LinearOperator) -> str:
    """The class name, or ``"operator"`` for the private composites (sums, products, …)."""
    name = type(op).__name__
    return "operator" if name.startswith("_") else name


def _is_real_scalar(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_scipy_operator(x: Any) -> bool:
    """Whether ``x`` is a ``scipy.sparse.linalg.LinearOperator`` (without importing SciPy)."""
    return any(cls.__module__.startswith("scipy.sparse.linalg") and cls.__name__ == "LinearOperator"
               for cls in type(x).__mro__)


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


def abbreviated(items: Sequence[str], separator: str) -> str:
    """``items`` joined by ``separator``; past :data:`_REPR_PARTS` of them, a count of the middle."""
    if len(items) <= _REPR_PARTS:
        return separator.join(items)
    shown = separator.join(items[: _REPR_PARTS - 1])
    return f"{shown}{separator}… ({len(items) - _REPR_PARTS} more){separator}{items[-1]}"


def list_terms(ops: Sequence[LinearOperator], separator: str) -> str:
    """The terms of ``ops`` joined by ``separator``, abbreviated as :func:`abbreviated`."""
    return abbreviated([op._term() for op in ops], separator)


def _grouped(op: LinearOperator) -> str:
    """``op``'s term, parenthesized when it is a sum (for products and scalings)."""
    term = op._term()
    return f"({term})" if isinstance(op, _Sum) else term


class _Scaled(LinearOperator):
    """``c · A``."""

    def __init__(self, op: LinearOperator, scalar: float):
        check_scalar(scalar, "scalar")
        super().__init__(op.shape, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op, self.scalar = op, float(scalar)

    def _matmat(self, X: Array) -> Array:
        return self.scalar * self.op._matmat(X)

    def _rmatmat(self, X: Array) -> Array:
        return self.scalar * self.op._rmatmat(X)

    def _transpose(self) -> LinearOperator:
        return _Scaled(self.op.T, self.scalar)

    def _term(self) -> str:
        magnitude = "" if abs(self.scalar) == 1 else f"{abs(self.scalar):g}·"
        return f"{'−' if self.scalar < 0 else ''}{magnitude}{_grouped(self.op)}"


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

    def _term(self) -> str:
        return list_terms(self.ops, " + ").replace(" + −", " − ")


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

    def _term(self) -> str:
        return " @ ".join(_grouped(op) for op in self.ops)


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

    def _term(self) -> str:
        return f"({self.op._term()})ᵀ"


def shape_term(shapes: Sequence[tuple[int, int]]) -> str:
    """``"3x4 ⊗ 2x5"`` for factor shapes ``[(3, 4), (2, 5)]``."""
    return " ⊗ ".join(f"{r}x{c}" for r, c in shapes)

