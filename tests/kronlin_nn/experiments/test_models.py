import pytest
import torch
from torch import nn

from kronlin_nn.experiments.models import ARCHITECTURES, autoencoder, reconstruction_error


@pytest.mark.parametrize(("problem", "count"), [("mnist", 2_837_314), ("curves", 842_340)])
def test_paper_parameter_counts(problem, count):
    # spec §10.1 table
    model = autoencoder(ARCHITECTURES[problem])
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("problem", sorted(ARCHITECTURES))
def test_logistic_hidden_units_linear_code_and_logit_outputs(problem):
    sizes = ARCHITECTURES[problem]
    model = autoencoder(sizes)
    code = sizes.index(min(sizes[1:-1]))
    kinds = [type(m) for m in model]
    linear_positions = [i for i, k in enumerate(kinds) if k is nn.Linear]
    assert len(linear_positions) == len(sizes) - 1
    for layer_number, position in enumerate(linear_positions, start=1):
        followed_by_sigmoid = position + 1 < len(kinds) and kinds[position + 1] is nn.Sigmoid
        assert followed_by_sigmoid == (layer_number not in (code, len(sizes) - 1))


def test_autoencoder_validation():
    with pytest.raises(ValueError):
        autoencoder([10, 5])
    with pytest.raises(ValueError):
        autoencoder([10, 5, 9])


def test_reconstruction_error_is_summed_over_pixels_and_averaged_over_cases():
    torch.manual_seed(0)
    model = autoencoder([6, 4, 2, 4, 6])
    x = torch.rand(25, 6)
    expected = ((torch.sigmoid(model(x)) - x) ** 2).sum(dim=1).mean().item()
    assert reconstruction_error(model, x) == pytest.approx(expected, rel=1e-6)
    assert reconstruction_error(model, x, chunk=4) == pytest.approx(expected, rel=1e-6)


def test_reconstruction_error_of_a_broken_network_is_inf():
    model = autoencoder([6, 4, 2, 4, 6])
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    assert reconstruction_error(model, torch.rand(3, 6)) == float("inf")
