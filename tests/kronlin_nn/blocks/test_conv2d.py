import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

from kronlin_nn import KFAC, kfac_factors
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

FISHERS = {"exact": "type-2", "empirical": "empirical"}


def _cnn(seed=0):
    """Stride, padding (numbers and 'same'), dilation, bias and no bias, then a linear layer."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(3, 4, 3, padding="same", dilation=2, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 4),
    ).double()


def _targets(kind, n, d, g):
    if kind == "mse":
        return torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "bce":
        return torch.rand(n, d, generator=g, dtype=torch.float64).round()
    return torch.randint(0, d, (n,), generator=g)


def _layer_matrix(m, v):
    """A vector in torch's parameter order (W then b) as the block's [W.reshape(d_out, -1) | b]."""
    n_w = m.weight.numel()
    V = v[:n_w].reshape(m.weight.shape[0], -1)
    return torch.cat([V, v[n_w:, None]], 1) if m.bias is not None else V


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_conv_and_linear_factors_match_curvlinops(kind, reduction, fisher):
    """vᵀ F̃ v per layer against curvlinops' KFACLinearOperator (K-FAC-expand, homogeneous bias)."""
    model, g = _cnn(), torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 5, 5, generator=g, dtype=torch.float64)
    y = _targets(kind, 6, 4, g)
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    factors = kfac_factors(model, loss_fn, x, y, fisher=fisher)
    for m in (model[0], model[2], model[5]):
        params = [p for p in (m.weight, m.bias) if p is not None]
        reference = KFACLinearOperator(model, loss_fn, params, [(x, y)], fisher_type=FISHERS[fisher],
                                       separate_weight_and_bias=False, check_deterministic=False)
        for _ in range(2):
            v = torch.randn(reference.shape[1], generator=g, dtype=torch.float64)
            expected = v @ (reference @ v)
            got = kron_quadratic_form(*factors[m], _layer_matrix(m, v))
            assert abs(got - expected) <= 1e-6 * abs(expected)


@pytest.mark.parametrize("conv", [
    dict(padding=1, padding_mode="reflect"),
    dict(padding=1, padding_mode="circular", bias=False),
    dict(padding="same", padding_mode="replicate"),
    dict(padding="same"),  # an even kernel: asymmetric zero padding
], ids=["reflect", "circular", "replicate-same", "zeros-same-even-kernel"])
def test_factors_equal_the_exact_ggn_where_kfc_is_exact(conv):
    """A convolution read by a squared loss at every output: G is 2I at every location, so the
    K-FAC-expand block equals the exact GGN block, for every padding mode (the patches' test)."""
    torch.manual_seed(0)
    kernel = 2 if conv.get("padding") == "same" and "padding_mode" not in conv else 3
    layer = nn.Conv2d(2, 3, kernel, dilation=1, **conv).double()
    model = nn.Sequential(layer, nn.Flatten())
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    y = torch.randn_like(model_outputs(model, x))
    A, G = kfac_factors(model, nn.MSELoss(), x, y, fisher="exact")[layer]
    J = parameter_jacobians(model, x)
    K = kronecker_jacobian(J["0.weight"], J.get("0.bias"))
    torch.testing.assert_close(torch.kron(G, A), exact_fisher(K, "mse", "mean", model_outputs(model, x)),
                               rtol=1e-10, atol=1e-12)


def test_tangent_forward_matches_the_dense_jacobian():
    model = _cnn()
    blocks = model_blocks(model)
    layout = ParameterLayout(blocks)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 5, 5, generator=g, dtype=torch.float64)
    U = torch.randn(3, layout.size, generator=g, dtype=torch.float64)
    _, calls = forward_recorded(model, [b.module for b in blocks], x)
    J = parameter_jacobians(model, x)
    dense = torch.cat([kronecker_jacobian(J[f"{i}.weight"], J.get(f"{i}.bias")) for i in (0, 2, 5)], 2)
    torch.testing.assert_close(cached_output_jvps(model, blocks, calls, x, layout.unstack(U)),
                               torch.einsum("ndp,kp->knd", dense, U))


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"model\.0: .*expected groups=1, got groups=2"):
        model_blocks(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)))
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"model\.0: K-FAC expects Conv2d inputs of shape \(n, C, H, W\)"):
        KFAC(model, nn.MSELoss()).step(torch.randn(2, 5, 5), torch.randn(27))
