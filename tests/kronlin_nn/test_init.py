import pytest
import torch
from torch import nn

from kronlin_nn.init import _last_occurrences, sparse_init_


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rows_have_at_most_fan_in_nonzeros_and_biases_are_zero():
    model = nn.Sequential(nn.Linear(1000, 500), nn.Sigmoid(), nn.Linear(500, 30))
    sparse_init_(model, generator=_gen())
    for layer in (model[0], model[2]):
        nonzeros = (layer.weight != 0).sum(dim=1)
        assert nonzeros.max() <= 15 and nonzeros.min() >= 1
        assert torch.all(layer.bias == 0)


def test_indices_are_drawn_with_replacement():
    # 15 draws from 16 inputs with replacement hit 16·(1 − (15/16)^15) ≈ 9.9 distinct inputs
    # on average; without replacement it would be exactly 15.
    layer = nn.Linear(16, 4000)
    sparse_init_(layer, generator=_gen())
    mean_nonzeros = (layer.weight != 0).sum(dim=1).float().mean().item()
    assert mean_nonzeros == pytest.approx(16 * (1 - (15 / 16) ** 15), rel=0.02)
    # with a wide input layer duplicates are rare: 1000·(1 − (999/1000)^15) ≈ 14.9
    wide = nn.Linear(1000, 2000)
    sparse_init_(wide, generator=_gen())
    assert (wide.weight != 0).sum(dim=1).float().mean().item() == pytest.approx(14.895, rel=0.01)


def test_narrow_inputs_cap_the_nonzeros():
    layer = nn.Linear(6, 25)
    sparse_init_(layer, generator=_gen())
    assert (layer.weight != 0).sum(dim=1).max() <= 6


@pytest.mark.parametrize("coeff", [1.0, 0.5])
def test_nonzero_values_are_standard_normal_times_coeff(coeff):
    layer = nn.Linear(784, 4000)
    sparse_init_(layer, scale=coeff, generator=_gen(1))
    values = layer.weight[layer.weight != 0]
    assert values.numel() > 55000
    assert values.mean().item() == pytest.approx(0.0, abs=0.02 * coeff)
    assert values.std().item() == pytest.approx(coeff, rel=0.02)
    # Gaussian, not e.g. uniform: the fourth standardized moment is 3
    assert (values / values.std()).pow(4).mean().item() == pytest.approx(3.0, rel=0.05)


def test_per_layer_scales_and_their_validation():
    model = nn.Sequential(nn.Linear(500, 3000), nn.Tanh(), nn.Linear(3000, 3000))
    sparse_init_(model, scale=[1.0, 0.1], generator=_gen())
    assert model[0].weight[model[0].weight != 0].std().item() == pytest.approx(1.0, rel=0.03)
    assert model[2].weight[model[2].weight != 0].std().item() == pytest.approx(0.1, rel=0.03)
    with pytest.raises(ValueError, match="scales"):
        sparse_init_(model, scale=[1.0])
    with pytest.raises(ValueError, match="fan_in"):
        sparse_init_(model, fan_in=0)


def test_seeded_generator_reproduces_across_dtypes():
    a = sparse_init_(nn.Linear(50, 40), generator=_gen(3))
    b = sparse_init_(nn.Linear(50, 40).double(), generator=_gen(3))
    c = sparse_init_(nn.Linear(50, 40), generator=_gen(4))
    assert torch.equal(a.weight, b.weight.float())
    assert not torch.equal(a.weight, c.weight)


def test_repeated_index_keeps_the_last_draw():
    keys = torch.tensor([3, 1, 3, 2, 1, 3])
    assert sorted(_last_occurrences(keys).tolist()) == [3, 4, 5]


def test_returns_the_model():
    model = nn.Linear(3, 3)
    assert sparse_init_(model, generator=_gen()) is model
