import pytest
import torch
from torch import nn

from kronlin_nn.capture import check_chain, forward_recorded, homogeneous, supported_layers

from .helpers import SkipNet, tiny_mlp


class Reordered(nn.Module):
    """Registered in one order, called in another."""

    def __init__(self):
        super().__init__()
        self.second, self.first = nn.Linear(4, 2), nn.Linear(3, 4)

    def forward(self, x):
        return self.second(torch.sigmoid(self.first(x)))


def test_supported_layers_and_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    assert supported_layers(model) == [model[0], model[2]]
    model[0].requires_grad_(False)  # frozen layers are left alone
    assert supported_layers(model) == [model[2]]
    with pytest.raises(ValueError, match="at least one"):
        supported_layers(nn.Sequential(nn.Tanh()))
    frozen_bias = nn.Linear(3, 4)
    frozen_bias.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen bias"):
        supported_layers(frozen_bias)
    with pytest.raises(ValueError, match=r"model\.1\.weight"):
        supported_layers(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))


def test_records_in_call_order_and_chain_check():
    model = Reordered()
    layers = supported_layers(model)
    x = torch.randn(5, 3)
    z, calls = forward_recorded(model, layers, x)
    assert [c.layer for c in calls] == [1, 0]  # layer list index, in call order
    torch.testing.assert_close(calls[0].a, x)
    torch.testing.assert_close(calls[1].output(), z)
    check_chain(calls)
    mlp = tiny_mlp([3, 4, 5, 2])
    check_chain(forward_recorded(mlp, supported_layers(mlp), x.double())[1])


def test_skip_connections_are_not_a_chain():
    model = SkipNet()
    _, calls = forward_recorded(model, supported_layers(model), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"depends on layers \[0, 1\], expected \[1\]"):
        check_chain(calls)


def test_in_place_change_of_an_output_is_detected():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    _, calls = forward_recorded(model, supported_layers(model), torch.randn(5, 3))
    with pytest.raises(RuntimeError, match="in place"):
        calls[0].output()


def test_homogeneous_coordinate():
    a = torch.randn(4, 3)
    torch.testing.assert_close(homogeneous(a, True), torch.cat([a, torch.ones(4, 1)], 1))
    assert homogeneous(a, False) is a
