import math

import pytest
import torch

from kronlin_nn.damping import (
    curvature_scale,
    damping_grid,
    gamma_candidates,
    gamma_decay,
    levenberg_marquardt,
    lm_decay,
    lm_rest_point,
    lm_update,
    pi_scales,
)


def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return X @ X.T / d


def test_decays_follow_the_paper():
    assert math.isclose(lm_decay(5), (19 / 20) ** 5)
    assert math.isclose(gamma_decay(20), math.sqrt(19 / 20) ** 20)


def test_pi_trace_and_frobenius():
    A, G = _spd(4, 0), _spd(3, 1)
    (pi_t,) = pi_scales([A], [G], "trace")
    assert math.isclose(pi_t.item(), math.sqrt((A.trace() / 4) / (G.trace() / 3)))
    (pi_f,) = pi_scales([A], [G], "frobenius")
    expected = math.sqrt((torch.linalg.norm(A) / 2) / (torch.linalg.norm(G) / math.sqrt(3)))
    assert math.isclose(pi_f.item(), expected)
    (pi_1,) = pi_scales([A], [G], "one")
    assert pi_1.item() == 1.0


@pytest.mark.parametrize(("kind", "norm"), [("trace", "nuc"), ("frobenius", "fro")])
def test_pi_minimises_the_residual_bound(kind, norm):
    """arXiv §6.3: (Ā + πcI) ⊗ (G + c/π I) = Ā⊗G + c²I + c·R(π), R(π) = π I⊗G + Ā⊗I/π. π
    minimizes the triangle bound π‖I⊗G‖ + ‖Ā⊗I‖/π of ‖R(π)‖, found here by a numerical search
    on dense Kronecker products (for the trace norm the bound is ‖R(π)‖ itself: PSD terms)."""
    from scipy.optimize import minimize_scalar

    A, G = _spd(4, 0), _spd(3, 1)
    (pi,) = pi_scales([A], [G], kind)
    I_a, I_g = torch.eye(4, dtype=A.dtype), torch.eye(3, dtype=A.dtype)
    left = torch.linalg.matrix_norm(torch.kron(I_a, G), norm).item()
    right = torch.linalg.matrix_norm(torch.kron(A, I_g), norm).item()

    def bound(log_pi):
        return math.exp(log_pi) * left + right / math.exp(log_pi)

    best = minimize_scalar(bound, bounds=(-5.0, 5.0), method="bounded",
                           options={"xatol": 1e-10})
    assert math.exp(best.x) == pytest.approx(pi.item(), rel=1e-7)
    if kind == "trace":
        residual = torch.linalg.matrix_norm(pi * torch.kron(I_a, G) + torch.kron(A, I_g) / pi,
                                            "nuc").item()
        assert residual == pytest.approx(bound(math.log(pi.item())), rel=1e-12)


@pytest.mark.parametrize("kind", ["trace", "frobenius"])
def test_pi_of_a_diagonal_factor_is_that_of_its_matrix(kind):
    """A vector stands for its diagonal matrix (an embedding's one-hot covariance)."""
    d, G = torch.rand(5, generator=torch.Generator().manual_seed(2), dtype=torch.float64), _spd(3, 1)
    (from_vector,) = pi_scales([d], [G], kind)
    (from_matrix,) = pi_scales([torch.diag(d)], [G], kind)
    assert from_vector.item() == pytest.approx(from_matrix.item(), rel=1e-15)


def test_pi_falls_back_to_one_for_zero_factors():
    A = torch.zeros(3, 3)
    (pi,) = pi_scales([A], [torch.eye(2)])
    assert pi.item() == 1.0
    with pytest.raises(ValueError, match="pi"):
        pi_scales([A], [A], "nuclear")


def test_levenberg_marquardt_rule():
    w = lm_decay(5)
    assert levenberg_marquardt(1.0, 0.9, w) == w
    assert levenberg_marquardt(1.0, 0.1, w) == 1 / w
    assert levenberg_marquardt(1.0, -math.inf, w) == 1 / w
    assert levenberg_marquardt(1.0, math.nan, w) == 1 / w
    assert levenberg_marquardt(1.0, 0.5, w) == 1.0
    assert levenberg_marquardt(1.0, 0.25, w) == levenberg_marquardt(1.0, 0.75, w) == 1.0
    assert levenberg_marquardt(1.0, 0.9, w, bounds=(0.9, 2.0)) == 0.9


def test_gamma_candidates_are_clamped_and_deduplicated():
    w = gamma_decay(20)
    assert gamma_candidates(1.0, w, (0.0, math.inf)) == [w, 1.0, 1 / w]
    assert gamma_candidates(12.25, w, (0.1, 1.0)) == [1.0]  # the authors' cap fights γ₀ = 12.25
    assert gamma_candidates(0.1, w, (0.1, 1.0)) == [0.1, 0.1 / w]


