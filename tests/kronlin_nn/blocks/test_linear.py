import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

from kronlin_nn import kfac_factors
from kronlin_nn.blocks import model_blocks
from kronlin_nn.capture import forward_recorded
from kronlin_nn.layout import ParameterLayout
from kronlin_nn.quadratic import cached_output_jvps

from ..helpers import (
    LOSS_CLASSES,
    exact_fisher,
    kron_quadratic_form,
    kronecker_jacobian,
    model_outputs,
    parameter_jacobians,
)


class Siamese(nn.Module):
    """One linear layer called twice, on the two halves of the input; both outputs are kept."""

    def __init__(self, d=3, d_out=2, bias=True):
        super().__init__()
        self.shared = nn.Linear(d, d_out, bias=bias)
        self.d = d

    def forward(self, x):
        return torch.cat([self.shared(x[:, : self.d]), self.shared(x[:, self.d:])], 1)


def _sequence_net(act=nn.Tanh):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("kind", ["mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher", [("exact", "type-2"), ("empirical", "empirical")])
def test_sequence_inputs_match_curvlinops_kfac_expand(kind, reduction, fisher):
    """(batch, sequence, features) inputs, a loss term per position: curvlinops' K-FAC-expand."""
    model, g = _sequence_net(), torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 5, 2, generator=g, dtype=torch.float64)
    if kind == "bce":
        y = (y > 0).double()
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    factors = kfac_factors(model, loss_fn, x, y, fisher=fisher[0])
    for m in (model[0], model[2]):
        reference = KFACLinearOperator(model, loss_fn, [m.weight, m.bias], [(x, y)],
                                       fisher_type=fisher[1], separate_weight_and_bias=False,
                                       check_deterministic=False)
        v = torch.randn(reference.shape[1], generator=g, dtype=torch.float64)
        V = torch.cat([v[: m.weight.numel()].reshape(m.weight.shape), v[m.weight.numel():, None]], 1)
        expected = v @ (reference @ v)
        assert abs(kron_quadratic_form(*factors[m], V) - expected) <= 1e-6 * abs(expected)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("model", ["sequence", "called twice"])
def test_weight_sharing_is_exact_for_deep_linear_networks(model, reduction):
    """K-FAC-expand equals the exact GGN block where it is exact (Eschenhagen et al. 2023): a deep
    linear network with a squared loss at every location, so G is the same at every location."""
    torch.manual_seed(0)
    if model == "sequence":
        net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False)).double()
        x = torch.randn(5, 4, 3, dtype=torch.float64)
        layers = {"0": net[0], "1": net[1]}
    else:
        net = Siamese().double()
        x = torch.randn(5, 6, dtype=torch.float64)
        layers = {"shared": net.shared}
    z = model_outputs(net, x)
    y = torch.randn_like(net(x))
    factors = kfac_factors(net, nn.MSELoss(reduction=reduction), x, y, fisher="exact")
    J = parameter_jacobians(net, x)
    for name, m in layers.items():
        K = kronecker_jacobian(J[f"{name}.weight"], J.get(f"{name}.bias"))
        A, G = factors[m]
        torch.testing.assert_close(torch.kron(G, A), exact_fisher(K, "mse", reduction, z),
                                   rtol=1e-10, atol=1e-12)


def test_weight_sharing_with_a_nonlinearity_is_kfac_expand():
    """Not exact any more, but the factors are the documented expand ones: means over all calls."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double()
    shared = net[0]
    model = nn.Sequential(net, net)  # the same layer called twice, the second on the first's output
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    A, G = kfac_factors(model, nn.MSELoss(reduction="sum"), x, y, fisher="empirical")[shared]
    inputs = [x, torch.tanh(shared(x)).detach()]
    a = torch.cat([torch.cat([i, torch.ones(4, 1, dtype=x.dtype)], 1) for i in inputs])
    torch.testing.assert_close(A, a.T @ a / 8)
    outs = []
    handle = shared.register_forward_hook(lambda m, args, out: outs.append(out) or out.retain_grad())
    nn.MSELoss(reduction="sum")(model(x), y).backward()
    handle.remove()
    per_case = [o.grad for o in outs]  # sum reduction: κ/n = 1, G = Σ over calls and cases
    torch.testing.assert_close(G, sum(g.T @ g for g in per_case))


def test_tangent_forward_of_sequences_and_repeated_calls_matches_the_dense_jacobian():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), shared, nn.Tanh(), shared,
                          nn.Linear(4, 2, bias=False)).double()
    blocks = model_blocks(model)
    layout = ParameterLayout(blocks)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    U = torch.randn(3, layout.size, dtype=torch.float64)
    _, calls = forward_recorded(model, [b.module for b in blocks], x)
    J = parameter_jacobians(model, x)
    dense = torch.cat([kronecker_jacobian(J[f"{i}.weight"], J.get(f"{i}.bias")) for i in ("0", "2", "5")],
                      2)
    torch.testing.assert_close(cached_output_jvps(model, blocks, calls, x, layout.unstack(U)),
                               torch.einsum("ndp,kp->knd", dense, U))
