import pytest
import torch
from torch import nn

from kronlin_nn.losses import predictive_distribution

from .helpers import output_fisher as dense_fisher

N, D = 7, 4
LOSSES = ["mse", "bce", "ce"]


def make(kind: str, reduction: str = "mean"):
    loss_fn = {"mse": nn.MSELoss, "bce": nn.BCEWithLogitsLoss, "ce": nn.CrossEntropyLoss}[kind](
        reduction=reduction
    )
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, D, generator=g, dtype=torch.float64)
    if kind == "mse":
        y = torch.randn(N, D, generator=g, dtype=torch.float64)
    elif kind == "bce":
        y = torch.rand(N, D, generator=g, dtype=torch.float64).round()
    else:
        y = torch.randint(0, D, (N,), generator=g)
    return loss_fn, z, y


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_output_grad_and_scale_match_the_loss(kind, reduction):
    loss_fn, z, y = make(kind, reduction)
    dist = predictive_distribution(loss_fn)
    z = z.requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(z, y), z)
    torch.testing.assert_close(grad, dist.scale(N, D) * dist.output_grad(z.detach(), y))


@pytest.mark.parametrize("kind", LOSSES)
def test_fisher_sqrt_squares_to_output_fisher(kind):
    loss_fn, z, _ = make(kind)
    B = predictive_distribution(loss_fn).fisher_sqrt(z)  # (D, n, D): column k of B_n
    BBt = torch.einsum("kni,knj->nij", B, B)
    torch.testing.assert_close(BBt, dense_fisher(kind, z))


@pytest.mark.parametrize("kind", LOSSES)
def test_fisher_gram_matches_dense(kind):
    loss_fn, z, _ = make(kind)
    Jt = torch.randn(3, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gram = predictive_distribution(loss_fn).fisher_gram(z, Jt)
    expected = torch.einsum("kni,nij,lnj->kl", Jt, dense_fisher(kind, z), Jt)
    torch.testing.assert_close(gram, expected)


@pytest.mark.parametrize("kind", LOSSES)
def test_sampled_targets_have_fisher_moments(kind):
    """Spec §13: E[g_ℓ] = 0 and E[g_ℓ g_ℓᵀ] = F_R for targets drawn from the model."""
    loss_fn, z, _ = make(kind)
    dist = predictive_distribution(loss_fn)
    reps = 40_000
    z_rep = z[:2].repeat(reps, 1)
    g = dist.output_grad(z_rep, dist.sample_targets(z_rep, torch.Generator().manual_seed(1)))
    g = g.reshape(reps, 2, D)
    torch.testing.assert_close(g.mean(0), torch.zeros(2, D, dtype=torch.float64), atol=0.03, rtol=0)
    second = torch.einsum("rni,rnj->nij", g, g) / reps
    torch.testing.assert_close(second, dense_fisher(kind, z[:2]), atol=0.04, rtol=0)


def test_probability_targets_for_cross_entropy():
    loss_fn, z, y = make("ce")
    probs = nn.functional.one_hot(y, D).double()
    dist = predictive_distribution(loss_fn)
    torch.testing.assert_close(dist.output_grad(z, probs), dist.output_grad(z, y))


def test_rejects_unsupported_losses():
    with pytest.raises(TypeError, match="loss_fn: expected an instance of"):
        predictive_distribution(nn.L1Loss())
    with pytest.raises(ValueError, match="reduction"):
        predictive_distribution(nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="weight"):
        predictive_distribution(nn.CrossEntropyLoss(weight=torch.ones(3)))
    with pytest.raises(ValueError, match="pos_weight"):
        predictive_distribution(nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        predictive_distribution(nn.CrossEntropyLoss(label_smoothing=0.1))