def test_curvature_scale_is_the_largest_kfac_eigenvalue():
    A, G = [_spd(4, 0), _spd(5, 2)], [_spd(3, 1), 0.01 * _spd(2, 3)]
    expected = max(torch.linalg.eigvalsh(a)[-1] * torch.linalg.eigvalsh(g)[-1]
                   for a, g in zip(A, G, strict=True)).item()
    assert math.isclose(curvature_scale(A, G), expected, rel_tol=1e-3)
    assert curvature_scale([torch.zeros(2, 2)], [torch.zeros(2, 2)]) == 1.0
    assert curvature_scale([], []) == 1.0  # no block with curvature


def test_damping_grid_is_one_lambda_per_decade_down_to_1e_minus_8():
    assert damping_grid(3.0) == [3.0 * 10.0**-j for j in range(9)]
    assert damping_grid(3.0, decades=2) == [3.0 * 10.0**-j for j in range(3)]


LAMS = [10.0**-j for j in range(8)]


@pytest.mark.parametrize(("rhos", "decreases", "expected"), [
    # ρ crosses 3/4 between candidates 2 and 3 (0.9 → 0.5), 3/8 of the way: log-linear there
    ([1.6, 1.2, 0.9, 0.5, 0.1], [1.0, 2.0, 2.5, 2.6, 1.0], 1e-2 * 10**-0.375),
    ([1.6, 1.2, 0.76, 0.75, 0.1], [1.0, 2.0, 2.5, 2.6, 1.0], 1e-3),  # 3/4 itself: that candidate
    # below 1/4, h increased (ρ = −∞) or the step failed (NaN): the candidate before it
    ([1.6, 1.2, 0.9, 0.2, 0.1], [1.0, 2.0, 2.5, 2.6, 1.0], 1e-2),
    ([1.6, 0.9, -math.inf, 0.5], [1.0, 2.0, -0.1, 1.5], 1e-1),
    ([1.6, 0.9, math.nan, 0.5], [1.0, 2.0, math.nan, 1.5], 1e-1),
    # every ρ > 3/4: the smallest λ before the decrease falls below half the best one, not the
    # degenerate tiny steps below it (ρ ≈ 1 because the step is short)
    ([1.97, 1.76, 1.07, 0.83, 0.77, 0.82, 0.90, 0.93], [0.11, 0.7, 1.3, 0.96, 0.41, 0.2, 0.15, 0.13], 1e-3),
    # every ρ > 3/4 and every candidate productive: the smallest λ
    ([1.9, 1.5, 0.95, 0.8], [1.0, 1.1, 1.2, 1.2], 1e-3),
    # the largest λ already stops the walk: keep it (λ then grows by the LM rule)
    ([0.1, 0.05], [0.5, 0.2], 1.0),
    ([0.5, 0.05], [0.5, 0.2], 1.0),
    # a best decrease of exactly 1 is a decrease (not "none")
    ([1.6, 1.2, 0.9, 0.5, 0.1], [0.5, 0.8, 1.0, 0.9, 0.3], 1e-2 * 10**-0.375),
    # a decrease of exactly half the best one does not stop the walk
    ([1.9, 1.5, 0.95, 0.8], [1.0, 2.0, 1.0, 0.9], 1e-2),
    # ρ = 1/4 exactly is interpolated, not stepped back from
    ([1.6, 0.25], [1.0, 2.0], 10**-(0.85 / 1.35)),
    # a failed candidate is no decrease, even when every real decrease is below 1
    ([1.9, 1.5, 0.95, 0.8, -math.inf], [0.2, 0.6, 0.2, 0.1, -0.1], 1e-1),
    # nothing decreased h: the largest λ
    ([-math.inf, -math.inf], [-1.0, -2.0], 1.0),
])
def test_lm_rest_point(rhos, decreases, expected):
    assert lm_rest_point(LAMS[:len(rhos)], rhos, decreases) == pytest.approx(expected, rel=1e-12)


def test_lm_update_compounds_consecutive_moves_up_to_the_streak():
    lam, streak, seen = 1.0, 0, []
    for rho in (0.9, 2.0, 0.8, 0.8, 0.5, 0.1, math.nan, 0.9):
        lam, streak = lm_update(lam, rho, 0.5, (0.0, math.inf), streak=streak, max_streak=3)
        seen.append((lam, streak))
    assert seen == [(0.5, -1), (0.125, -2), (0.015625, -3), (0.001953125, -4),  # capped at 0.5³
                    (0.001953125, 0), (0.00390625, 1), (0.015625, 2), (0.0078125, -1)]
    # max_streak=1 is the paper's rule, and bounds clamp
    assert lm_update(1.0, 0.9, 0.5, (0.0, math.inf), streak=-5, max_streak=1) == (0.5, -6)
    assert lm_update(1.0, 0.9, 0.5, (0.8, 2.0), streak=0, max_streak=1) == (0.8, -1)
    assert levenberg_marquardt(1.0, 0.9, 0.5) == 0.5
