import copy

import pytest
import torch

from kronlin_nn.experiments.methods import METHODS, Setting, make_method
from kronlin_nn.experiments.models import autoencoder


def test_names_cover_the_cli_contract():
    assert {"kfac-blockdiag", "kfac-tridiag", "kfac-blockdiag-paper", "kfac-tridiag-paper",
            "kfac-blockdiag-nomomentum", "sgd"} <= set(METHODS)


def test_batch_sizes_scaled_to_the_embedded_subset():
    setting = Setting("mnist", 5000, 784, 0)
    kfac = make_method("kfac-blockdiag", setting)
    assert [kfac.batch_size(k) for k in (1, 500, 800)] == [250, 5000, 5000]
    assert kfac.settings["batch_schedule"] == {"first": 250, "total": 5000, "reach_at": 500}
    assert make_method("kfac-blockdiag-nomomentum", setting).batch_size(7) == 500
    assert make_method("sgd", setting, sgd_lr=0.01).batch_size(3) == 250


@pytest.mark.parametrize(("problem", "n", "first", "fixed", "sgd"), [
    ("mnist", 60000, 1000, 6000, 500),
    ("curves", 20000, 1000, 2000, 250),
])
def test_batch_sizes_on_the_full_sets_are_the_papers(problem, n, first, fixed, sgd):
    setting = Setting(problem, n, 784, 0)
    assert make_method("kfac-tridiag", setting).batch_size(1) == first
    assert make_method("kfac-tridiag-nomomentum", setting).batch_size(1) == fixed
    assert make_method("sgd", setting, sgd_lr=0.01).batch_size(1) == sgd


def test_kfac_runs_the_defaults_or_the_papers_recipe():
    setting = Setting("mnist", 5000, 784, 3)
    model = autoencoder([6, 4, 2, 4, 6])
    defaults = make_method("kfac-tridiag", setting)
    assert defaults.settings["kwargs"] == {"approx": "tridiag", "momentum": True, "seed": 3}
    assert defaults.settings["recipe"] == "defaults"
    opt = defaults.make_optimizer(model)
    assert (opt.units, opt.gamma_rule, opt.param_groups[0]["weight_decay"]) == ("loss", "tied", 0.0)
    paper = make_method("kfac-tridiag-paper", setting)
    assert paper.settings["recipe"] == "kronlin_nn.PAPER"
    opt = paper.make_optimizer(model)
    assert (opt.approx, opt.units, opt.gamma_rule) == ("tridiag", "case", "greedy")
    assert (opt.param_groups[0]["weight_decay"], opt.iteration) == (1e-5, 0)
    assert make_method("kfac-blockdiag-nomomentum", setting).make_optimizer(model).gamma_rule == (
        "greedy")


def test_sgd_step_equals_the_paper_objective_step():
    # ε·d on the mean-reduced loss with η/d is the paper's ε on the pixel-summed objective.
    torch.manual_seed(0)
    model = autoencoder([6, 4, 2, 4, 6]).double()
    reference = copy.deepcopy(model)
    x = torch.rand(10, 6, dtype=torch.float64)
    lr, eta = 0.01, 1e-5
    make_method("sgd", Setting("digits", 200, 6, 0), sgd_lr=lr).make_optimizer(model).step(x, x)
    params = list(reference.parameters())
    data = torch.nn.functional.binary_cross_entropy_with_logits(reference(x), x, reduction="sum")
    h = data / x.shape[0] + 0.5 * eta * sum(p.square().sum() for p in params)
    grads = torch.autograd.grad(h, params)
    for p, ref, g in zip(model.parameters(), params, grads, strict=True):
        torch.testing.assert_close(p.detach(), ref.detach() - lr * g, rtol=1e-10, atol=1e-12)


def test_make_method_errors():
    setting = Setting("digits", 1797, 64, 0)
    with pytest.raises(ValueError, match="learning rate"):
        make_method("sgd", setting)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_method("adam", setting)
