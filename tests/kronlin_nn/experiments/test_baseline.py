import math

import pytest
import torch
from torch import nn

from kronlin_nn.experiments.baseline import SGDNesterov, search_learning_rate
from kronlin_nn.schedules import sutskever_momentum


def _objective(theta, x, y, eta):
    w, b = theta
    return ((x @ w.T + b - y) ** 2).mean() + 0.5 * eta * (w.square().sum() + b.square().sum())


def test_updates_follow_sutskever_nesterov_by_hand():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    lr, eta = 0.1, 0.01
    opt = SGDNesterov(model, nn.MSELoss(), lr=lr, mu_max=0.99, weight_decay=eta)
    theta = [model.weight.detach().clone(), model.bias.detach().clone()]
    velocity = [torch.zeros_like(t) for t in theta]
    for t in range(300):  # crosses the μ change at t = 250
        mu = sutskever_momentum(t, 0.99)
        ahead = [(p + mu * v).requires_grad_() for p, v in zip(theta, velocity, strict=True)]
        h = _objective(ahead, x, y, eta)
        grads = torch.autograd.grad(h, ahead)
        velocity = [mu * v - lr * g for v, g in zip(velocity, grads, strict=True)]
        theta = [p + v for p, v in zip(theta, velocity, strict=True)]
        stats = opt.step(x, y)
        assert stats["mu"] == mu and stats["lr"] == lr
        assert stats["loss"] == pytest.approx(h.item(), rel=1e-12)
    torch.testing.assert_close(model.weight.detach(), theta[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), theta[1], rtol=1e-12, atol=1e-12)


def test_sgd_validation():
    with pytest.raises(ValueError):
        SGDNesterov(nn.Linear(2, 2), nn.MSELoss(), lr=0.0)
    with pytest.raises(ValueError):
        SGDNesterov(nn.Linear(2, 2), nn.MSELoss(), lr=0.1, weight_decay=-1.0)


def test_grid_search_picks_the_lowest_error_and_reports_its_cost():
    scores = {0.1: math.nan, 0.01: 2.0, 0.001: 3.0}
    search = search_learning_rate(scores.__getitem__, (0.1, 0.01, 0.001))
    assert search.chosen == 0.01
    assert search.errors == (math.inf, 2.0, 3.0)
    assert search.seconds >= 0.0


def test_grid_search_ties_and_empty_grid():
    assert search_learning_rate(lambda lr: 1.0, (0.5, 0.1, 0.2)).chosen == 0.1
    assert search_learning_rate(lambda lr: math.inf, (0.5, 0.1)).chosen == 0.1
    with pytest.raises(ValueError):
        search_learning_rate(lambda lr: 1.0, ())
