r"""The exact-Fisher quadratic model that rescales K-FAC's proposals (paper §6.4, §7; spec §3.3–§4).

.. math::
    M(\delta) - M(0) = \tfrac12 \delta^\top (F + (\lambda + \eta) I)\delta + \nabla h^\top \delta,
    \qquad \delta = \alpha\Delta + \mu\delta_0,

with ``F`` the exact Fisher (= GGN) of the objective on the current batch. Only scalars
:math:`u^\top F v` are needed, and with :math:`F = s\sum_n J_n^\top F_{R,n} J_n` each is a sum
over cases of :math:`(J_n u)^\top F_{R,n} (J_n v)`: forward-mode products :math:`J u`, no
backward pass (arXiv App. C; "roughly half" the cost of a Gauss–Newton–vector product).

- :func:`output_jvps`: :math:`Ju` for several ``u`` with ``torch.func.jvp`` (stateless; the
  reference path).
- :func:`cached_output_jvps`: the same from the training forward pass's recorded layer
  inputs and outputs, so no layer GEMM of the primal pass is recomputed (the optimizer's path
  when every curvature block has a cached tangent forward; the diagonal fallback and the
  first-order blocks have none, and then the optimizer uses :func:`output_jvps`).
- :func:`solve_coefficients`, :func:`model_change`, :func:`reduction_ratio`: the 2×2 solve for
  :math:`(\alpha, \mu)`, :math:`M(\delta) - M(0)` and the LM ratio :math:`\rho`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

from .blocks import CurvatureBlock
from .blocks.base import repeat_rows
from .capture import LayerIO, group_calls

__all__ = [
    "cached_output_jvps",
    "gram_accuracy",
    "model_change",
    "output_jvps",
    "reduction_ratio",
    "solve_coefficients",
]


def output_jvps(model: nn.Module, inputs: Tensor, tangents: Mapping[str, Tensor]) -> Tensor:
    """:math:`J u_k` for ``K`` tangents with ``torch.func.jvp`` (one batched forward-mode pass).

    Args:
        model: the network.
        inputs: ``n`` cases.
        tangents: parameter name → tangent stack of shape ``(K, *param.shape)``; parameters
            not named have zero tangent.

    Returns:
        Output tangents, shape ``(K, n, D)`` with ``D`` the flattened output size.

    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    names = list(tangents)

    def f(*values: Tensor) -> Tensor:
        return functional_call(model, {**params, **dict(zip(names, values, strict=True))},
                               (inputs,))

    def one(*tans: Tensor) -> Tensor:
        return jvp(f, tuple(params[n] for n in names), tans)[1]

    out = vmap(one)(*(tangents[n] for n in names))
    return out.reshape(out.shape[0], inputs.shape[0], -1)


def cached_output_jvps(
    model: nn.Module,
    blocks: Sequence[CurvatureBlock],
    calls: Sequence[LayerIO],
    inputs: Tensor,
    tangents: Sequence[Tensor],
) -> Tensor:
    r""":math:`J u_k` for ``K`` tangents, reusing the recorded layer outputs of the forward pass.

    The model runs once more in forward-mode AD on the inputs repeated ``K`` times (rows
    ordered case-major: case ``n``, tangent ``k`` at row ``nK + k``), with each block's module
    replaced by its :meth:`~kronlin_nn.blocks.CurvatureBlock.tangent_forward`, which returns
    the *recorded* output as the primal and its tangent, e.g.
    :math:`\dot s = \dot W a + \dot b + W \dot a` for a linear layer: two GEMMs per layer,
    and no GEMM of the primal pass. The rest of the model (activations, …) is re-evaluated,
    which is cheap elementwise work. Parameters must be unchanged since the recording.

    Args:
        model: the network.
        blocks: its curvature blocks, every one with a cached tangent forward
            (:attr:`~kronlin_nn.blocks.CurvatureBlock.cached_tangents`).
        calls: the records of the forward pass on ``inputs`` (``calls[j].layer`` indexes
            ``blocks``).
        inputs: the ``n`` cases the records were made on.
        tangents: per block, the ``K`` parameter tangents in its geometry, ``(K, *shape)``
            (:meth:`kronlin_nn.layout.ParameterLayout.unstack`).

    Returns:
        Output tangents, shape ``(K, n, D)`` (a transposed view).

    Raises:
        ValueError: a block without a cached tangent forward (use :func:`output_jvps`).

    """
    _load_forward_ad_rules()
    K, n = tangents[0].shape[0], inputs.shape[0]
    forwards = [b.tangent_forward(cs, t) for b, cs, t in
                zip(blocks, group_calls(calls, len(blocks)), tangents, strict=True)]
    if any(f is None for f in forwards):
        names = [b.name for b, f in zip(blocks, forwards, strict=True) if f is None]
        raise ValueError(f"blocks: {names} have no cached tangent forward; use output_jvps")
    modules = [b.module for b in blocks]
    saved = [module.__dict__.get("forward") for module in modules]
    # no_grad: no backward graph (forward-mode AD is unaffected), as parameters require grad
    with fwAD.dual_level(), torch.no_grad():
        try:
            for module, forward in zip(modules, forwards, strict=True):
                module.forward = forward
            out = model(repeat_rows(inputs, K))
        finally:
            for module, forward in zip(modules, saved, strict=True):
                if forward is None:
                    module.__dict__.pop("forward", None)  # back to the class's forward
                else:
                    module.forward = forward
        tangent = fwAD.unpack_dual(out).tangent
    return tangent.reshape(n, K, -1).transpose(0, 1)


