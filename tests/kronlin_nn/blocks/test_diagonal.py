import pytest
import torch
from torch import nn

from kronlin_nn import KFAC, kfac_factors

from ..helpers import LOSS_CLASSES, data, exact_fisher, model_outputs, parameter_jacobians


class Scale(nn.Module):
    """A module no block covers: x ↦ x ⊙ exp(log_scale) (non-linear in its parameter)."""

    def __init__(self, d):
        super().__init__()
        self.log_scale = nn.Parameter(0.3 * torch.randn(d))

    def forward(self, x):
        return x * torch.exp(self.log_scale)


class WithOffset(nn.Module):
    """A bare parameter of the model itself, and one inside a custom module."""

    def __init__(self):
        super().__init__()
        self.inp, self.scale, self.out = nn.Linear(3, 4), Scale(4), nn.Linear(4, 3)
        self.offset = nn.Parameter(0.1 * torch.randn(3))

    def forward(self, x):
        return self.out(torch.tanh(self.scale(self.inp(x)))) + self.offset


def _model():
    torch.manual_seed(0)
    return nn.Sequential(WithOffset(), nn.PReLU(3)).double()  # PReLU: a torch module with no block


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
def test_fallback_diagonal_equals_the_exact_fisher_diagonal(kind):
    model = _model()
    x, y = data(kind, 6, 3, 3)
    factors = kfac_factors(model, LOSS_CLASSES[kind](), x, y, fisher="exact")
    J, z = parameter_jacobians(model, x), model_outputs(model, x)
    names = ["0.scale.log_scale", "0.offset", "1.weight"]
    for name in names:  # keyed by parameter names as well as modules
        (d,) = [v for k, v in factors[name].diagonals.items() if k == name]
        dense = exact_fisher(J[name].reshape(6, 3, -1), kind, "mean", z).diagonal()
        torch.testing.assert_close(d, dense.reshape(d.shape), rtol=1e-10, atol=1e-14)
    assert factors[model[0]] is factors["0"] is factors["0.offset"]


def test_fallback_empirical_diagonal_squares_per_case_gradients():
    """Not the square of the batch gradient: the per-case gradients' squares, summed."""
    model = _model()
    x, y = data("mse", 6, 3, 3)
    diagonal = kfac_factors(model, nn.MSELoss(reduction="sum"), x, y,
                            fisher="empirical")["1.weight"].diagonals["1.weight"]
    per_case = [torch.autograd.grad(nn.MSELoss(reduction="sum")(model(x[i:i + 1]), y[i:i + 1]),
                                    model[1].weight)[0] for i in range(6)]
    torch.testing.assert_close(diagonal, sum(g**2 for g in per_case))
    batch = torch.autograd.grad(nn.MSELoss(reduction="sum")(model(x), y), model[1].weight)[0]
    assert not torch.allclose(diagonal, batch**2)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x, table):
        return x @ table * self.w


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.table = Inner(), torch.eye(3)

    def forward(self, x):
        return self.inner(x, self.table)


def test_inputs_without_the_cases_first_are_refused():
    x, y = data("mse", 4, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"model\.inner \(Inner\): .*must have the 4 cases first"):
        KFAC(Outer(), nn.MSELoss()).step(x, y)
    assert KFAC(Outer(), nn.MSELoss(), unsupported="first_order").step(x, y)["accepted"]
