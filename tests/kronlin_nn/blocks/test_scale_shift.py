import pytest
import torch
from torch import nn

from kronlin_nn import KFAC, kfac_factors
from kronlin_nn.blocks import ScaleShiftBlock, model_blocks
from kronlin_nn.capture import forward_recorded
from kronlin_nn.layout import ParameterLayout
from kronlin_nn.quadratic import cached_output_jvps

from ..helpers import (
    LOSS_CLASSES,
    data,
    exact_fisher,
    layout_jacobian,
    model_outputs,
    parameter_jacobians,
)


def _model(norm):
    torch.manual_seed(0)
    if norm == "layer_norm_2d":  # normalized over two trailing dimensions
        body = [nn.Linear(3, 6), nn.Unflatten(1, (2, 3)), nn.LayerNorm((2, 3)), nn.Flatten()]
    elif norm in ("group_norm", "batch_norm"):
        layer = nn.GroupNorm(2, 4) if norm == "group_norm" else nn.BatchNorm2d(4)
        body = [nn.Linear(3, 16), nn.Unflatten(1, (4, 2, 2)), layer, nn.Flatten(), nn.Linear(16, 6)]
    else:
        layer = {"layer_norm": nn.LayerNorm(6), "layer_norm_no_bias": nn.LayerNorm(6, bias=False),
                 "rms_norm": nn.RMSNorm(6)}[norm]
        body = [nn.Linear(3, 6), layer]
    model = nn.Sequential(*body, nn.Tanh(), nn.Linear(6, 3)).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # eval mode, with non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.eval()
        if hasattr(m, "weight") and not isinstance(m, nn.Linear):
            with torch.no_grad():  # scales and shifts away from their initial 1 and 0
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.5, 0.5)
    return model


NORMS = ["layer_norm", "layer_norm_no_bias", "layer_norm_2d", "rms_norm", "group_norm", "batch_norm"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
def test_diagonal_equals_the_exact_fisher_diagonal(norm, kind):
    """Every case's gradient in closed form, so the block is the diagonal of the exact Fisher."""
    model = _model(norm)
    x, y = data(kind, 5, 3, 3)
    factors = kfac_factors(model, LOSS_CLASSES[kind](), x, y, fisher="exact")
    J, z = parameter_jacobians(model, x), model_outputs(model, x)
    (block,) = [b for b in model_blocks(model) if isinstance(b, ScaleShiftBlock)]
    diagonals = factors[block.module].diagonals
    assert sorted(diagonals) == sorted(block.param_names)
    for name, d in diagonals.items():
        dense = exact_fisher(J[name].reshape(5, 3, -1), kind, "mean", z).diagonal()
        torch.testing.assert_close(d, dense.reshape(d.shape), rtol=1e-10, atol=1e-14)


def test_positions_of_a_sequence_are_summed_per_case():
    """LayerNorm on (n, L, d): a case's gradient sums over its positions before squaring."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    diagonals = kfac_factors(model, nn.MSELoss(), x, y, fisher="exact")[model[1]].diagonals
    J, z = parameter_jacobians(model, x), model_outputs(model, x)
    for name, d in diagonals.items():
        torch.testing.assert_close(d, exact_fisher(J[name].reshape(4, 10, -1), "mse", "mean", z).diagonal())


@pytest.mark.parametrize("norm", NORMS)
def test_tangent_forward_matches_the_dense_jacobian(norm):
    model = _model(norm)
    blocks = model_blocks(model)
    layout = ParameterLayout(blocks)
    x, _ = data("mse", 5, 3, 3)
    U = torch.randn(3, layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, calls = forward_recorded(model, [b.module for b in blocks], x)
    torch.testing.assert_close(cached_output_jvps(model, blocks, calls, x, layout.unstack(U)),
                               torch.einsum("ndp,kp->knd", layout_jacobian(model, blocks, x), U))


def test_batch_norm_in_training_mode_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    message = r"model\.1: BatchNorm1d in training mode .* couples the cases"
    with pytest.raises(ValueError, match=message):
        KFAC(model, nn.MSELoss())
    model.eval()
    opt = KFAC(model, nn.MSELoss())
    model.train()  # switched back after construction: refused at the next step
    x, y = data("mse", 8, 3, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        opt.step(x, y)
