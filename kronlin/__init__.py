"""kronlin: fast, exact Kronecker-factored linear algebra on NumPy and torch arrays.

Operators for Kronecker products, Khatri–Rao products, Kronecker differences and the
block-tridiagonal inverse of Martens & Grosse (2015, §3.3 and App. I). One code path serves
NumPy and torch (CPU and CUDA) through the array API; torch is imported only when a tensor
is handed in.
"""

from . import linalg
from ._plan import KronPlan
from .block_diag import BlockDiag
from .block_tridiag import BlockTridiagInverse
from .errors import LinAlgError, NotPositiveDefiniteError, SingularDenominatorError
from .khatri_rao import face_split, khatri_rao
from .kron import Kron
from .kron_diff import KronDiff
from .kron_eigen import KronEigen
from .operator import LinearOperator

__version__ = "0.1.0"

__all__ = [
    "BlockDiag",
    "BlockTridiagInverse",
    "Kron",
    "KronDiff",
    "KronEigen",
    "KronPlan",
    "LinAlgError",
    "LinearOperator",
    "NotPositiveDefiniteError",
    "SingularDenominatorError",
    "face_split",
    "khatri_rao",
    "linalg",
]
