import math

import numpy as np
import pytest
import scipy.optimize
import torch

from kronlin_nn.blocks import model_blocks
from kronlin_nn.capture import forward_recorded
from kronlin_nn.layout import ParameterLayout
from kronlin_nn.losses import predictive_distribution
from kronlin_nn.quadratic import (
    cached_output_jvps,
    model_change,
    output_jvps,
    reduction_ratio,
    solve_coefficients,
)

from .helpers import LOSS_CLASSES, data, dense_ggn, output_jacobian, reduction_scale, tiny_mlp

SIZES = [3, 4, 5, 3]


def _setup(bias=True):
    model = tiny_mlp(SIZES, bias=bias)
    layers = model_blocks(model)
    layout = ParameterLayout(layers)
    U = torch.randn(3, layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return model, layers, layout, U


@pytest.mark.parametrize("bias", [True, [True, False, True]])
def test_jvps_match_dense_jacobian(bias):
    model, layers, layout, U = _setup(bias)
    x, _ = data("mse", 6, SIZES[0], SIZES[-1])
    expected = torch.einsum("ndp,kp->knd", output_jacobian(model, x), U)
    _, calls = forward_recorded(model, [b.module for b in layers], x)
    cached = cached_output_jvps(model, layers, calls, x, layout.unstack(U))
    torch.testing.assert_close(cached, expected)
    names = {id(p): n for n, p in model.named_parameters()}
    tangents = {}
    for (W, b), T in zip(layout.parameters(), layout.unstack(U), strict=True):
        tangents[names[id(W)]] = T[:, :, : W.shape[1]]
        if b is not None:
            tangents[names[id(b)]] = T[:, :, -1]
    torch.testing.assert_close(output_jvps(model, x, tangents), expected)
    assert "forward" not in layers[0].module.__dict__  # the patched forwards are gone


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fisher_quadratic_forms_match_dense_ggn(kind, reduction):
    """Spec §13: uᵀFv from forward-mode products and F_R equals the dense JᵀF_RJ."""
    model, layers, layout, U = _setup()
    n = 5
    x, _ = data(kind, n, SIZES[0], SIZES[-1])
    z, calls = forward_recorded(model, [b.module for b in layers], x)
    dist = predictive_distribution(LOSS_CLASSES[kind](reduction=reduction))
    Jt = cached_output_jvps(model, layers, calls, x, layout.unstack(U))
    gram = dist.fisher_gram(z.detach(), Jt) * dist.scale(n, z.shape[1])
    F = dense_ggn(model, kind, reduction, x)
    torch.testing.assert_close(gram, U @ F @ U.T)
    assert reduction_scale(kind, reduction, n, z.shape[1]) == dist.scale(n, z.shape[1])


def _random_model(seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((2, 2))
    return B @ B.T + 0.1 * np.eye(2), rng.standard_normal(2)


@pytest.mark.parametrize("seed", range(5))
def test_two_by_two_solve_beats_brute_force(seed):
    """Spec §13: (α, μ) from the 2×2 system vs a brute-force grid minimisation of M."""
    A, c = _random_model(seed)
    x = solve_coefficients(A, c)
    brute = scipy.optimize.minimize(lambda v: model_change(A, c, v), np.zeros(2),
                                    method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
    np.testing.assert_allclose(x, brute.x, atol=1e-6)
    assert model_change(A, c, x) <= brute.fun + 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_optimal_model_change_is_half_the_linear_term(seed):
    """Spec §13: M(δ*) − M(0) = ½∇hᵀδ*."""
    A, c = _random_model(seed)
    x = solve_coefficients(A, c)
    assert math.isclose(model_change(A, c, x), 0.5 * c @ x, rel_tol=1e-12)


def test_zero_previous_update_gives_alpha_only():
    A, c = np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([-3.0, 0.0])
    np.testing.assert_allclose(solve_coefficients(A, c), [1.5, 0.0])


def test_fixed_coefficients():
    A, c = _random_model(0)
    alpha, mu = solve_coefficients(A, c, (0.3, None))
    assert alpha == 0.3
    assert math.isclose(mu, -(c[1] + A[1, 0] * 0.3) / A[1, 1])
    np.testing.assert_array_equal(solve_coefficients(A, c, (0.3, 0.5)), [0.3, 0.5])


def test_reduction_ratio_conventions():
    assert reduction_ratio(0.5, 1.0, -1.0) == 0.5
    assert reduction_ratio(1.0, 1.0, -0.5) == 0.0  # h unchanged: ρ = 0, not an increase
    assert reduction_ratio(0.5, 1.0, 1.0) == -0.5  # a decrease the model predicted as a rise
    assert reduction_ratio(1.5, 1.0, -1.0) == -math.inf  # h increased (authors' code)
    assert math.isnan(reduction_ratio(math.nan, 1.0, -1.0))


def test_blocks_without_a_cached_tangent_forward_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.PReLU()).double()
    blocks = model_blocks(model)
    layout = ParameterLayout(blocks)
    x, _ = data("mse", 4, 3, 3)
    _, calls = forward_recorded(model, [b.module for b in blocks], x)
    with pytest.raises(ValueError, match=r"blocks: \['1'\] have no cached tangent forward; use output_jvps"):
        cached_output_jvps(model, blocks, calls, x, layout.unstack(torch.zeros(1, layout.size,
                                                                                dtype=torch.float64)))
    twice = torch.nn.Sequential(model[0], model[0])  # recorded once, called twice
    with pytest.raises(RuntimeError, match="called more often in the quadratic model's pass"):
        cached_output_jvps(twice, blocks[:1], calls[:1], x,
                           layout.unstack(torch.zeros(1, layout.size, dtype=torch.float64))[:1])


def test_first_steps_print_no_warning_in_a_fresh_process():
    """torch's one-time forward-mode AD set-up warns ~20 times; users see none of it."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from torch import nn\n"
        "from kronlin_nn import KFAC\n"
        "for approx in ('blockdiag', 'tridiag'):\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))\n"
        "    opt = KFAC(m, nn.CrossEntropyLoss(), approx=approx, seed=0)\n"
        "    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))\n"
        "    for _ in range(3):\n"
        "        assert opt.step(x, y)['accepted']\n"
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
