"""kronlin_nn: the complete K-FAC optimizer of Martens & Grosse (2015) for torch networks.

- :class:`KFAC`: the optimizer (block-diagonal or block-tridiagonal), one ``step(inputs,
  targets)`` per iteration.
- :data:`PAPER`: the paper's recipe as keywords, ``KFAC(model, loss_fn, **PAPER)``.
- :func:`kfac_factors`: the Kronecker factors of one batch, stateless.
- Training-recipe helpers: :func:`exponential_batch_size`, :class:`PolyakAverage`,
  :func:`sparse_init_`.
"""

from .factors import kfac_factors
from .optimizer import KFAC
from .recipes import PAPER

__all__ = ["KFAC", "PAPER", "kfac_factors"]

try:  # written alongside; exported when present
    from .schedules import PolyakAverage, exponential_batch_size
except ImportError:  # pragma: no cover
    pass
else:
    __all__ += ["PolyakAverage", "exponential_batch_size"]

try:
    from .init import sparse_init_
except ImportError:  # pragma: no cover
    pass
else:
    __all__ += ["sparse_init_"]
