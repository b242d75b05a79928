import math

import pytest
import torch
from torch import nn

from kronlin_nn.losses import predictive_distribution

from .helpers import LOSS_CLASSES
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
    _assert_within_standard_errors(g, torch.zeros(2, D, dtype=torch.float64))
    _assert_within_standard_errors(torch.einsum("rni,rnj->rnij", g, g), dense_fisher(kind, z[:2]))


def _assert_within_standard_errors(samples, expected, k=5.0):
    """Each sample mean within ``k`` standard errors of its expectation (entrywise).

    ``k = 5``: a correct estimator fails an entry with probability < 1e-6 (the seeds are fixed,
    so it either always passes or never). The standard errors here are 0.001–0.005, against
    entries of F_R from 0.025 to 2: a wrong moment of that size cannot hide.
    """
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    bound = k * se + 1e-12 * expected.abs().max()  # zero-variance entries: exact up to rounding
    assert ((mean - expected).abs() <= bound).all(), ((mean - expected).abs() / se).max()


def _draws(kind, z, seed):
    """The documented sampling rule of each distribution, from the same generator's draws."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mse":  # z + ε/√2, ε ~ N(0, I)
        return z + torch.randn(z.shape, generator=g, dtype=z.dtype) / math.sqrt(2)
    u = torch.rand(z.shape, generator=g, dtype=z.dtype)
    if kind == "bce":  # u < σ(z), u ~ U(0, 1)
        return (u < torch.sigmoid(z)).to(z.dtype)
    return torch.argmax(z - torch.log(-torch.log(u)), dim=1)  # Gumbel-max


@pytest.mark.parametrize("kind", LOSSES)
def test_sampled_targets_follow_the_documented_rule_in_the_outputs_dtype(kind):
    """The moments above cannot see a sign flip of symmetric noise or draws in another dtype."""
    loss_fn, z, _ = make(kind)
    y = predictive_distribution(loss_fn).sample_targets(z, torch.Generator().manual_seed(5))
    expected = _draws(kind, z, 5)
    assert y.dtype == expected.dtype
    torch.testing.assert_close(y, expected, rtol=1e-15, atol=1e-15)  # float32 draws: 1e-8


def test_probability_targets_for_cross_entropy():
    loss_fn, z, y = make("ce")
    probs = nn.functional.one_hot(y, D).double()
    dist = predictive_distribution(loss_fn)
    torch.testing.assert_close(dist.output_grad(z, probs), dist.output_grad(z, y))


def test_rejects_unsupported_losses():
    with pytest.raises(TypeError, match="loss_fn: expected the loss module"):
        predictive_distribution(nn.L1Loss())
    with pytest.raises(TypeError, match="'cross_entropy'.*nn.CrossEntropyLoss"):
        predictive_distribution(nn.functional.cross_entropy)
    with pytest.raises(ValueError, match="reduction"):
        predictive_distribution(nn.MSELoss(reduction="none"))


class _Renamed(nn.CrossEntropyLoss):
    """A subclass that keeps the forward: it is an nn.CrossEntropyLoss."""


class _Focal(nn.CrossEntropyLoss):
    def forward(self, z, y):
        return super().forward(z, y) ** 2


def test_a_loss_subclass_is_accepted_unless_it_overrides_forward():
    assert predictive_distribution(_Renamed(reduction="sum")).reduction == "sum"
    with pytest.raises(TypeError, match="_Focal overrides the forward of nn.CrossEntropyLoss"):
        predictive_distribution(_Focal())


# -- options: the loss's own Hessian and gradient, densely -------------------------------------
C = D  # classes
CLASS_WEIGHT = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
OUTPUT_WEIGHT = torch.tensor([1.0, 0.25, 2.0, 0.5], dtype=torch.float64)
POS_WEIGHT = torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64)
OPTIONS = {
    "ce-ignore": ("ce", dict(ignore_index=-100)),
    "ce-ignore-7": ("ce", dict(ignore_index=7)),
    "ce-weight": ("ce", dict(weight=CLASS_WEIGHT)),
    "ce-smoothing": ("ce", dict(label_smoothing=0.2)),
    "ce-smoothing-whole": ("ce", dict(label_smoothing=1.0)),  # uniform targets: the edge case
    "ce-weight-smoothing-ignore": ("ce", dict(weight=CLASS_WEIGHT, label_smoothing=0.3)),
    "ce-probabilities": ("ce-probs", dict(weight=CLASS_WEIGHT, label_smoothing=0.1)),
    "ce-probabilities-whole": ("ce-probs", dict(weight=CLASS_WEIGHT, label_smoothing=1.0)),
    "bce-weight": ("bce", dict(weight=OUTPUT_WEIGHT)),
    "bce-pos-weight": ("bce", dict(pos_weight=POS_WEIGHT)),
    "bce-both-soft": ("bce-soft", dict(weight=OUTPUT_WEIGHT[None], pos_weight=POS_WEIGHT)),
}


def _with_options(name, reduction):
    kind, options = OPTIONS[name]
    loss_fn = LOSS_CLASSES[kind.split("-")[0]](reduction=reduction, **options)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(N, D, generator=g, dtype=torch.float64)
    if kind == "ce":
        y = torch.randint(0, C, (N,), generator=g)
        y[[1, 4]] = options.get("ignore_index", -100)  # ignored cases (if the loss ignores any)
    elif kind == "ce-probs":
        y = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    elif kind == "bce":
        y = torch.rand(N, D, generator=g, dtype=torch.float64).round()
    else:
        y = torch.rand(N, D, generator=g, dtype=torch.float64)
    return loss_fn, z, y


def _model_curvature(dist, z, y):
    """(κ/N) Σ_n diag(r_n) F_R,n diag(r_n) with r the weights' output roots, (N·D, N·D)."""
    r = dist.weights(y, N, z.dtype).outputs
    r = torch.ones(N, D, dtype=z.dtype) if r is None else r.expand(N, D)
    B = dist.fisher_sqrt(z) * r[None]  # (D, N, D): columns of diag(r_n) B_n
    per_case = torch.einsum("kni,knj->nij", B, B)
    kappa = dist.scale(N, D) * N
    return torch.block_diag(*(kappa / N * per_case))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", OPTIONS)
