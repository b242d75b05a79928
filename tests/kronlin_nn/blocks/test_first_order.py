import math

import torch
from torch import nn

from kronlin_nn import KFAC, kfac_factors
from kronlin_nn.blocks import FirstOrderBlock, model_blocks

from ..helpers import data


def test_the_block_is_the_damping_alone():
    (block,) = model_blocks(nn.PReLU(3), "first_order")
    assert isinstance(block, FirstOrderBlock) and not block.recorded and block.refresh_cost == 0
    gammas = torch.tensor([0.5, 2.0], dtype=torch.float64)
    candidates = block.inverses([], 7.0, gammas, "trace")
    assert candidates.ok.tolist() == [True, True]
    torch.testing.assert_close(candidates.build(1).to_dense(), torch.eye(3, dtype=torch.float64) / 4)
    op = block.inverse_operator(block.inverse_tensors(candidates.build(0)))
    torch.testing.assert_close(op.to_dense(), torch.eye(3, dtype=torch.float64) * 4)


def test_its_update_is_a_gradient_step_and_it_has_no_factors():
    """Fixed α, no momentum, fixed λ: the PReLU slope moves by −α (∇loss + ηθ)/(λ + η)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)).double()
    x, y = data("mse", 16, 3, 2)
    lam, eta, alpha = 0.3, 1e-3, 0.1
    slope = model[1].weight.detach().clone()
    grad = torch.autograd.grad(nn.MSELoss()(model(x), y), model[1].weight)[0]
    opt = KFAC(model, nn.MSELoss(), lr=alpha, momentum=False, damping=lam, adapt_damping=False,
               weight_decay=eta, unsupported="first_order")
    assert opt.step(x, y)["accepted"]
    expected = slope - alpha * (grad + eta * slope) / (math.sqrt(lam + eta) ** 2)
    torch.testing.assert_close(model[1].weight.detach(), expected)
    assert model[1] not in kfac_factors(model, nn.MSELoss(), x, y, unsupported="first_order")
