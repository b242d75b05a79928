import pytest
import torch
from torch import nn

import kronlin
from kronlin_nn.layout import ParameterLayout


def _layers():
    torch.manual_seed(0)
    return [nn.Linear(3, 4).double(), nn.Linear(4, 2, bias=False).double()]


def test_pack_unpack_round_trip():
    layers = _layers()
    layout = ParameterLayout(layers)
    assert layout.shapes == [(4, 4), (2, 4)] and layout.size == 24
    flat = layout.flat_parameters()
    torch.testing.assert_close(flat[:16].view(4, 4), torch.cat([layers[0].weight,
                                                                 layers[0].bias[:, None]], 1))
    (W0, b0), (W1, b1) = layout.unpack(flat)
    assert torch.equal(W0, layers[0].weight) and torch.equal(b0, layers[0].bias)
    assert torch.equal(W1, layers[1].weight) and b1 is None
    rows = torch.stack([flat, 2 * flat])
    T0, T1 = layout.unstack(rows)
    assert T0.shape == (2, 4, 4) and T1.shape == (2, 2, 4)
    assert torch.equal(T0[1, :, :3], 2 * layers[0].weight) and torch.equal(T0[0, :, 3], layers[0].bias)


def test_add_updates_parameters_in_place():
    layers = _layers()
    layout = ParameterLayout(layers)
    before = layout.flat_parameters()
    layout.add_(torch.ones(layout.size, dtype=torch.float64))
    torch.testing.assert_close(layout.flat_parameters(), before + 1)


def test_kron_convention_of_the_layer_block():
    """Kron(G, A) on the row-major [W|b] is V ↦ G V A: the paper's (Ā ⊗ G) vec(V) = vec(G V Ā)."""
    g = torch.Generator().manual_seed(1)
    G, A, V = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(4, 4), (3, 3), (4, 3)])
    torch.testing.assert_close(kronlin.Kron(G, A) @ V.reshape(-1), (G @ V @ A.T).reshape(-1))


def test_any_block_geometry_and_refusal():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(2, 3, 2).double(), nn.LayerNorm(3).double()
    layout = ParameterLayout([conv, norm])
    assert layout.shapes == [(3, 9), (6,)] and layout.size == 33
    flat = layout.flat_parameters()
    torch.testing.assert_close(flat[:27].view(3, 9), torch.cat([conv.weight.reshape(3, 8),
                                                                 conv.bias[:, None]], 1))
    (W, b), (g, s) = layout.unpack(flat)
    assert torch.equal(W, conv.weight) and torch.equal(s, norm.bias)
    names = {id(p): n for n, p in [("w", conv.weight), ("b", conv.bias), ("g", norm.weight),
                                   ("s", norm.bias)]}
    rows = layout.named_tensors(torch.stack([flat, 2 * flat]), names)  # K = 2 stacked vectors
    assert rows["w"].shape == (2, 3, 2, 2, 2) and torch.equal(rows["g"][1], 2 * norm.weight)
    layout.copy_(2 * flat)
    torch.testing.assert_close(layout.flat_parameters(), 2 * flat)
    with pytest.raises(ValueError, match="Tanh has no registered curvature block"):
        ParameterLayout([nn.Tanh()])
