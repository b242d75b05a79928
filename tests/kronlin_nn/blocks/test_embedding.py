import pytest
import torch
from torch import nn

from kronlin_nn import KFAC, kfac_factors
from kronlin_nn.blocks import model_blocks
from kronlin_nn.capture import forward_recorded
from kronlin_nn.layout import ParameterLayout
from kronlin_nn.quadratic import cached_output_jvps

from ..helpers import exact_fisher, model_outputs, parameter_jacobians

V, D = 7, 3


def _tokens(n, length, seed=0):
    return torch.randint(0, V, (n, length), generator=torch.Generator().manual_seed(seed))


class Bag(nn.Module):
    """Mean of the token embeddings, then a linear classifier."""

    def __init__(self):
        super().__init__()
        self.embed, self.out = nn.Embedding(V, D), nn.Linear(D, 2)

    def forward(self, tokens):
        return self.out(self.embed(tokens).mean(1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_factors_equal_the_exact_ggn_with_a_squared_loss_per_token(reduction):
    """Embeddings read by a squared loss at every position: the block diag(f) ⊗ G is exact."""
    torch.manual_seed(0)
    model = nn.Embedding(V, D).double()
    tokens = _tokens(4, 5)
    y = torch.randn(4, 5, D, dtype=torch.float64)
    f, G = kfac_factors(model, nn.MSELoss(reduction=reduction), tokens, y, fisher="exact")[model]
    assert f.shape == (V,)
    torch.testing.assert_close(f, torch.bincount(tokens.reshape(-1), minlength=V).double() / 20)
    J = parameter_jacobians(model, tokens)["weight"].reshape(4, 5 * D, V * D)
    dense = exact_fisher(J, "mse", reduction, model_outputs(model, tokens))
    torch.testing.assert_close(torch.kron(torch.diag(f), G), dense, rtol=1e-10, atol=1e-12)


def test_bag_of_embeddings_factors_are_frequencies_and_output_gradient_moments():
    torch.manual_seed(0)
    model = Bag().double()
    tokens, y = _tokens(6, 4), torch.randint(0, 2, (6,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    f, G = kfac_factors(model, loss_fn, tokens, y, fisher="empirical")["embed"]
    torch.testing.assert_close(f, torch.bincount(tokens.reshape(-1), minlength=V).double() / 24)
    outs = []
    handle = model.embed.register_forward_hook(lambda m, a, out: outs.append(out) or out.retain_grad())
    loss_fn(model(tokens), y).backward()
    handle.remove()
    g = outs[0].grad.reshape(-1, D)  # per case and position (sum reduction: κ/n = 1)
    torch.testing.assert_close(G, g.T @ g)


def test_tangent_forward_matches_the_dense_jacobian():
    torch.manual_seed(0)
    model = Bag().double()
    blocks = model_blocks(model)
    layout = ParameterLayout(blocks)
    tokens = _tokens(5, 4)
    U = torch.randn(3, layout.size, dtype=torch.float64)
    _, calls = forward_recorded(model, [b.module for b in blocks], tokens)
    J = parameter_jacobians(model, tokens)
    dense = torch.cat([J["embed.weight"].reshape(5, 2, -1),
                       torch.cat([J["out.weight"], J["out.bias"][..., None]], -1).reshape(5, 2, -1)], 2)
    torch.testing.assert_close(cached_output_jvps(model, blocks, calls, tokens, layout.unstack(U)),
                               torch.einsum("ndp,kp->knd", dense, U))


@pytest.mark.parametrize(("option", "value"), [("padding_idx", 0), ("max_norm", 1.0),
                                               ("scale_grad_by_freq", True), ("sparse", True)])
def test_options_that_change_the_forward_or_the_gradient_are_refused(option, value):
    model = nn.Sequential(nn.Embedding(V, D, **{option: value}), nn.Flatten(), nn.Linear(2 * D, 2))
    with pytest.raises(ValueError, match=rf"model\.0: nn\.Embedding option {option}: expected"):
        KFAC(model, nn.CrossEntropyLoss())