@functools.cache
def _load_forward_ad_rules() -> None:
    """Let torch load its forward-mode AD decompositions once, without their warnings.

    On the first dual tensor of a process, torch scripts its JVP decompositions with the
    deprecated ``torch.jit.script``, which warns once per decomposition (about twenty
    ``DeprecationWarning``/``FutureWarning`` lines that say nothing about the user's code).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with fwAD.dual_level():
            fwAD.make_dual(torch.zeros(1), torch.zeros(1))


def solve_coefficients(
    A: np.ndarray, c: np.ndarray, fixed: Sequence[float | None] = (None, None),
    rcond: float = 1e-12,
) -> np.ndarray:
    r"""Minimize :math:`\tfrac12 x^\top A x + c^\top x` over the free entries of :math:`x = (\alpha, \mu)`.

    With both free this is the 2×2 system of arXiv §7, :math:`x^* = -A^{-1}c`; with ``μ``
    fixed at 0 (first step, or no momentum) it is :math:`\alpha^* = -c_1/A_{11}` (arXiv §6.4).
    Singular systems (e.g. :math:`\delta_0 = 0`) are solved by pseudo-inverse, as the authors'
    code does, which leaves the coefficient of a zero vector at 0. The pseudo-inverse is taken
    of :math:`A` scaled to a unit diagonal and drops eigenvalues below ``rcond`` (relative to
    the largest), negative ones included: :math:`A` is positive semi-definite in exact
    arithmetic, and when :math:`\Delta` and :math:`\delta_0` are nearly parallel (late in
    training, where the gradient is close to rounding noise) its small eigenvalue is rounding
    error, whose inverse would give μ in the hundreds.

    Args:
        A: the 2×2 matrix :math:`[u_i^\top (F + (\lambda+\eta) I) u_j]` for :math:`u = (\Delta, \delta_0)`.
        c: :math:`(\nabla h^\top \Delta, \nabla h^\top \delta_0)`.
        fixed: per coefficient, a fixed value or ``None`` (free).
        rcond: the relative accuracy of :math:`A`'s entries (see :func:`gram_accuracy`).

    Returns:
        ``x = (α, μ)`` as float64.

    """
    x = np.array([0.0 if f is None else f for f in fixed], dtype=np.float64)
    free = np.flatnonzero([f is None for f in fixed])
    fixed_at = np.flatnonzero([f is not None for f in fixed])
    if free.size == 0:
        return x
    rhs = -(c[free] + A[np.ix_(free, fixed_at)] @ x[fixed_at])
    scale = np.sqrt(np.clip(np.diag(A)[free], 0.0, None))
    live = scale > 0
    if live.any():
        s = scale[live]
        w, Q = np.linalg.eigh(A[np.ix_(free[live], free[live])] / np.outer(s, s))
        keep = w > rcond * w.max()
        y = Q[:, keep] @ ((Q[:, keep].T @ (rhs[live] / s)) / w[keep])
        x[free[live]] = y / s
    return x


def gram_accuracy(dtype: torch.dtype, size: int) -> float:
    r"""The relative accuracy of an inner product of ``size`` entries: :math:`\sqrt{P}\,\epsilon`.

    The root-mean-square rounding error of a sum of ``P`` products, relative to its scale; the
    quadratic model's 2×2 entries are such inner products of parameter-sized vectors.
    """
    return math.sqrt(size) * torch.finfo(dtype).eps


def model_change(A: np.ndarray, c: np.ndarray, x: np.ndarray) -> float:
    r""":math:`M(\delta) - M(0) = \tfrac12 x^\top A x + c^\top x` (½cᵀx at the optimum)."""
    return float(0.5 * x @ A @ x + c @ x)


def reduction_ratio(h_new: float, h_old: float, predicted: float) -> float:
    r""":math:`\rho = (h(\theta+\delta) - h(\theta)) / (M(\delta) - M(0))` (arXiv §6.5).

    As in the authors' code, an increase of ``h`` gives :math:`\rho = -\infty` (λ then grows),
    and a non-finite ``h(θ+δ)`` gives NaN (λ grows too).
    """
    if not math.isfinite(h_new):
        return math.nan
    if h_new > h_old:
        return -math.inf
    if predicted == 0:
        return math.nan
    return (h_new - h_old) / predicted
