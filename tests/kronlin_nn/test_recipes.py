import math

import pytest
import torch
from torch import nn

from kronlin_nn import KFAC, PAPER

from .helpers import data, flat_params, tiny_mlp


def test_paper_recipe_is_the_papers_values_in_the_losss_units():
    """**PAPER on a loss averaged over D outputs = λ₀ = 150/D, η = 1e-5/D, greedy γ, λ ≥ 0."""
    model, twin = tiny_mlp([3, 4, 5, 3]), tiny_mlp([3, 4, 5, 3])
    x, y = data("bce", 20, 3, 3)
    loss_fn = nn.BCEWithLogitsLoss()
    opt = KFAC(model, loss_fn, seed=0, **PAPER)
    ref = KFAC(twin, loss_fn, seed=0, damping=150 / 3, weight_decay=1e-5 / 3,
               gamma_rule="greedy", damping_bounds=(0.0, math.inf), quad_fraction=1.0, lm_streak=1)
    for _ in range(21):  # through the first γ search at k = 20
        out, expected = opt.step(x, y), ref.step(x, y)
        assert out["lambda"] / 3 == pytest.approx(expected["lambda"], rel=1e-12)
    torch.testing.assert_close(flat_params(model), flat_params(twin), rtol=1e-10, atol=1e-12)


def test_paper_recipe_is_read_only():
    with pytest.raises(TypeError):
        PAPER["damping"] = 1.0  # type: ignore[index]
