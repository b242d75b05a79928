"""``Kron``: the Kronecker product of any number of (possibly rectangular) factors.

The matrix of ``Kron(F₁, …, Fₙ)`` is exactly ``np.kron(F₁, np.kron(F₂, …))``; it is never formed.
For two factors, ``Kron(A, B) @ vec(X) = vec(A X Bᵀ)`` with row-major ``vec`` (paper §2 states
the column-stacking form ``(A⊗B) vec(X) = vec(B X Aᵀ)``; see docs on conventions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._backend import Array, device, namespace
from ._factorizations import eigh
from ._mode import KronMatmat, check_kernel, is_column_major
from ._plan import KronPlan, thread_count
from ._validation import check_matrix, check_same_device, symmetrized
from .errors import LinAlgError
from .operator import LinearOperator, shape_term

if TYPE_CHECKING:
    from .kron_eigen import KronEigen


class Kron(LinearOperator):
    r"""The Kronecker product :math:`F_1 \otimes F_2 \otimes \cdots \otimes F_n`.

    Args:
        *factors: ``n ≥ 1`` matrices; factor ``j`` has shape ``(rⱼ, cⱼ)``. All NumPy or all torch
            (same device), float32 or float64, finite.
        kernel: how products are computed. ``"auto"`` (default): a cost model chooses, per block
            width ``k``, the kernel and a grouping of consecutive factors into their Kronecker
            products (:meth:`plan` shows the choice); ``"rotate"``, ``"modes"`` or ``"numba"``:
            that kernel, grouping still chosen by the model; or a :class:`KronPlan`: exactly
            that (see the guide's "Kernels" section).

    The operator has shape ``(∏rⱼ, ∏cⱼ)``. A block ``X`` of ``k`` vectors costs one GEMM per
    factor, ``2k Σⱼ (∏_{i≤j} rᵢ)(∏_{i≥j} cᵢ)`` flops in the cheapest factor order, against
    ``2k ∏rⱼ∏cⱼ`` for the dense matrix (more when the plan merges factors into fewer passes).

    Raises:
        TypeError: mixed backends, a non-array factor or an unsupported dtype; ``"numba"`` for
            torch tensors.
        ValueError: no factors, a factor that is not 2-D, non-finite entries; an unknown
            ``kernel`` or a plan for another number of factors.

    """

    _missing_attribute_hints = {
        "shift": "K + c·I has no Kronecker form; K.eigh().shift(c) is it exactly, as a KronEigen "
                 "(symmetric factors), whose .inv() and .solve(b) are the damped inverse and solve",
    }
    _shift_hint = ("for K + c·I use K.eigh().shift(c) (exact, symmetric factors; its .inv() and "
                   ".solve(b) are the damped inverse and solve)")

    def __init__(self, *factors: Array, kernel: str | KronPlan = "auto"):
        if not factors:
            raise ValueError("factors: expected at least one factor, got none")
        names = tuple(f"factors[{j}]" for j in range(len(factors)))
        xp = namespace(*factors, names=names)
        check_same_device(factors, "factors")
        for f, name in zip(factors, names, strict=True):
            check_matrix(xp, f, name)
        check_kernel(kernel, len(factors), xp)
        dtype = xp.result_type(*factors)
        self._init(tuple(xp.astype(f, dtype) for f in factors), xp, kernel)

    def _init(self, factors: tuple[Array, ...], xp, kernel: str | KronPlan = "auto") -> None:
        shape = (math.prod(f.shape[0] for f in factors), math.prod(f.shape[1] for f in factors))
        super().__init__(shape, xp=xp, dtype=factors[0].dtype, device=device(factors[0]))
        self._factors = factors
        self._engine = KronMatmat(xp, factors, kernel)
        # NumPy operands seen before, by (shape, strides, dtype, threads): their whole product
        self._direct: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}

    @classmethod
    def _trusted(cls, factors: Sequence[Array], xp, kernel: str | KronPlan = "auto") -> Kron:
        """Build from factors already checked (internal: transposes, inverses)."""
        op = cls.__new__(cls)
        op._init(tuple(factors), xp, kernel)
        return op

    @property
    def kernel(self) -> str | KronPlan:
        """The ``kernel`` argument: ``"auto"``, a kernel name or a :class:`KronPlan`."""
        return self._engine.kernel

    def plan(self, k: int = 1) -> KronPlan:
        """The plan of ``self @ X`` for a row-major block ``X`` of ``k`` vectors, with its estimate.

        ``str(K.plan(k))`` reads e.g. ``rotate [F1⊗F2, F3] (estimated 1.2 ms)``: the kernel, the
        factors merged into each pass and the cost model's time on this machine.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        return self._engine.plan(k)

    @property
    def factors(self) -> tuple[Array, ...]:
        """The factors ``(F₁, …, Fₙ)``."""
        return self._factors

    def __matmul__(self, other: Any) -> Any:
        # The hot path. An operand of a shape, layout and dtype seen before passed the checks
        # then and passes them now: its compiled product runs at once (for small blocks the
        # checks and the dispatch cost more than the GEMMs).
        if type(other) is np.ndarray:
            run = self._direct.get((other.shape, other.strides, other.dtype.char, thread_count()))
            if run is not None:
                return run(other)
            out = super().__matmul__(other)
            self._remember(other)
            return out
        return super().__matmul__(other)

    def _remember(self, x: np.ndarray) -> None:
        """Keep the product of operands like ``x`` (checked and applied once) for :meth:`__matmul__`."""
        if len(self._direct) >= _DIRECT_ENTRIES:
            self._direct.clear()
        dtype = np.result_type(x.dtype, self.dtype)
        vector = x.ndim == 1
        k = 1 if vector else x.shape[1]
        run = self._engine.program(k, dtype, column_major=k > 1 and is_column_major(x))
        if dtype != x.dtype:
            base = run
            run = lambda X: base(X.astype(dtype))  # noqa: E731
        if vector:
            block = run
            run = lambda x: block(x[:, None])[:, 0]  # noqa: E731
        self._direct[(x.shape, x.strides, x.dtype.char, thread_count())] = run

    def _matmat(self, X: Array) -> Array:
        return self._engine(X)

    def _rmatmat(self, X: Array) -> Array:
        return self._engine(X, transpose=True)

    def _transpose(self) -> Kron:
        # (F₁ ⊗ F₂)ᵀ = F₁ᵀ ⊗ F₂ᵀ
        return Kron._trusted([f.T for f in self._factors], self.xp, self.kernel)

    def _term(self) -> str:
        kernel = "" if self.kernel == "auto" else f"; kernel {self.kernel}"
        return f"Kron({shape_term([tuple(f.shape) for f in self._factors])}{kernel})"

    def to_dense(self) -> Array:
        """The dense ``np.kron`` matrix (for tests and small sizes only)."""
        out = self._factors[0]
        for f in self._factors[1:]:
            out = self.xp.reshape(
                out[:, None, :, None] * f[None, :, None, :],
                (out.shape[0] * f.shape[0], out.shape[1] * f.shape[1]),
            )
        return out

    # -- structure-exploiting linear algebra --------------------------------------------------
    def _require_square(self, method: str) -> None:
        for j, f in enumerate(self._factors):
            if f.shape[0] != f.shape[1]:
                raise ValueError(
                    f"Kron.{method}: factors[{j}] must be square, got shape {tuple(f.shape)}"
                )

    def inv(self, *, damping: None = None) -> Kron:
        r"""The inverse :math:`F_1^{-1} \otimes \cdots \otimes F_n^{-1}` (``Σⱼ cⱼ³`` flops).

        Args:
            damping: not accepted (a ``TypeError`` that gives the exact route):
                :math:`(\bigotimes F_j + cI)^{-1}` has no Kronecker form; it is
                ``K.eigh().shift(c).inv()`` for symmetric factors. The argument exists only to
                say so.

        Raises:
            ValueError: a factor is not square.
            LinAlgError: a factor is singular (names it).
            TypeError: ``damping`` given.

        """
        if damping is not None:
            raise TypeError(
                f"Kron.inv() takes no damping: (K + {damping}·I)⁻¹ has no Kronecker form; use "
                f"K.eigh().shift({damping}).inv() (exact, symmetric factors), or damp the factors "
                "themselves: kl.Kron(A + a·I, B + b·I).inv()"
            )
        return Kron._trusted(self._factor_inverses("inv"), self.xp, self.kernel)

    def solve(self, b: Array) -> Array:
        """Solve ``(F₁ ⊗ … ⊗ Fₙ) x = b`` for ``b`` of shape ``(N,)`` or ``(N, k)``.

        Raises:
            ValueError: a factor is not square, or ``b`` has the wrong shape.
            LinAlgError: a factor is singular (names it and gives the damped alternative).

        """
        return self._solve_with(lambda: Kron._trusted(self._factor_inverses("solve"), self.xp), b)

    def _factor_inverses(self, method: str) -> list[Array]:
        """``[F₁⁻¹, …, Fₙ⁻¹]``; errors name ``Kron.{method}`` and the singular factor."""
        self._require_square(method)
        inverses = []
        for j, f in enumerate(self._factors):
            try:
                inverse = self.xp.linalg.inv(f)
            except Exception as err:  # numpy or torch LinAlgError
                raise LinAlgError(f"Kron.{method}: factors[{j}] is singular ({err}); {_DAMPED}") from err
            if not bool(self.xp.all(self.xp.isfinite(inverse))):
                raise LinAlgError(f"Kron.{method}: factors[{j}] is singular to working precision; {_DAMPED}")
            inverses.append(inverse)
        return inverses

    def eigh(self) -> KronEigen:
        r"""Factor-wise eigendecomposition of a Kronecker product of symmetric factors.

        With :math:`F_j = Q_j \operatorname{diag}(w_j) Q_j^\top`,
        :math:`\bigotimes F_j = (\bigotimes Q_j)\operatorname{diag}(\operatorname{vec}(w_1 \circ
        \cdots \circ w_n))(\bigotimes Q_j)^\top` (outer product of the eigenvalues). Cost: one
        ``cⱼ³`` eigendecomposition per factor. The result's ``shift(c).inv()`` is the damped
        inverse :math:`(\bigotimes F_j + cI)^{-1}`.

        Raises:
            ValueError: a factor is not square or not symmetric.

        """
        from .kron_eigen import KronEigen

        self._require_square("eigh")
        values, bases = [], []
        for j, f in enumerate(self._factors):
            w, q = eigh(self.xp, symmetrized(self.xp, f, f"factors[{j}]"), f"factors[{j}]")
            values.append(w)
            bases.append(q)
        return KronEigen._trusted(bases, outer(self.xp, values), self.xp, orthonormal=True,
                                  expression=self._term())

    def logdet(self) -> Array:
        r"""``log det`` of the product: :math:`\sum_j (N / n_j) \log\det F_j`, ``N = ∏nⱼ``.

        Raises:
            ValueError: a factor is not square.
            LinAlgError: the determinant is not positive.

        """
        self._require_square("logdet")
        total = 0.0
        sign = 1.0
        n = self.shape[0]
        for f in self._factors:
            s, logabs = self.xp.linalg.slogdet(f)
            power = n // f.shape[0]
            sign = sign * (s**power)
            total = total + power * logabs
        if float(sign) <= 0:
            raise LinAlgError("Kron.logdet: the determinant is not positive")
        return total

    def trace(self) -> Array:
        r""":math:`\prod_j \operatorname{tr} F_j` (square factors)."""
        self._require_square("trace")
        out = 1.0
        for f in self._factors:
            out = out * self.xp.linalg.trace(f)
        return out

    def diagonal(self) -> Array:
        r"""The diagonal, :math:`\operatorname{diag}(F_1) \otimes \cdots` (square factors), ``(N,)``."""
        self._require_square("diagonal")
        diag = outer(self.xp, [self.xp.linalg.diagonal(f) for f in self._factors])
        return self.xp.reshape(diag, (-1,))


_DIRECT_ENTRIES = 64
"""Operand kinds kept per operator for the hot path (more: the table starts over)."""

_DAMPED = ("for the damped product K + c·I use K.eigh().shift(c) and its .inv()/.solve(b) "
           "(symmetric factors), or damp the factor itself")


def outer(xp, vectors: Sequence[Array]) -> Array:
    """The outer product ``v₁ ∘ v₂ ∘ ⋯``, an array of shape ``(len(v₁), len(v₂), …)``."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out[..., None] * v
    return out
