r"""Damping rules of K-FAC (paper §6 / arXiv §6.3–6.6; spec §3).

- :func:`pi_scales`: the factored-Tikhonov split :math:`\pi_i` (arXiv §6.3), so that layer
  ``i``'s damped block is :math:`(\bar A + \pi_i c I) \otimes (G + c/\pi_i I)`.
- :func:`levenberg_marquardt`: the λ rule (arXiv §6.5): shrink by :math:`\omega_1` when
  :math:`\rho > 3/4`, grow by :math:`1/\omega_1` when :math:`\rho < 1/4` (or ρ is NaN).
- :func:`gamma_candidates`: the greedy γ search set :math:`\{\omega_2\gamma, \gamma, \gamma/\omega_2\}`
  (arXiv §6.6), clamped to bounds.
- :func:`initial_damping`: our calibration of λ₀ when the user gives none (see its docstring).

The decays follow the paper: :math:`\omega_1 = (19/20)^{T_1}`, :math:`\omega_2 = (19/20)^{T_2/2}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "PI_KINDS",
    "gamma_candidates",
    "gamma_decay",
    "initial_damping",
    "levenberg_marquardt",
    "lm_decay",
    "pi_scales",
]

PI_KINDS = ("trace", "frobenius", "one")


def lm_decay(damping_every: int) -> float:
    r""":math:`\omega_1 = (19/20)^{T_1}`, the λ factor per application of the LM rule."""
    return 0.95**damping_every


def gamma_decay(gamma_every: int) -> float:
    r""":math:`\omega_2 = (\sqrt{19/20})^{T_2}`, the γ search step."""
    return 0.95 ** (gamma_every / 2)


def pi_scales(A: Sequence[Tensor], G: Sequence[Tensor], kind: str = "trace") -> list[Tensor]:
    r"""Per-layer :math:`\pi_i` from the undamped factors (0-d tensors; no host sync).

    - ``"trace"`` (default, arXiv's "one of the best and most robust"):
      :math:`\pi = \sqrt{(\operatorname{tr}\bar A / \dim \bar A) / (\operatorname{tr} G / \dim G)}`,
      the ratio of average eigenvalues; ``dim`` counts the homogeneous coordinate.
    - ``"frobenius"`` (the variant labelled "used in paper" in the authors' code):
      :math:`\pi = \sqrt{(\|\bar A\|_F / \sqrt{\dim \bar A}) / (\|G\|_F / \sqrt{\dim G})}`.
    - ``"one"``: :math:`\pi = 1`.

    A factor with zero norm gives :math:`\pi = 1` (as tensorflow/kfac does), instead of 0 or ∞.

    Args:
        A: input factors, each ``(d_a, d_a)``, or ``(d_a,)`` for a diagonal factor (its
            diagonal; an embedding's one-hot covariance).
        G: output-gradient factors, each ``(d_g, d_g)``.
        kind: one of :data:`PI_KINDS`.

    Raises:
        ValueError: unknown ``kind``.

    """
    if kind not in PI_KINDS:
        raise ValueError(f"pi: expected one of {PI_KINDS}, got {kind!r}")
    out = []
    for a, g in zip(A, G, strict=True):
        if kind == "one":
            out.append(torch.ones((), dtype=a.dtype, device=a.device))
            continue
        if kind == "trace":
            na, ng = _trace(a) / a.shape[0], _trace(g) / g.shape[0]
        else:
            na = _frobenius(a) / math.sqrt(a.shape[0])
            ng = _frobenius(g) / math.sqrt(g.shape[0])
        ok = (na > 0) & (ng > 0) & torch.isfinite(na) & torch.isfinite(ng)
        out.append(torch.where(ok, torch.sqrt(na / torch.where(ok, ng, 1.0)), 1.0))
    return out


def _trace(M: Tensor) -> Tensor:
    """The trace of a square matrix, or of the diagonal matrix of a vector."""
    return M.sum() if M.ndim == 1 else torch.trace(M)


def _frobenius(M: Tensor) -> Tensor:
    """The Frobenius norm of a square matrix, or of the diagonal matrix of a vector."""
    return torch.linalg.vector_norm(M) if M.ndim == 1 else torch.linalg.matrix_norm(M)


def levenberg_marquardt(
    lam: float, rho: float, omega: float, bounds: tuple[float, float] = (0.0, math.inf)
) -> float:
    r"""One application of the Levenberg–Marquardt rule (arXiv §6.5).

    .. math::
        \lambda \leftarrow \begin{cases} \omega\lambda & \rho > 3/4 \\
        \lambda/\omega & \rho < 1/4 \text{ or } \rho \text{ NaN} \\ \lambda & \text{otherwise,} \end{cases}

    then clamped to ``bounds``.
    """
    if rho > 0.75:
        lam = lam * omega
    elif not rho >= 0.25:  # also NaN
        lam = lam / omega
    return min(max(lam, bounds[0]), bounds[1])


def gamma_candidates(
    gamma: float, omega: float, bounds: tuple[float, float]
) -> list[float]:
    r"""The γ values to try (arXiv §6.6): :math:`[\omega\gamma, \gamma, \gamma/\omega]`, clamped.

    Candidates that clamping makes equal to another are dropped, so the list has 1–3 entries
    in increasing order and always contains the (clamped) current γ.
    """
    lo, hi = bounds
    out: list[float] = []
    for c in (gamma * omega, gamma, gamma / omega):
        c = min(max(c, lo), hi)
        if c not in out:
            out.append(c)
    return out


def initial_damping(A: Sequence[Tensor], G: Sequence[Tensor]) -> float:
    r"""λ₀ calibrated on the first batch: the largest eigenvalue of the K-FAC curvature.

    .. math::
        \lambda_0 = \max_i \lambda_{\max}(\bar A_i)\,\lambda_{\max}(G_i)
                  = \lambda_{\max}\bigl(\operatorname{blockdiag}_i(\bar A_i \otimes G_i)\bigr).

    Why: the right λ scales with the loss (the paper's 150 for autoencoders summing 784 binary
    cross-entropies per case, "≈1" for classifiers in the authors' code). Damping as large as
    the largest curvature errs on the safe side, as the paper advises ("too large is safer"),
    makes the first steps trust-region-like along the stiffest directions, and is invariant to
    rescaling the loss. The LM rule then lowers λ by :math:`\omega_1` every :math:`T_1` steps
    while the model is trustworthy. Measured: on the paper's MNIST autoencoder (sparse
    initialization, first batch of 1000) it gives 0.27 for ``BCEWithLogitsLoss()``, i.e. 215 on
    the paper's objective (summed over the 784 pixels) against the paper's λ₀ = 150; on a
    small tanh classifier of scikit-learn's digits it gives 0.26 against the authors' advice of
    "≈ 1" for classifiers. The price of erring large: the first few dozen steps are
    conservative (λ falls by 10× every ~45 steps); give ``damping`` to start lower.

    Args:
        A: the first batch's input factors (a vector stands for a diagonal factor).
        G: its output-gradient factors, including the reduction scale :math:`\kappa`.

    The eigenvalues come from a short power iteration (:func:`_top_eigenvalue`).

    Returns:
        λ₀ as a float (one host sync); 1.0 if every factor is zero.

    """
    tops = [_top_eigenvalue(a) * _top_eigenvalue(g) for a, g in zip(A, G, strict=True)]
    top = float(torch.stack(tops).max())
    return top if top > 0 and math.isfinite(top) else 1.0


def _top_eigenvalue(M: Tensor, iterations: int = 20) -> Tensor:
    """The largest eigenvalue of a symmetric PSD ``M`` by power iteration from the ones vector.

    A calibration needs only its order of magnitude; 20 matrix–vector products (``O(d²)``)
    instead of a full eigendecomposition (``O(d³)``). A vector stands for its diagonal
    matrix, whose largest eigenvalue is its largest entry.
    """
    if M.ndim == 1:
        return M.max()
    v = torch.ones(M.shape[0], dtype=M.dtype, device=M.device)
    for _ in range(iterations):
        v = M @ v
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(M.dtype).tiny)
    return v @ (M @ v)
