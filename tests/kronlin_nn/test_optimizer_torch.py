"""KFAC as a torch.optim.Optimizer: lr schedulers, momentum, param groups, guiding errors."""

import copy

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from kronlin_nn import KFAC

from .helpers import data, flat_params, tiny_mlp

SIZES = [3, 4, 5, 3]


def _problem(n=64):
    x, y = data("ce", n, SIZES[0], SIZES[-1])
    return tiny_mlp(SIZES), nn.CrossEntropyLoss(), x, y


# -- lr: a multiplier of the update the quadratic model chooses -------------------------------
@pytest.mark.parametrize("momentum", [True, 0.5])
def test_lr_multiplies_what_the_quadratic_model_chose(momentum):
    """δ = lr·(α̂Δ + μ̂δ₀) with μ chosen; a fixed μ is applied as given."""
    model, loss_fn, x, y = _problem()
    twin = copy.deepcopy(model)
    kw = dict(momentum=momentum, damping=0.1, adapt_damping=False, seed=0)
    opt, ref = KFAC(model, loss_fn, **kw), KFAC(twin, loss_fn, **kw)
    assert opt.param_groups[0]["lr"] == 1.0
    for _ in range(2):  # a step without δ₀, then one with it
        state, before = copy.deepcopy(opt.state_dict()), flat_params(model)
        ref.load_state_dict(state)
        ref.param_groups[0]["lr"] = 1.0
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters(), strict=True):
                p.copy_(q)
        opt.param_groups[0]["lr"] = 0.3
        scaled, chosen = opt.step(x, y), ref.step(x, y)
        assert scaled["alpha"] == pytest.approx(0.3 * chosen["alpha"], rel=1e-12)
        if momentum is True:
            assert scaled["mu"] == pytest.approx(0.3 * chosen["mu"], rel=1e-12, abs=1e-15)
            torch.testing.assert_close(flat_params(model) - before,
                                       0.3 * (flat_params(twin) - before), rtol=1e-10, atol=1e-14)
        else:
            assert scaled["mu"] == chosen["mu"] == (0.0 if state["delta0"] is None else 0.5)
    opt.param_groups[0]["lr"] = 0.0
    before, delta0 = flat_params(model), opt.state_dict()["delta0"]
    assert opt.step(x, y)["alpha"] == 0.0
    moved = 0.0 if momentum is True else momentum * delta0  # a fixed μ applies as given
    torch.testing.assert_close(flat_params(model), before + moved, rtol=1e-12, atol=1e-15)


def test_a_fixed_lr_is_scheduled_as_alpha():
    model, loss_fn, x, y = _problem()
    opt = KFAC(model, loss_fn, lr=0.2, momentum=False, damping=0.1, seed=0)
    scheduler = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    alphas = []
    for _ in range(3):
        alphas.append(opt.step(x, y)["alpha"])
        scheduler.step()
    assert alphas == [0.2, 0.1, 0.05]


SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 4]),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda k: 1 / (1 + k)),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda k: 0.9),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=8),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=8,
                                                    cycle_momentum=False),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.1, max_lr=1.0, step_size_up=2,
                                                cycle_momentum=False),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[2]),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_common_schedulers_work_with_the_default_configuration(name):
    """Each scheduler's lr multiplies the update the quadratic model chooses (α and μ)."""
    model, loss_fn, x, y = _problem()
    opt = KFAC(model, loss_fn, seed=0)
    scheduler = SCHEDULERS[name](opt)
    multipliers, history = [], []
    for _ in range(6):
        multipliers.append(opt.param_groups[0]["lr"])
        history.append(opt.step(x, y))
        scheduler.step(history[-1]["loss"]) if name == "ReduceLROnPlateau" else scheduler.step()
    assert all(isinstance(lr, float) and lr > 0 for lr in multipliers)
    assert all(s["accepted"] for s in history) and history[-1]["loss"] < history[0]["loss"]
    if name != "ReduceLROnPlateau":
        assert len(set(multipliers)) > 1  # the scheduler changed the multiplier


