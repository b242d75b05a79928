"""Exception types raised by kronlin.

Shape, dtype and value problems raise the built-in ``ValueError`` and ``TypeError``; failed
factorizations raise subclasses of :class:`numpy.linalg.LinAlgError`, so callers that already
catch NumPy's linear-algebra errors catch ours too, whatever the backend.
"""

from numpy.linalg import LinAlgError

__all__ = ["LinAlgError", "NotPositiveDefiniteError", "SingularDenominatorError"]


class NotPositiveDefiniteError(LinAlgError):
    """A factor that must be symmetric positive definite is not (its Cholesky factorization failed)."""


class SingularDenominatorError(LinAlgError):
    """A Kronecker difference ``A⊗B − C⊗D`` is (numerically) singular: some ``1 − s1·s2`` is ~0."""
