"""The optimizer's iteration against a dense re-implementation of Algorithm 2 (spec §6).

The reference computes, in dense float64 matrices: the block-diagonal approximation F̆ from
the statistics of the first n₁ cases (scaled from S₁ up to the batch), the damped inverse with
the factored-Tikhonov split π, the exact Fisher of the first n₂ cases scaled up to the batch,
(α, μ) from the 2×2 quadratic model, h with η/2‖θ‖², ρ, the Levenberg–Marquardt rule with its
thresholds 1/4 and 3/4 and its streak, the tied γ with its early refreshes, the rejection of
uphill updates and the ρ check of a decrease promised beyond h. Every quantity the optimizer
reports is compared on every step.

The cases cover both reductions (with ``"sum"`` the scaling from S₁ and S₂ up to the batch is
not 1), fractions τ₁, τ₂ < 1, every Fisher type, every π, layers without bias, damping bounds
and ``rho_includes_damping``. With adaptive damping on, an lr multiplier changed per step
drives ρ to both sides of each threshold (checked), so moving a threshold changes λ.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kronlin_nn import KFAC, kfac_factors

from .helpers import (
    LOSS_CLASSES,
    data,
    dense_ggn,
    flat_gradient,
    flat_params,
    reduction_scale,
    set_flat_params,
    tiny_mlp,
)

SIZES = [3, 4, 5, 3]
DRIFT = -math.log(0.95**10)  # the tied rule's early-refresh threshold, |log ω₂| for T₂ = 20
# per-step lr multipliers (param_groups[0]["lr"], which scales the α and μ the model chose)
MULTIPLIERS = [1.0, 1.0, 1.0, 0.7, 1.0, 1.0, 1.3, 1.0, 1.0, 0.7, 1.0, 1.0]


def _objective(model, loss_fn, x, y, eta):
    """h = loss + η/2‖θ‖² (a float) and ∇h, in the row-major [W | b] layout."""
    theta = flat_params(model)
    with torch.no_grad():
        loss = loss_fn(model(x), y).item()
    return loss + 0.5 * eta * (theta @ theta).item(), flat_gradient(model, loss_fn, x, y, eta)


def _pi(A, G, kind):
    if kind == "one":
        return 1.0
    if kind == "trace":
        return math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    return math.sqrt((torch.linalg.norm(A) / math.sqrt(A.shape[0]))
                     / (torch.linalg.norm(G) / math.sqrt(G.shape[0])))


def _lm(lam, rho, omega, streak, max_streak, bounds):
    """The LM rule: shrink when ρ > 3/4, grow when ρ < 1/4 or NaN, compounding over a streak."""
    direction = -1 if rho > 0.75 else (0 if rho >= 0.25 else 1)
    if direction == 0:
        streak = 0
    else:
        streak = streak + direction if streak * direction > 0 else direction
    lam *= omega ** (-direction * min(abs(streak), max_streak))
    return min(max(lam, bounds[0]), bounds[1]), streak


def _reference(model, cfg, x, y, multipliers):
    """Algorithm 2, densely, for block-diagonal K-FAC; one dict of diagnostics per step."""
    kind, reduction = cfg["kind"], cfg["reduction"]
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    m = x.shape[0]
    D = model(x[:1]).numel()
    n1 = min(m, max(1, math.ceil(cfg["tau1"] * m)))
    n2 = min(m, max(math.ceil(cfg["tau2"] * m), cfg["quad_min"]))
    s = reduction_scale(kind, reduction, m, D)
    kappa, kappa1 = s * m, reduction_scale(kind, reduction, n1, D) * n1
    fisher_scale = s * m / n2 / reduction_scale(kind, reduction, n2, D)
    lam, eta, adapt = cfg["lam"], cfg["eta"], cfg["adapt"]
    T1, T3 = cfg["damping_every"], cfg["inverse_every"]
    bounds = cfg.get("damping_bounds") or (0.0, math.inf)
    generator = torch.Generator().manual_seed(cfg["seed"])
    gamma, stats, delta0, F_inv, streak, out = math.sqrt(lam + eta), None, None, None, 0, []
    for k, multiplier in enumerate(multipliers, start=1):
        theta = flat_params(model)
        h, grad = _objective(model, loss_fn, x, y, eta)
        batch = [(A, G * kappa / kappa1) for A, G in
                 kfac_factors(model, loss_fn, x[:n1], y[:n1], fisher=cfg["fisher"],
                              generator=generator).values()]
        eps = min(1 - 1 / k, cfg["ema_max"])
        stats = batch if stats is None else [
            (eps * A0 + (1 - eps) * A1, eps * G0 + (1 - eps) * G1)
            for (A0, G0), (A1, G1) in zip(stats, batch, strict=True)]
        refreshed = k % T3 == 0 or k <= 3
        tied = max(math.sqrt(lam + eta), math.sqrt(eta))  # default gamma_bounds (√η, ∞)
        if adapt:
            refreshed = refreshed or abs(math.log(tied / gamma)) > DRIFT
            if refreshed:
                gamma = tied
        if refreshed:
            blocks = []
            for A, G in stats:
                pi = _pi(A, G, cfg["pi"])
                blocks.append(torch.kron(G + gamma / pi * torch.eye(G.shape[0], dtype=G.dtype),
                                         A + gamma * pi * torch.eye(A.shape[0], dtype=A.dtype)))
            F_inv = torch.linalg.inv(torch.block_diag(*blocks))
        Delta = -F_inv @ grad
        F = dense_ggn(model, kind, reduction, x[:n2]) * fisher_scale
        eye = torch.eye(F.shape[0], dtype=F.dtype)
        # (α, μ): the free ones minimize M (times the lr multiplier), the others are held
        momentum, fixed_lr = cfg["momentum"], cfg["lr"] is not None
        use0 = delta0 is not None and momentum is not False
        U = torch.stack([Delta] + ([delta0] if use0 else []), 1)
        held = [multiplier if fixed_lr else None] + ([None if momentum is True else momentum]
                                                     if use0 else [])
        C, C_rho = F + (lam + eta) * eye, F + ((lam if cfg["rho_damping"] else 0.0) + eta) * eye
        C2, c = U.T @ C @ U, U.T @ grad
        coeffs = torch.tensor([0.0 if v is None else v for v in held], dtype=F.dtype)
        free = [i for i, v in enumerate(held) if v is None]
        rest = [i for i, v in enumerate(held) if v is not None]
        if free:
            rhs = -(c[free] + C2[free][:, rest] @ coeffs[rest])
            coeffs[free] = torch.linalg.solve(C2[free][:, free], rhs) * (1.0 if fixed_lr else multiplier)
        predicted = (0.5 * coeffs @ (U.T @ C_rho @ U) @ coeffs + c @ coeffs).item()
        delta = U @ coeffs
        alpha, mu = coeffs[0].item(), (coeffs[1].item() if use0 else 0.0)
        if not free and not adapt and momentum is not True:
            mu = float(momentum)  # plain K-FAC steps report the fixed μ, δ₀ or not
        rho, accepted, lam_used = math.nan, True, lam
        early = refreshed and not (k % T3 == 0 or k <= 3)
        # reject_uphill (default): a promised decrease larger than h ≥ 0 gets a ρ check too
        implausible = -(0.5 * coeffs @ C2 @ coeffs + c @ coeffs).item() > h
        if adapt and (k % T1 == 0 or early or implausible):
            twin = copy.deepcopy(model)
            set_flat_params(twin, theta + delta)
            h_new = _objective(twin, loss_fn, x, y, eta)[0]
            rho = -math.inf if h_new > h else (h_new - h) / predicted
            lam, streak = _lm(lam, rho, 0.95**T1, streak, cfg["lm_streak"], bounds)
            accepted = h_new <= h
        out.append({"loss": h, "lambda": lam_used, "gamma": gamma, "alpha": alpha, "mu": mu,
                    "rho": rho, "refreshed": refreshed, "accepted": accepted})
        if accepted:
            set_flat_params(model, theta + delta)
            delta0 = delta
        else:
            delta0 = None
    return out


BASE = dict(lr=None, momentum=True, kind="mse", reduction="mean", tau1=1.0, tau2=1.0, quad_min=1, fisher="exact",
            pi="trace", bias=True, lam=0.3, eta=1e-3, adapt=False, damping_every=5,
            inverse_every=20, lm_streak=3, rho_damping=True, seed=4, ema_max=0.95)
CASES = {
    # fixed λ: the scaling of the statistics and of the quadratic model
    "ce-mean": dict(kind="ce"),
    "mse-sum": dict(reduction="sum"),
    "mse-sum-fractions": dict(reduction="sum", tau1=0.5, tau2=0.25),
    "ce-sum-fractions": dict(kind="ce", reduction="sum", tau1=0.25, tau2=0.5),
    "bce-sum-fractions": dict(kind="bce", reduction="sum", tau1=0.75, tau2=0.5),
    "bce-mean-fractions": dict(kind="bce", tau1=0.5, tau2=0.25, quad_min=5),
    "mc-sum": dict(fisher="mc", reduction="sum", tau1=0.5, tau2=0.5),
    "empirical-sum": dict(kind="ce", fisher="empirical", reduction="sum", tau1=0.5, tau2=0.5),
    "pi-frobenius": dict(pi="frobenius", tau1=0.5),
    "pi-one": dict(kind="ce", pi="one", tau1=0.5),
    "no-bias": dict(bias=False, reduction="sum", tau1=0.5, tau2=0.5),
    "mixed-bias": dict(bias=(True, False, True), kind="ce"),
    "ema-max": dict(ema_max=0.5, tau1=0.5, inverse_every=4),  # ε₃ = 2/3 capped, refreshed at 4
    # fixed α and μ (lr=float and momentum=float): the model chooses the other, or none
    "fixed-lr": dict(lr=0.4, kind="ce", tau1=0.5),
    "fixed-lr-and-momentum": dict(lr=0.4, momentum=0.5, reduction="sum", tau2=0.5),
    "fixed-momentum": dict(momentum=0.5, kind="bce", tau2=0.5),
    "no-momentum": dict(momentum=False, reduction="sum", tau1=0.5, tau2=0.5),
    "fixed-lr-adaptive": dict(lr=0.4, momentum=False, adapt=True, damping_every=2, lam=1.0,
                              reduction="sum"),
    # adaptive λ: ρ, the LM rule and the tied γ; "thresholds" runs reach ρ < 1/4, ρ in
    # (1/4, 1/2), in (1/2, 3/4) and > 3/4 (checked), so moving either threshold changes λ
    "adaptive-mse-sum": dict(adapt=True, damping_every=1, reduction="sum", tau1=0.5, tau2=0.5,
                             lam=1.0, thresholds=True),
    "adaptive-ce-mean": dict(adapt=True, damping_every=1, kind="ce", tau1=0.5, tau2=0.5,
                             lam=0.02, thresholds=True),
    "adaptive-bce-sum-mc": dict(adapt=True, damping_every=1, kind="bce", reduction="sum",
                                fisher="mc", tau1=0.5, tau2=0.75, lam=0.3, lm_streak=1),
    "adaptive-no-rho-damping": dict(adapt=True, damping_every=1, rho_damping=False, lam=1.0,
                                    reduction="sum", tau1=0.5, tau2=0.5),
    "adaptive-every-2": dict(adapt=True, damping_every=2, kind="ce", reduction="sum", tau1=0.5,
                             tau2=0.5, lam=0.05, inverse_every=4, fisher="empirical"),
    # λ shrinks by more than ω₂⁻² = e^{2·|log ω₂|}: the tied γ is refreshed early (checked)
    "adaptive-tied-early": dict(adapt=True, damping_every=1, reduction="sum", lam=5.0,
                                early=True),
    # λ would pass 1.1 (see adaptive-mse-sum): the bounds hold it (checked)
    "damping-bounds": dict(adapt=True, damping_every=1, reduction="sum", tau1=0.5, tau2=0.5,
                           lam=1.0, damping_bounds=(0.9, 1.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_iteration_matches_the_dense_reference(case):
    cfg = {**BASE, **CASES[case]}
    m = 8
    x, y = data(cfg["kind"], m, SIZES[0], SIZES[-1])
    model = tiny_mlp(SIZES, bias=cfg["bias"])
    steps = len(MULTIPLIERS) if cfg["adapt"] else 4
    multipliers = MULTIPLIERS[:steps] if cfg["adapt"] else [1.0] * steps
    if cfg["lr"] is not None:  # the fixed α, scheduled through the param group
        multipliers = [cfg["lr"] * f for f in multipliers]
    expected = _reference(copy.deepcopy(model), cfg, x, y, multipliers)
    opt = KFAC(model, LOSS_CLASSES[cfg["kind"]](reduction=cfg["reduction"]), lr=cfg["lr"],
               momentum=cfg["momentum"], fisher=cfg["fisher"],
               damping=cfg["lam"], adapt_damping=cfg["adapt"], weight_decay=cfg["eta"],
               stats_fraction=cfg["tau1"], quad_fraction=cfg["tau2"],
               quad_min_cases=cfg["quad_min"], pi=cfg["pi"], damping_every=cfg["damping_every"],
               inverse_every=cfg["inverse_every"], lm_streak=cfg["lm_streak"],
               rho_includes_damping=cfg["rho_damping"], damping_bounds=cfg.get("damping_bounds"),
               ema_max=cfg["ema_max"], seed=cfg["seed"])
    for k, (multiplier, want) in enumerate(zip(multipliers, expected, strict=True), start=1):
        opt.param_groups[0]["lr"] = multiplier
        got = opt.step(x, y)
        for key in ("refreshed", "accepted"):
            assert got[key] == want[key], (k, key)
        # float64 throughout; the largest relative difference seen is 5e-12 (ρ, a ratio of
        # differences of h), 100 times below this tolerance
        for key in ("loss", "lambda", "gamma", "alpha", "mu", "rho"):
            assert got[key] == pytest.approx(want[key], rel=5e-10, abs=1e-14, nan_ok=True), (k, key)
    if cfg.get("thresholds"):
        rhos = [s["rho"] for s in expected]
        for lo, hi in ((-math.inf, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, math.inf)):
            assert any(lo <= r < hi for r in rhos), (lo, hi, rhos)
    if cfg.get("early"):
        assert any(s["refreshed"] for s in expected[3:])
    if "damping_bounds" in cfg:
        assert max(s["lambda"] for s in expected) == cfg["damping_bounds"][1]


@pytest.mark.parametrize("pi", ["trace", "frobenius", "one"])
def test_tridiag_inverse_has_the_damped_blocks_of_every_pi(pi):
    """approx="tridiag": the inverse's inverse F̂ has the damped blocks (G + γ/π I) ⊗ (Ā + γπ I)
    on its diagonal, with the π of ``pi`` (exact statistics of the whole batch, first step)."""
    x, y = data("mse", 8, SIZES[0], SIZES[-1])
    model = tiny_mlp(SIZES)
    loss_fn = LOSS_CLASSES["mse"]()
    factors = list(kfac_factors(model, loss_fn, x, y, fisher="exact").values())
    lam = 0.1
    opt = KFAC(model, loss_fn, approx="tridiag", pi=pi, fisher="exact", stats_fraction=1.0,
               damping=lam, adapt_damping=False, seed=0)
    opt.step(x, y)
    F_hat = torch.linalg.inv(torch.block_diag(*(unit.to_dense() for unit in opt._inverse)))
    gamma, offset = math.sqrt(lam), 0
    for A, G in factors:
        p = _pi(A, G, pi)
        block = torch.kron(G + gamma / p * torch.eye(G.shape[0], dtype=G.dtype),
                           A + gamma * p * torch.eye(A.shape[0], dtype=A.dtype))
        size = block.shape[0]
        torch.testing.assert_close(F_hat[offset:offset + size, offset:offset + size], block,
                                   rtol=1e-9, atol=1e-12)  # float64, re-inverted
        offset += size