def test_automatic_momentum_is_never_replaced_silently():
    model, loss_fn, x, y = _problem()
    opt = KFAC(model, loss_fn, seed=0)
    lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)  # cycles momentum by default
    with pytest.raises(ValueError, match=r"momentum.*True \(μ from the quadratic model\).*"
                                         r"cycle_momentum=False"):
        opt.step(x, y)
    # with a fixed μ, the scheduler cycles it and K-FAC applies it
    opt = KFAC(model, loss_fn, momentum=0.9, seed=0)
    scheduler = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    mus = []
    for _ in range(4):
        mu = opt.param_groups[0]["momentum"]
        stats = opt.step(x, y)
        if stats["mu"] != 0.0:  # the first step has no previous update
            mus.append((stats["mu"], mu))
        scheduler.step()
    assert mus and all(a == b for a, b in mus) and len({b for _, b in mus}) > 1
    opt.param_groups[0]["momentum"] = False
    with pytest.raises(ValueError, match="momentum"):
        opt.step(x, y)


def test_bad_param_group_values_and_add_param_group_are_refused():
    model, loss_fn, x, y = _problem()
    opt = KFAC(model, loss_fn, seed=0)
    opt.param_groups[0]["lr"] = None
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]: expected a float >= 0"):
        opt.step(x, y)
    opt.param_groups[0]["lr"] = 1.0
    with pytest.raises(ValueError, match="add_param_group: KFAC has one parameter group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    assert len(opt.param_groups) == 1
    state = opt.state_dict()
    with pytest.raises(ValueError, match="fixed lr"):
        KFAC(model, loss_fn, lr=0.1).load_state_dict(state)


# -- guiding errors ----------------------------------------------------------------------------
def test_the_model_itself_and_a_loss_module_are_needed():
    model = tiny_mlp(SIZES)
    with pytest.raises(TypeError, match=r"model: expected the nn.Module itself.*got generator.*"
                                        r"not KFAC\(model.parameters\(\), loss_fn\)"):
        KFAC(model.parameters(), nn.MSELoss())
    with pytest.raises(TypeError, match="loss_fn: KFAC.model, loss_fn. needs the loss module"):
        KFAC(model)
    with pytest.raises(TypeError, match="loss_fn: expected the loss module.*'cross_entropy'"):
        KFAC(model, nn.functional.cross_entropy)


class _Renamed(nn.CrossEntropyLoss):
    pass


class _Overridden(nn.MSELoss):
    def forward(self, z, y):
        return super().forward(z, y).sqrt()


def test_a_loss_subclass_is_an_instance_of_its_loss():
    model, _, x, y = _problem()
    assert KFAC(model, _Renamed(), seed=0).step(x, y)["accepted"]
    with pytest.raises(TypeError, match="_Overridden overrides the forward of nn.MSELoss"):
        KFAC(model, _Overridden())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's imports
def test_compiled_models_are_refused_at_construction():
    model = tiny_mlp(SIZES)
    with pytest.raises(ValueError, match=r"compiled.*give KFAC the uncompiled model"):
        KFAC(torch.compile(model), nn.CrossEntropyLoss())
    inner = tiny_mlp(SIZES)
    inner[0].compile()
    with pytest.raises(ValueError, match=r"model: 0 is compiled"):
        KFAC(inner, nn.CrossEntropyLoss())
    model.compile()
    with pytest.raises(ValueError, match=r"model: model is compiled"):
        KFAC(model, nn.CrossEntropyLoss())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_model_compiled_after_construction_is_refused_at_the_step():
    model, loss_fn, x, y = _problem()
    opt = KFAC(model, loss_fn, seed=0)
    compiled = torch.compile(model, backend="eager")
    loss_fn(compiled(x), y).backward()
    with pytest.raises(ValueError, match=r"ran compiled.*call the uncompiled model"):
        opt.step()
    opt.zero_grad()
    model.compile(backend="eager")
    with pytest.raises(ValueError, match="model is compiled"):
        opt.step(x, y)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_are_refused_with_what_to_do(dtype):
    with pytest.raises(ValueError, match=rf"model.0.weight: parameters in {dtype}.*torch.autocast"):
        KFAC(tiny_mlp(SIZES, dtype=dtype), nn.CrossEntropyLoss())
    mixed = tiny_mlp(SIZES)
    mixed[2].float()
    with pytest.raises(ValueError, match="several dtypes"):
        KFAC(mixed, nn.CrossEntropyLoss())
