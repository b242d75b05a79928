r"""``BlockTridiagInverse``: the DGGM inverse :math:`\hat F^{-1} = \Xi^\top \Lambda \Xi` (paper §3.3).

Given Kronecker blocks on the block tridiagonal of a symmetric matrix — diagonal blocks
``Lᵢ⊗Rᵢ`` and super-diagonal blocks ``L_{i,i+1}⊗R_{i,i+1}`` — :math:`\hat F` is the unique
matrix that agrees with them on the tridiagonal and whose inverse is block tridiagonal: the
covariance of the Gaussian chain ``xᵢ | x_{i+1} ~ N(Ψᵢ x_{i+1}, Σ_{i|i+1})``, ``x_b ~ N(0, Σ_b)``, with

.. math::
    \Psi_i = (L_{i,i+1} L_{i+1}^{-1}) \otimes (R_{i,i+1} R_{i+1}^{-1}), \qquad
    \Sigma_{i|i+1} = L_i \otimes R_i - C_i \otimes D_i, \quad
    C_i = L_{i,i+1} L_{i+1}^{-1} L_{i,i+1}^\top,\ D_i = R_{i,i+1} R_{i+1}^{-1} R_{i,i+1}^\top,

``Σ_b = L_b⊗R_b``, ``Λ = diag(Σᵢ⁻¹)`` (each a :class:`~kronlin.KronDiff` inverse) and ``Ξ`` the
identity with ``−Ψᵢ`` in block ``(i, i+1)`` (spec §7.3, written here in row-major form).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from ._backend import Array, device, namespace
from ._factorizations import cholesky, cholesky_inverse
from ._mode import KronMatmat
from ._validation import check_matrix, check_same_device, check_scalar, symmetrized
from .errors import SingularDenominatorError
from .kron import Kron
from .kron_diff import kron_diff_inverse
from .operator import LinearOperator, abbreviated, shape_term

Pair = tuple[Array, Array]


class BlockTridiagInverse(LinearOperator):
    r"""The inverse :math:`\hat F^{-1}` of the block-tridiagonal-inverse matrix with the given blocks.

    Args:
        diag: ``b ≥ 1`` pairs ``(Lᵢ, Rᵢ)`` of SPD matrices; block ``(i, i)`` of :math:`\hat F` is
            ``Lᵢ⊗Rᵢ`` (shape ``lᵢrᵢ × lᵢrᵢ``). Damp them before passing (paper §6.3 / spec §8).
        offdiag: ``b − 1`` pairs ``(L_{i,i+1}, R_{i,i+1})`` of shapes ``(lᵢ, l_{i+1})`` and
            ``(rᵢ, r_{i+1})``; block ``(i, i+1)`` is their Kronecker product, block ``(i+1, i)``
            its transpose.
        damping: passed to each :meth:`KronDiff.inv` (``δ·Lᵢ⊗Rᵢ`` added to ``Σ_{i|i+1}``); 0 by
            default, so the operator is exact.

    Setup: one Cholesky inverse per diagonal factor, two generalized ``eigh`` per block.
    Apply: three sweeps (``Ξ``, ``Λ``, ``Ξᵀ``), about three times the GEMMs of the block-diagonal
    inverse on the same blocks.

    Raises:
        TypeError: mixed backends or unsupported dtypes.
        ValueError: wrong counts or shapes, non-symmetric or non-finite factors.
        NotPositiveDefiniteError: a diagonal factor is not SPD (names it).
        SingularDenominatorError: some ``Σ_{i|i+1}`` is numerically singular (names the block).

    """

    def __init__(self, diag: Sequence[Pair], offdiag: Sequence[Pair], *, damping: float = 0.0):
        diag, offdiag = [tuple(p) for p in diag], [tuple(p) for p in offdiag]
        for name, pairs in (("diag", diag), ("offdiag", offdiag)):
            for i, pair in enumerate(pairs):
                if len(pair) != 2:
                    raise ValueError(f"{name}[{i}]: expected a pair (L, R), got {len(pair)} arrays")
        if not diag:
            raise ValueError("diag: expected at least one (L, R) pair, got none")
        if len(offdiag) != len(diag) - 1:
            raise ValueError(
                f"offdiag: expected {len(diag) - 1} pairs for {len(diag)} diagonal blocks, "
                f"got {len(offdiag)}"
            )
        arrays = [a for pair in diag + offdiag for a in pair]
        names = [f"diag[{i}][{j}]" for i in range(len(diag)) for j in range(2)] + [
            f"offdiag[{i}][{j}]" for i in range(len(offdiag)) for j in range(2)
        ]
        xp = namespace(*arrays, names=tuple(names))
        check_same_device(arrays, "diag and offdiag")
        for i, pair in enumerate(offdiag):
            for j, M in enumerate(pair):
                check_matrix(xp, M, f"offdiag[{i}][{j}]")  # before any cast: no silent int → float
        damping = check_scalar(damping, "damping", minimum=0.0)
        dtype = xp.result_type(*arrays)
        diag = [
            tuple(xp.astype(symmetrized(xp, M, f"diag[{i}][{j}]"), dtype) for j, M in enumerate(p))
            for i, p in enumerate(diag)
        ]
        offdiag = [tuple(xp.astype(M, dtype) for M in p) for p in offdiag]
        _check_offdiag_shapes(diag, offdiag)
        sizes = [L.shape[0] * R.shape[0] for L, R in diag]
        super().__init__((sum(sizes), sum(sizes)), xp=xp, dtype=dtype, device=device(diag[0][0]))
        self._splits = [0, *accumulate(sizes)]
        self._diag_shapes = [(tuple(L.shape), tuple(R.shape)) for L, R in diag]
        self._damping = damping
        self._setup(diag, offdiag, damping)

    def _setup(self, diag: list[Pair], offdiag: list[Pair], damping: float) -> None:
        xp = self.xp
        # one Cholesky factorization per diagonal factor serves its inverse and its Σ block
        chols = [
            tuple(cholesky(xp, M, f"diag[{i}][{j}]") for j, M in enumerate(pair))
            for i, pair in enumerate(diag)
        ]
        inverses = [tuple(cholesky_inverse(xp, L) for L in pair) for pair in chols]
        # Ψᵢ = (L_{i,i+1} L_{i+1}⁻¹) ⊗ (R_{i,i+1} R_{i+1}⁻¹)
        self._couple([
            (Lo @ inverses[i + 1][0], Ro @ inverses[i + 1][1]) for i, (Lo, Ro) in enumerate(offdiag)
        ])
        self._sigma_inv: list[LinearOperator] = []
        for i, ((Lo, Ro), (PL, PR)) in enumerate(zip(offdiag, self._psi, strict=True)):
            C, D = PL @ Lo.T, PR @ Ro.T
            try:
                inv = kron_diff_inverse(xp, chols[i], ((C + C.T) / 2, (D + D.T) / 2), damping=damping)
            except SingularDenominatorError as err:
                raise SingularDenominatorError(f"block {i}: {err}") from err
            self._sigma_inv.append(inv)
        self._sigma_inv.append(Kron._trusted(inverses[-1], xp))

    def _term(self) -> str:
        blocks = abbreviated([shape_term(pair) for pair in self._diag_shapes], ", ")
        return f"BlockTridiagInverse({self.n_blocks} blocks {blocks}; damping {self._damping:g})"

    @property
    def n_blocks(self) -> int:
        """The number of diagonal blocks ``b``."""
        return len(self._sigma_inv)

    @property
    def conditionals(self) -> tuple[LinearOperator, ...]:
        r"""The blocks of :math:`\Lambda`, ``Σ_{i|i+1}⁻¹`` (KronEigen) then ``Σ_b⁻¹`` (Kron)."""
        return tuple(self._sigma_inv)

    @property
    def couplings(self) -> tuple[Pair, ...]:
        r"""The factors of :math:`\Psi_i = P_i \otimes Q_i`, ``(Pᵢ, Qᵢ)`` for the ``b − 1`` links."""
        return tuple(self._psi)

    @classmethod
    def from_parts(cls, couplings: Sequence[Pair],
                   conditionals: Sequence[LinearOperator]) -> BlockTridiagInverse:
        r"""The operator with the given :attr:`couplings` and :attr:`conditionals`, no setup.

        The inverse of one operator, rebuilt elsewhere (another process, a checkpoint) from its
        parts, without its factorizations: ``from_parts(op.couplings, op.conditionals)``
        applies exactly as ``op``.

        Args:
            couplings: ``b − 1`` pairs ``(Pᵢ, Qᵢ)`` of shapes ``(lᵢ, l_{i+1})`` and ``(rᵢ, r_{i+1})``.
            conditionals: ``b`` square operators of sizes ``lᵢrᵢ``: ``Σ_{i|i+1}⁻¹``, then ``Σ_b⁻¹``.

        Raises:
            ValueError: wrong counts or shapes (non-square conditionals, couplings that do not
                link neighbouring sizes).

        """
        couplings, conditionals = [tuple(p) for p in couplings], list(conditionals)
        if not conditionals or len(couplings) != len(conditionals) - 1:
            raise ValueError(
                f"couplings: expected one pair per link of the {len(conditionals)} conditionals "
                f"(at least one), got {len(couplings)}"
            )
        sizes = [op.shape[0] for op in conditionals]
        for i, op in enumerate(conditionals):
            if op.shape[0] != op.shape[1]:
                raise ValueError(f"conditionals[{i}]: expected a square operator, got {op.shape}")
        for i, ((P, Q), n, n_next) in enumerate(zip(couplings, sizes, sizes[1:], strict=False)):
            if P.shape[0] * Q.shape[0] != n or P.shape[1] * Q.shape[1] != n_next:
                raise ValueError(
                    f"couplings[{i}]: expected factors whose Kronecker product is {n} x {n_next}, "
                    f"got shapes {tuple(P.shape)} and {tuple(Q.shape)}"
                )
        op = cls.__new__(cls)
        first = conditionals[0]
        LinearOperator.__init__(op, (sum(sizes), sum(sizes)), xp=first.xp, dtype=first.dtype,
                                device=first.device)
        op._splits = [0, *accumulate(sizes)]
        op._couple(couplings)
        op._sigma_inv = conditionals
        return op

    def _couple(self, psi: list[Pair]) -> None:
        r"""Keep the couplings :math:`\Psi_i = P_i \otimes Q_i` with their compiled products."""
        self._psi = psi
        self._psi_products = [KronMatmat(self.xp, pair) for pair in psi]

    def _matmat(self, X: Array) -> Array:
        xp, s = self.xp, self._splits
        V = [X[lo:hi] for lo, hi in zip(s[:-1], s[1:], strict=True)]
        b = len(V)
        # Ξ: yᵢ = vᵢ − Ψᵢ v_{i+1}
        Y = [V[i] - self._psi_products[i](V[i + 1]) for i in range(b - 1)] + [V[-1]]
        # Λ: zᵢ = Σᵢ⁻¹ yᵢ
        Z = [op._matmat(y) for op, y in zip(self._sigma_inv, Y, strict=True)]
        # Ξᵀ: uᵢ = zᵢ − Ψ_{i−1}ᵀ z_{i−1}
        U = [Z[0]] + [
            Z[i] - self._psi_products[i - 1](Z[i - 1], transpose=True) for i in range(1, b)
        ]
        return xp.concat(U, axis=0)

    _rmatmat = _matmat  # symmetric

    def _transpose(self) -> BlockTridiagInverse:
        return self

    def logdet(self) -> Array:
        r""":math:`\log\det \hat F^{-1} = \sum_i \log\det \Sigma_i^{-1}` (``Ξ`` is unit triangular)."""
        total = 0.0
        for op in self._sigma_inv:
            total = total + op.logdet()
        return total


def _check_offdiag_shapes(diag: list[Pair], offdiag: list[Pair]) -> None:
    for i, (Lo, Ro) in enumerate(offdiag):
        expected = ((diag[i][0].shape[0], diag[i + 1][0].shape[0]),
                    (diag[i][1].shape[0], diag[i + 1][1].shape[0]))
        for j, (M, shape) in enumerate(zip((Lo, Ro), expected, strict=True)):
            if tuple(M.shape) != shape:
                raise ValueError(
                    f"offdiag[{i}][{j}]: expected shape {shape} to couple blocks {i} and {i + 1}, "
                    f"got {tuple(M.shape)}"
                )

