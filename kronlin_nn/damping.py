r"""Damping rules of K-FAC (paper §6 / arXiv §6.3–6.6; spec §3).

- :func:`pi_scales`: the factored-Tikhonov split :math:`\pi_i` (arXiv §6.3), so that layer
  ``i``'s damped block is :math:`(\bar A + \pi_i c I) \otimes (G + c/\pi_i I)`.
- :func:`levenberg_marquardt`: the λ rule (arXiv §6.5): shrink by :math:`\omega_1` when
  :math:`\rho > 3/4`, grow by :math:`1/\omega_1` when :math:`\rho < 1/4` (or ρ is NaN).
- :func:`gamma_candidates`: the greedy γ search set :math:`\{\omega_2\gamma, \gamma, \gamma/\omega_2\}`
  (arXiv §6.6), clamped to bounds.
- :func:`curvature_scale`: the largest eigenvalue of the block-diagonal curvature, the scale on
  which the first-batch search for λ₀ is laid out (:func:`damping_grid`, :func:`lm_rest_point`).

The decays follow the paper: :math:`\omega_1 = (19/20)^{T_1}`, :math:`\omega_2 = (19/20)^{T_2/2}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "GAMMA_RULES",
    "PI_KINDS",
    "curvature_scale",
    "damping_grid",
    "gamma_candidates",
    "gamma_decay",
    "levenberg_marquardt",
    "lm_decay",
    "lm_rest_point",
    "lm_update",
    "pi_scales",
]

PI_KINDS = ("trace", "frobenius", "one")
GAMMA_RULES = ("tied", "greedy")


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
    return lm_update(lam, rho, omega, bounds, streak=0, max_streak=1)[0]


def lm_update(
    lam: float, rho: float, omega: float, bounds: tuple[float, float], *, streak: int,
    max_streak: int
) -> tuple[float, int]:
    r"""The Levenberg–Marquardt rule whose factor compounds over consecutive moves.

    ``streak`` counts the consecutive applications that moved λ the same way (negative while it
    shrinks, positive while it grows, 0 after a ρ in :math:`[1/4, 3/4]`). The ``c``-th move in
    a row multiplies λ by :math:`\omega^{\min(c, c_{\max})}` (or divides it), so λ travels a
    factor 10 in about 5 applications instead of 9 when ρ keeps saying the same thing, and
    :math:`c_{\max} = 1` (``max_streak``) is the paper's rule (:func:`levenberg_marquardt`).
    In full-batch training ρ stays above 3/4 for hundreds of steps while λ is far above the
    value the quadratic model tolerates; the paper's constant factor then takes ~45 steps per
    decade.

    Returns:
        ``(λ, streak)`` after the update, λ clamped to ``bounds``.

    """
    direction = -1 if rho > 0.75 else (0 if rho >= 0.25 else 1)  # NaN grows λ
    if direction == 0:
        streak = 0
    elif streak * direction > 0:
        streak += direction
    else:
        streak = direction
    lam = lam * omega ** (-direction * min(abs(streak), max_streak))
    return min(max(lam, bounds[0]), bounds[1]), streak


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


def curvature_scale(A: Sequence[Tensor], G: Sequence[Tensor]) -> float:
    r"""The largest eigenvalue of the block-diagonal K-FAC curvature of a batch.

    .. math::
        \lambda_{\text{top}} = \max_i \lambda_{\max}(\bar A_i)\,\lambda_{\max}(G_i)
                  = \lambda_{\max}\bigl(\operatorname{blockdiag}_i(\bar A_i \otimes G_i)\bigr).

    The scale of the loss's curvature, in the loss's units: the first-batch search for λ₀ is
    laid out below it (:func:`damping_grid`), and the default lower bound of λ is a fixed
    fraction of it. The eigenvalues come from a short power iteration (:func:`_top_eigenvalue`).

    Args:
        A: the first batch's input factors (a vector stands for a diagonal factor).
        G: its output-gradient factors, including the reduction scale :math:`\kappa`.

    Returns:
        :math:`\lambda_{\text{top}}` as a float (one host sync); 1.0 if every factor is zero.

    """
    tops = [_top_eigenvalue(a) * _top_eigenvalue(g) for a, g in zip(A, G, strict=True)]
    if not tops:  # no block with curvature (first-order blocks only)
        return 1.0
    top = float(torch.stack(tops).max())
    return top if top > 0 and math.isfinite(top) else 1.0


def damping_grid(top: float, decades: int = 8) -> list[float]:
    r"""The λ candidates of the first-batch search: :math:`\lambda_{\text{top}} 10^{-j}`, ``j = 0 … decades``.

    Decreasing, one per decade: from damping as large as the largest curvature (the paper's "too
    large is safer") down to :math:`10^{-8}` of it, which covers every λ that the suite's
    problems were trained best with (see the configuration page of the docs).
    """
    return [top * 10.0**-j for j in range(decades + 1)]


def lm_rest_point(lams: Sequence[float], rhos: Sequence[float], decreases: Sequence[float]) -> float:
    r"""The λ at which the first batch's ρ falls to 3/4: where the LM rule stops shrinking λ.

    The LM rule (:func:`levenberg_marquardt`) shrinks λ while :math:`\rho > 3/4`. Walking the
    decreasing grid from the largest λ down, this stops at the first candidate with
    :math:`\rho \le 3/4` and returns the λ between it and the one before at which ρ, linear in
    :math:`\log\lambda`, crosses 3/4. Where that candidate's ρ is below 1/4 (or NaN, or
    :math:`h` increased) ρ falls too steeply to interpolate and the one before is returned. The
    walk also stops, returning the candidate before, at a candidate below the best one whose
    decrease :math:`h(\theta) - h(\theta + \delta)` is less than half the best decrease.

    Why the crossing and not the first candidate past it: starting where the rule is at rest
    made the following steps, with momentum, overshoot (uphill updates at steps 5–20 on a tanh
    classifier of scikit-learn's digits); a whole grid step above it was a decade too cautious
    on others (an MLP with LayerNorm then needed twice the iterations).

    The decrease test matters because ρ alone cannot see a useless proposal: with a tiny
    γ = √(λ + η) the damped K-FAC inverse amplifies directions that the exact Fisher finds
    stiff, α shrinks to compensate, and the resulting short step has ρ ≈ 1 while decreasing
    :math:`h` by a fraction of what a larger λ achieves.

    Args:
        lams: the candidates, decreasing.
        rhos: :math:`\rho(\lambda_j)` (NaN or :math:`-\infty` where the step failed or
            increased :math:`h`).
        decreases: :math:`h(\theta) - h(\theta + \delta_j)`, NaN where not finite.

    Returns:
        λ₀ (the largest candidate if none decreased :math:`h`).

    """
    finite = [d if d > 0 else 0.0 for d in decreases]  # NaN and increases count as no decrease
    best = max(range(len(finite)), key=finite.__getitem__)
    if finite[best] == 0.0:
        return lams[0]
    for j, rho in enumerate(rhos):
        if j > best and finite[j] < 0.5 * finite[best]:
            return lams[j - 1]
        if not rho > 0.75:
            if j == 0:
                return lams[0]
            if not rho >= 0.25:
                return lams[j - 1]
            t = (rhos[j - 1] - 0.75) / (rhos[j - 1] - rho)  # in (0, 1]: ρ(j−1) > 3/4 ≥ ρ(j)
            return lams[j - 1] * (lams[j] / lams[j - 1]) ** t
    return lams[-1]


def _top_eigenvalue(M: Tensor, iterations: int = 20) -> Tensor:
    """The largest eigenvalue of a symmetric PSD ``M`` by power iteration.

    A calibration needs only its order of magnitude; 20 matrix–vector products (``O(d²)``)
    instead of a full eigendecomposition (``O(d³)``). A vector stands for its diagonal
    matrix, whose largest eigenvalue is its largest entry. The start is a fixed pseudo-random
    vector, not the ones vector: that is the null vector of a softmax output's gradient factor
    (its rows sum to zero), from which the iteration would run on rounding noise.
    """
    if M.ndim == 1:
        return M.max()
    start = torch.Generator().manual_seed(0)
    v = torch.rand(M.shape[0], generator=start, dtype=M.dtype).add_(0.5).to(M.device)
    for _ in range(iterations):
        v = M @ v
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(M.dtype).tiny)
    return v @ (M @ v)