def test_options_give_the_loss_s_own_hessian(name, reduction):
    """The weighted output curvature equals the loss's Hessian w.r.t. the outputs (dense)."""
    loss_fn, z, y = _with_options(name, reduction)
    dist = predictive_distribution(loss_fn)
    hessian = torch.func.hessian(lambda t: loss_fn(t, y))(z).reshape(N * D, N * D)
    torch.testing.assert_close(_model_curvature(dist, z, y), hessian, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["ce-ignore", "ce-smoothing", "ce-smoothing-whole", "ce-probabilities"])
def test_empirical_vectors_are_the_per_case_gradients_of_the_loss(name, reduction):
    loss_fn, z, y = _with_options(name, reduction)
    if name == "ce-probabilities":
        loss_fn.weight = None  # the empirical Fisher of a weighted loss is refused
    dist = predictive_distribution(loss_fn)
    (grad,) = torch.autograd.grad(loss_fn(z.requires_grad_(), y), z)
    r = dist.weights(y, N, z.dtype).outputs
    kappa = dist.scale(N, D) * N
    torch.testing.assert_close(grad, kappa / N * r**2 * dist.data_grad(z.detach(), y))


def test_sub_batch_weights_are_a_weighted_mean_scaled_to_the_batch():
    loss_fn, _, y = _with_options("ce-weight-smoothing-ignore", "sum")
    dist = predictive_distribution(loss_fn)
    cases = dist.case_weights(y, torch.float64)
    w = dist.weights(y, 3, torch.float64)
    torch.testing.assert_close(w.inputs.mean(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(w.inputs / w.inputs.sum(), cases.curvature[:3] / cases.curvature[:3].sum())
    # κ/n Σ_{i<n} w_i t  =  Σ_N ρ_n: the sub-batch's weights sum to the batch's total curvature weight
    kappa = dist.scale(N, D) * N
    torch.testing.assert_close(kappa / 3 * (w.outputs[:, 0] ** 2).sum(), cases.curvature.sum())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["ce-weight-smoothing-ignore", "ce-probabilities", "bce-pos-weight"])
def test_a_shards_weights_from_the_unions_sums_are_the_unions_weights_of_its_cases(name, reduction):
    """Shards ``y[r::2]`` of the batch: their sums add to the batch's, and from them each shard's
    weights of its part of a sub-batch are the batch's weights of those cases."""
    loss_fn, _, y = _with_options(name, reduction)
    dist = predictive_distribution(loss_fn)
    n = 5  # the batch's sub-batch y[:5]: y[0:5:2] (3 cases) of shard 0, y[1:5:2] (2) of shard 1
    whole = dist.weights(y, n, torch.float64)
    shards = [y[r::2] for r in range(2)]
    parts = [len(range(r, n, 2)) for r in range(2)]
    sums = [dist.weight_sums(s, (k,), torch.float64) for s, k in zip(shards, parts, strict=True)]
    if whole.inputs is None:  # no case weights: nothing to sum, nothing to normalize
        assert sums == [None, None]
        return
    total = sums[0] + sums[1]
    for r, (shard, k) in enumerate(zip(shards, parts, strict=True)):
        w = dist.weights(shard, k, torch.float64, (n, total[0], total[1], total[2]))
        torch.testing.assert_close(w.inputs, whole.inputs[r:n:2])
        torch.testing.assert_close(w.outputs, whole.outputs[r:n:2])


def test_options_that_cannot_enter_exactly_are_refused_by_name():
    with pytest.raises(ValueError, match="fisher='empirical' with loss_fn.weight"):
        predictive_distribution(nn.CrossEntropyLoss(weight=CLASS_WEIGHT)).check_fisher("empirical")
    with pytest.raises(ValueError, match="fisher='empirical' with loss_fn.pos_weight"):
        predictive_distribution(nn.BCEWithLogitsLoss(pos_weight=POS_WEIGHT)).check_fisher(
            "empirical")
    dist = predictive_distribution(nn.BCEWithLogitsLoss(weight=torch.ones(N, D)))
    with pytest.raises(ValueError, match=r"^loss_fn.weight: expected weights broadcast over the "
                       r"cases \(shape \(4,\) or broadcastable to it\), got shape \(7, 4\), which "
                       r"weighs cases by their position in one batch of 7; K-FAC evaluates"):
        dist.check_output(torch.zeros(N, D))
    predictive_distribution(nn.BCEWithLogitsLoss(weight=torch.ones(1, D))).check_output(
        torch.zeros(N, D))
