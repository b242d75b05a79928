r"""Curvature blocks: one module per layer type, behind a small registry.

- ``nn.Linear``: :class:`LinearBlock` (``linear.py``), :math:`\bar A \otimes G` (paper §3),
  sequences and repeated calls as locations (K-FAC-expand).
- ``nn.Conv2d``: :class:`Conv2dBlock` (``conv2d.py``), :math:`\bar A \otimes G` over patches
  (KFC, Grosse & Martens 2016).
- ``nn.Embedding``: :class:`EmbeddingBlock` (``embedding.py``),
  :math:`\operatorname{diag}(f) \otimes G` (the one-hot covariance is diagonal).
- normalization layers' affine parameters: :class:`ScaleShiftBlock` (``scale_shift.py``),
  diagonal (as kfac-jax).
- any other trainable parameter: :class:`ParameterDiagonalBlock` (``diagonal.py``, diagonal
  Fisher) or :class:`FirstOrderBlock` (``first_order.py``, :math:`\gamma^2 I`), as the
  ``unsupported`` keyword says.

The protocol is :class:`CurvatureBlock` (``base.py``); :func:`model_blocks` (``model.py``)
assigns every trainable parameter of a model to one block. A new layer type is one new file
with a block class decorated by :func:`register_block`, imported here.
"""

# importing the block modules registers their layer types
from .base import CurvatureBlock, DiagonalFactors, FactoredBlock, KroneckerFactors
from .conv2d import Conv2dBlock
from .diagonal import DiagonalBlock, ParameterDiagonalBlock
from .embedding import EmbeddingBlock
from .first_order import FirstOrderBlock
from .kronecker import KroneckerBlock
from .linear import LinearBlock
from .model import UNSUPPORTED, check_tridiag_chain, model_blocks
from .registry import REGISTRY, block_for, register_block
from .scale_shift import ScaleShiftBlock

__all__ = [
    "REGISTRY",
    "UNSUPPORTED",
    "Conv2dBlock",
    "CurvatureBlock",
    "DiagonalBlock",
    "DiagonalFactors",
    "EmbeddingBlock",
    "FactoredBlock",
    "FirstOrderBlock",
    "KroneckerBlock",
    "KroneckerFactors",
    "LinearBlock",
    "ParameterDiagonalBlock",
    "ScaleShiftBlock",
    "block_for",
    "check_tridiag_chain",
    "model_blocks",
    "register_block",
]
