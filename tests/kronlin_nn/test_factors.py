import pytest
import torch
from torch import nn

from kronlin_nn import kfac_factors
from kronlin_nn.capture import homogeneous

from .helpers import (
    LOSS_CLASSES,
    RepeatColumns,
    data,
    dense_ggn,
    layer_slices,
    linears,
    output_fisher,
    output_grad_jacobians,
    reduction_scale,
    tiny_mlp,
)

SIZES = [3, 4, 5, 3]


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [True, False])
def test_single_input_exact_factors_equal_exact_ggn_blocks(kind, reduction, bias):
    model = tiny_mlp(SIZES, bias=bias)
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    x, y = data(kind, 1, SIZES[0], SIZES[-1])
    factors = kfac_factors(model, loss_fn, x, y, fisher="exact")
    ggn = dense_ggn(model, kind, reduction, x)
    for m, sl in zip(linears(model), layer_slices(model), strict=True):
        A, G = factors[m]
        assert A.shape[0] == m.in_features + bias
        torch.testing.assert_close(torch.kron(G, A), ggn[sl, sl], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_several_inputs_exact_factors_are_the_kronecker_factored_expectation(kind, reduction):
    model = tiny_mlp(SIZES)
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    n = 6
    x, y = data(kind, n, SIZES[0], SIZES[-1])
    factors = kfac_factors(model, loss_fn, x, y, fisher="exact")
    with torch.no_grad():
        z = model(x)
    s = reduction_scale(kind, reduction, n, z.shape[1])
    F_R = output_fisher(kind, z)
    inputs = _layer_inputs(model, x)
    for m, a, Js in zip(linears(model), inputs, output_grad_jacobians(model, x), strict=True):
        a_bar = homogeneous(a, True)
        A, G = factors[m]
        torch.testing.assert_close(A, a_bar.T @ a_bar / n)
        torch.testing.assert_close(G, s * torch.einsum("nia,nij,njb->ab", Js, F_R, Js))


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
def test_monte_carlo_factors_converge_to_exact(kind):
    model = tiny_mlp(SIZES)
    loss_fn = LOSS_CLASSES[kind]()
    x, y = data(kind, 3, SIZES[0], SIZES[-1])
    exact = kfac_factors(model, loss_fn, x, y, fisher="exact")
    errors = []
    for reps in (10, 4000):
        gen = torch.Generator().manual_seed(0)
        y_rep = y.repeat(reps, *([1] * (y.ndim - 1)))
        mc = kfac_factors(model, loss_fn, x.repeat(reps, 1), y_rep, fisher="mc", generator=gen)
        errors.append(max(
            (torch.linalg.norm(mc[m][1] - exact[m][1]) / torch.linalg.norm(exact[m][1])).item()
            for m in linears(model)
        ))
        for m in linears(model):  # A needs no sampling
            torch.testing.assert_close(mc[m][0], exact[m][0])
    assert errors[1] < 0.06
    assert errors[1] < errors[0] / 5


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
def test_empirical_factors_use_data_gradients(kind):
    model = tiny_mlp(SIZES)
    loss_fn = LOSS_CLASSES[kind](reduction="sum")
    n = 5
    x, y = data(kind, n, SIZES[0], SIZES[-1])
    factors = kfac_factors(model, loss_fn, x, y, fisher="empirical")
    per_case = _per_case_output_gradients(model, loss_fn, x, y)
    for m, g in zip(linears(model), per_case, strict=True):
        # sum reduction: κ = N, G = κ/N Σ g gᵀ = Σ g gᵀ
        torch.testing.assert_close(factors[m][1], g.T @ g)


def test_parameters_and_grads_untouched():
    model = tiny_mlp(SIZES)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data("mse", 4, SIZES[0], SIZES[-1])
    kfac_factors(model, nn.MSELoss(), x, y)
    for p, q in zip(model.parameters(), before, strict=True):
        assert p.grad is None
        assert torch.equal(p, q)


def test_mc_is_reproducible_with_a_generator():
    model = tiny_mlp(SIZES)
    x, y = data("ce", 8, SIZES[0], SIZES[-1])
    f1 = kfac_factors(model, nn.CrossEntropyLoss(), x, y, generator=torch.Generator().manual_seed(3))
    f2 = kfac_factors(model, nn.CrossEntropyLoss(), x, y, generator=torch.Generator().manual_seed(3))
    for m in linears(model):
        assert torch.equal(f1[m][1], f2[m][1])


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.used(x)


def test_errors_name_the_problem():
    x, y = data("mse", 4, 3, 3)
    with pytest.raises(ValueError, match=r"layers 1 \(Linear\) were not"):
        kfac_factors(_Unused().double(), nn.MSELoss(), x, y)
    with pytest.raises(ValueError, match="inputs of shape"):
        kfac_factors(nn.Linear(3, 3).double(), nn.MSELoss(), x[0], y[0])
    with pytest.raises(ValueError, match=r"model\.1\.weight: no curvature block covers this trainable parameter"):
        kfac_factors(nn.Sequential(nn.Linear(3, 3), nn.PReLU()).double(), nn.MSELoss(), x, y,
                     unsupported="error")
    with pytest.raises(ValueError, match="fisher"):
        kfac_factors(nn.Linear(3, 3).double(), nn.MSELoss(), x, y, fisher="true")


def _layer_inputs(model, x):
    inputs = []
    handles = [m.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach()))
               for m in linears(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return inputs


def _per_case_output_gradients(model, loss_fn, x, y):
    """∂ℓ_n/∂s_i per case via autograd on zero perturbations of every layer output."""
    layers = linears(model)
    es = [torch.zeros(x.shape[0], m.out_features, dtype=x.dtype, requires_grad=True)
          for m in layers]
    handles = [m.register_forward_hook(lambda mod, args, out, e=e: out + e)
               for m, e in zip(layers, es, strict=True)]
    loss = loss_fn(model(x), y)
    for h in handles:
        h.remove()
    return torch.autograd.grad(loss, es)


def test_factors_are_keyed_by_modules_and_names():
    model = tiny_mlp(SIZES)
    x, y = data("mse", 4, SIZES[0], SIZES[-1])
    factors = kfac_factors(model, nn.MSELoss(), x, y)
    assert list(factors) == linears(model) and len(factors) == 3
    assert factors["2"] is factors[model[2]] is factors["2.bias"]
    with pytest.raises(KeyError, match="'1': no curvature block of this model has that module or name"):
        factors["1"]  # the Tanh


# -- the loss's options: the same factors as the same objective without them --------------------
def _assert_same_factors(got, expected):
    assert list(got) == list(expected)
    for module in expected:
        a, b = got[module], expected[module]
        pairs = zip(a.diagonals.values(), b.diagonals.values(), strict=True) if hasattr(
            a, "diagonals") else zip(a, b, strict=True)
        for t, u in pairs:
            torch.testing.assert_close(t, u, rtol=1e-10, atol=1e-13)


def _block_zoo(kind):
    """Models with every block type, and their inputs."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    if kind == "mlp":  # linear, scale-shift (LayerNorm) and diagonal (PReLU) blocks
        model = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.PReLU(), nn.Linear(6, 4))
        x = torch.randn(9, 3, generator=g)
    elif kind == "embedding":
        model = nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Tanh(), nn.Linear(6, 4))
        x = torch.randint(0, 7, (9, 2), generator=g)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 4))
        x = torch.randn(9, 1, 3, 3, generator=g)
    return model.double(), x if not x.is_floating_point() else x.double()


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["mlp", "embedding", "conv"])
def test_ignored_cases_give_the_factors_of_the_valid_cases(kind, reduction, fisher):
    """CrossEntropyLoss(ignore_index): the factors of the valid cases alone, for every block type."""
    model, x = _block_zoo(kind)
    y = torch.randint(0, 4, (9,), generator=torch.Generator().manual_seed(5))
    y[[0, 3, 4]] = -100
    valid = y != -100
    masked = kfac_factors(model, nn.CrossEntropyLoss(reduction=reduction), x, y, fisher=fisher)
    alone = kfac_factors(model, nn.CrossEntropyLoss(reduction=reduction, ignore_index=-1),
                         x[valid], y[valid], fisher=fisher)
    _assert_same_factors(masked, alone)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["mlp", "embedding", "conv"])
def test_integer_class_weights_give_the_factors_of_repeated_cases(kind, reduction):
    """CrossEntropyLoss(weight=W) with integer W: each case counted W_y times, without weights."""
    model, x = _block_zoo(kind)
    W = torch.tensor([1.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=torch.Generator().manual_seed(6))
    y[2] = -100
    weighted = kfac_factors(model, nn.CrossEntropyLoss(weight=W, reduction=reduction), x, y,
                            fisher="exact")
    keep = y != -100
    repeats = W[y[keep]].long()
    repeated = kfac_factors(model, nn.CrossEntropyLoss(reduction=reduction),
                            x[keep].repeat_interleave(repeats, 0),
                            y[keep].repeat_interleave(repeats), fisher="exact")
    _assert_same_factors(weighted, repeated)


def test_integer_output_weights_give_the_factors_of_repeated_outputs():
    """BCEWithLogitsLoss(weight=w, reduction="sum") with integer w: each output counted w_j times."""
    model, x = _block_zoo("mlp")
    w = torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64)
    y = torch.rand(9, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64).round()
    weighted = kfac_factors(model, nn.BCEWithLogitsLoss(weight=w, reduction="sum"), x, y,
                            fisher="exact")
    twin = nn.Sequential(*model, RepeatColumns(w.long()))
    repeated = kfac_factors(twin, nn.BCEWithLogitsLoss(reduction="sum"), x,
                            y.repeat_interleave(w.long(), dim=1), fisher="exact")
    _assert_same_factors(weighted, repeated)
