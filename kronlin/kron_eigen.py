"""``KronEigen``: a matrix diagonal in a Kronecker-factored basis, with a full eigenvalue array.

``(K₁ ⊗ ⋯ ⊗ Kₙ) diag(vec S) (K₁ ⊗ ⋯ ⊗ Kₙ)ᵀ`` with ``S`` an arbitrary array of shape
``(n₁, …, nₙ)`` — not only an outer product. One operator serves the damped Kronecker inverse
``(A⊗B + λI)⁻¹`` (``S = 1/(a∘b + λ)``, orthonormal ``K``), EK-FAC's eigenvalue corrections
(George et al. 2018: ``S`` re-estimated in the K-FAC eigenbasis) and the inverse of a
Kronecker difference (paper App. I: non-orthogonal ``K``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._backend import Array, check_dtype, device, namespace
from ._mode import KronMatmat, is_column_major, kron_matmat
from ._validation import check_matrix, check_same_device, check_scalar
from .errors import LinAlgError
from .operator import LinearOperator, shape_term

_GENERIC = "K diag(S) Kᵀ"
"""The repr's expression of a KronEigen built from its bases and values (not from another operator)."""


class KronEigen(LinearOperator):
    r"""The symmetric matrix :math:`K \operatorname{diag}(\operatorname{vec} S) K^\top`, K = ⊗ Kⱼ.

    Args:
        bases: ``n ≥ 1`` square matrices ``Kⱼ`` of shape ``(nⱼ, nⱼ)``.
        values: ``S``, an array of shape ``(n₁, …, nₙ)`` (row-major ``vec``).
        orthonormal: declare that every ``Kⱼ`` is orthogonal (``KⱼᵀKⱼ = I``), as for the bases
            from :meth:`Kron.eigh`; it makes :meth:`inv`, :meth:`shift` and :meth:`logdet` cheap.
            It is a promise, not checked beyond shapes.

    Apply costs ``4k·N·Σⱼ nⱼ`` flops for ``k`` vectors (``N = ∏nⱼ``): mode products with ``Kⱼᵀ``,
    an elementwise scaling by ``S``, mode products with ``Kⱼ``.

    The repr shows what the matrix is, e.g. ``(Kron(3x3 ⊗ 2x2) + 0.1·I)⁻¹`` for
    ``Kron(A, B).eigh().shift(0.1).inv()``, with the bases' shapes and whether they are
    orthonormal.

    Raises:
        TypeError: mixed backends, a non-array argument, or a dtype other than float32/float64
            (complex ``values`` included: the operator is real symmetric).
        ValueError: a basis that is not square, ``values`` of the wrong shape or non-finite, or
            arrays on different devices.

    """

    _shift_hint = "for M + c·I use M.shift(c) (orthonormal bases)"

    def __init__(self, bases: Sequence[Array], values: Array, *, orthonormal: bool = False):
        bases = tuple(bases)
        if not bases:
            raise ValueError("bases: expected at least one basis matrix, got none")
        names = (*(f"bases[{j}]" for j in range(len(bases))), "values")
        xp = namespace(*bases, values, names=names)
        check_same_device([*bases, values], "bases and values")
        for K, name in zip(bases, names, strict=False):
            check_matrix(xp, K, name, square=True)
        check_dtype(values, "values")
        expected = tuple(K.shape[0] for K in bases)
        if tuple(values.shape) != expected:
            raise ValueError(f"values: expected shape {expected}, got {tuple(values.shape)}")
        if not bool(xp.all(xp.isfinite(values))):
            raise ValueError("values: expected finite entries, got NaN or inf")
        if not isinstance(orthonormal, bool):
            raise TypeError(f"orthonormal: expected True or False, got {type(orthonormal).__name__}")
        dtype = xp.result_type(*bases, values)
        self._init(tuple(xp.astype(K, dtype) for K in bases), xp.astype(values, dtype), xp,
                   orthonormal, _GENERIC)

    def _init(self, bases, values, xp, orthonormal: bool, expression: str) -> None:
        n = math.prod(K.shape[0] for K in bases)
        super().__init__((n, n), xp=xp, dtype=values.dtype, device=device(values))
        self._bases = tuple(bases)
        self._values = values
        self._scale = xp.reshape(values, (n, 1))
        self._orthonormal = orthonormal
        self._expression = expression
        self._engine = KronMatmat(xp, self._bases)

    @classmethod
    def _trusted(cls, bases, values, xp, *, orthonormal: bool, expression: str = _GENERIC) -> KronEigen:
        """Build from arrays already checked (internal); ``expression`` is what the matrix is."""
        op = cls.__new__(cls)
        op._init(bases, values, xp, orthonormal, expression)
        return op

    def _term(self) -> str:
        kind = "orthonormal" if self._orthonormal else "general"
        shapes = shape_term([tuple(K.shape) for K in self._bases])
        return f"KronEigen({self._expression}; bases {shapes}, {kind})"

    @property
    def bases(self) -> tuple[Array, ...]:
        """The basis factors ``(K₁, …, Kₙ)``."""
        return self._bases

    @property
    def values(self) -> Array:
        """The eigenvalue array ``S`` of shape ``(n₁, …, nₙ)``."""
        return self._values

    @property
    def orthonormal(self) -> bool:
        """Whether the bases were declared orthogonal."""
        return self._orthonormal

    def _matmat(self, X: Array) -> Array:
        # Kᵀ X may come back in either layout (no copy); K (s ∘ ·) then restores X's
        layout = "column" if X.shape[1] > 1 and is_column_major(X) else "row"
        Y = self._engine(X, transpose=True, layout="any")
        return self._engine(self._scale * Y, layout=layout)

    _rmatmat = _matmat  # symmetric

    def _transpose(self) -> KronEigen:
        return self

    def with_values(self, values: Array) -> KronEigen:
        """The same bases with eigenvalue array ``values`` (e.g. EK-FAC's corrected ``S``)."""
        return KronEigen(self._bases, values, orthonormal=self._orthonormal)

    def shift(self, c: float) -> KronEigen:
        r""":math:`K \operatorname{diag}(\operatorname{vec} S + c) K^\top = M + cI` (orthonormal bases only).

        Raises:
            ValueError: the bases are not declared orthonormal (then the shift is not ``cI``).

        """
        c = check_scalar(c, "c")
        if not self._orthonormal:
            raise ValueError(
                "KronEigen.shift: needs orthonormal bases (orthonormal=True): with general bases "
                "K diag(S + c) Kᵀ is not M + cI"
            )
        term = f"{self._expression} + {c:g}·I" if c >= 0 else f"{self._expression} − {-c:g}·I"
        return KronEigen._trusted(self._bases, self._values + c, self.xp, orthonormal=True,
                                  expression=term)

    def inv(self) -> KronEigen:
        r"""The inverse :math:`K^{-\top} \operatorname{diag}(1 / \operatorname{vec} S) K^{-1}`.

        For orthonormal bases :math:`K^{-\top} = K`, so only ``S`` changes (``N`` flops);
        otherwise each basis is inverted once (``Σⱼ nⱼ³`` flops).

        Raises:
            LinAlgError: some eigenvalue is zero, or a basis is singular.

        """
        return self._inverse("inv")

    def solve(self, b: Array) -> Array:
        """Solve ``M x = b`` for ``b`` of shape ``(N,)`` or ``(N, k)``.

        Raises:
            LinAlgError: some eigenvalue is zero, or a basis is singular.

        """
        return self._solve_with(lambda: self._inverse("solve"), b)

    def _inverse(self, method: str) -> KronEigen:
        """The inverse; errors name ``KronEigen.{method}``."""
        xp = self.xp
        if not bool(xp.all(self._values != 0)):
            hint = "; M.shift(c) for c > 0 damps it" if self._orthonormal else ""
            raise LinAlgError(f"KronEigen.{method}: values contain zeros; the matrix is singular{hint}")
        if self._orthonormal:
            bases = self._bases
        else:
            bases = []
            for j, K in enumerate(self._bases):
                try:
                    bases.append(xp.linalg.inv(K).T)
                except Exception as err:
                    raise LinAlgError(f"KronEigen.{method}: bases[{j}] is singular ({err})") from err
        return KronEigen._trusted(bases, 1 / self._values, xp, orthonormal=self._orthonormal,
                                  expression=f"({self._expression})⁻¹")

    def logdet(self) -> Array:
        r""":math:`\sum \log S + 2\sum_j (N/n_j)\log|\det K_j|` (the second term vanishes when orthonormal).

        Raises:
            LinAlgError: some eigenvalue is not positive.

        """
        xp = self.xp
        if not bool(xp.all(self._values > 0)):
            raise LinAlgError("KronEigen.logdet: values must be positive")
        total = xp.sum(xp.log(self._values))
        if not self._orthonormal:
            n = self.shape[0]
            for K in self._bases:
                total = total + 2 * (n // K.shape[0]) * xp.linalg.slogdet(K)[1]
        return total

    def trace(self) -> Array:
        r""":math:`\sum_p S_p \|K e_p\|^2`: the column norms of ``K`` are outer products of the bases'."""
        return self.xp.sum(self._values * self._column_norms())

    def diagonal(self) -> Array:
        r"""The diagonal :math:`(\bigotimes_j K_j^{\circ 2}) \operatorname{vec} S`, shape ``(N,)``."""
        squares = [K * K for K in self._bases]
        return kron_matmat(self.xp, squares, self._scale)[:, 0]

    def _column_norms(self) -> Array:
        from .kron import outer

        return outer(self.xp, [self.xp.sum(K * K, axis=0) for K in self._bases])

