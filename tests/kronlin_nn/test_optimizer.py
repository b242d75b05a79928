import copy
import math

import pytest
import torch
from torch import nn

import kronlin_nn.optimizer as optimizer_module
from kronlin_nn import KFAC, kfac_factors
from kronlin_nn.curvature import FactorError, KFACWarning

from ..kronlin.helpers import assert_close
from .helpers import (
    LOSS_CLASSES,
    SkipNet,
    assert_warned_here,
    data,
    dense_ggn,
    flat_gradient,
    flat_params,
    linears,
    reduction_scale,
    set_flat_params,
    tiny_mlp,
)

SIZES = [3, 4, 5, 3]


# -- Theorem 1: invariance to affine reparameterizations ---------------------------------------
INV_SIZES = [3, 4, 4, 5]


def _net(act, sizes=INV_SIZES):
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(act())
    return nn.Sequential(*mods).double()


def _logistic_twin(tanh_net):
    """tanh(s) = 2σ(2s) − 1: the logistic net with s' = 2s and the next layer absorbing (2a' − 1)."""
    twin = _net(nn.Sigmoid)
    pairs = list(zip(linears(tanh_net), linears(twin), strict=True))
    with torch.no_grad():
        for i, (a, b) in enumerate(pairs):
            scale = 1.0 if i == len(pairs) - 1 else 2.0  # the output layer is not reparameterized
            if i == 0:
                b.weight.copy_(scale * a.weight)
                b.bias.copy_(scale * a.bias)
            else:
                b.weight.copy_(scale * 2 * a.weight)
                b.bias.copy_(scale * (a.bias - a.weight.sum(1)))
    return twin


def _input_twin(net, M, c):
    """The same net for inputs x† = M x + c: W†₁ = W₁M⁻¹, b†₁ = b₁ − W₁M⁻¹c."""
    twin = copy.deepcopy(net)
    first = linears(twin)[0]
    with torch.no_grad():
        W = first.weight @ torch.linalg.inv(M)
        first.bias.sub_(W @ c)
        first.weight.copy_(W)
    return twin


def _invariance_gap(make_pair, approx, damping, steps=6):
    torch.manual_seed(0)
    net, twin, x, x_twin, y = make_pair()
    kw = dict(approx=approx, lr=0.1, momentum=False, damping=damping, adapt_damping=False,
              weight_decay=0.0, seed=3, stats_fraction=0.5)
    opt, opt_twin = KFAC(net, nn.MSELoss(), **kw), KFAC(twin, nn.MSELoss(), **kw)
    gaps, losses = [], []
    for _ in range(steps):
        losses.append(opt.step(x, y)["loss"])
        opt_twin.step(x_twin, y)
        with torch.no_grad():
            gaps.append((net(x) - twin(x_twin)).abs().max().item())
    assert losses[-1] < losses[0]  # a real optimization path, not a standstill
    return max(gaps)


def _teacher_data(n=256):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, INV_SIZES[0], generator=g, dtype=torch.float64)
    teacher = _net(nn.Tanh)
    with torch.no_grad():
        y = teacher(x) + 0.1 * torch.randn(n, INV_SIZES[-1], generator=g, dtype=torch.float64)
    return x, y


def _tanh_logistic_pair():
    x, y = _teacher_data()
    net = _net(nn.Tanh)
    twin = _logistic_twin(net)
    return net, twin, x, x, y


def _affine_input_pair():
    x, y = _teacher_data()
    g = torch.Generator().manual_seed(9)
    M = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)
    net = _net(nn.Tanh)
    return net, _input_twin(net, M, c), x, x @ M.T + c, y


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
@pytest.mark.parametrize("pair", [_tanh_logistic_pair, _affine_input_pair],
                         ids=["tanh-vs-logistic", "affine-inputs"])
def test_theorem_1_invariance(pair, approx):
    """Paper §4, Thm 1 / Cor. 2: equivalent nets follow the same path (fixed lr, no momentum).

    The remaining gap is the damping's: it shrinks in proportion to γ = √λ, down to rounding.
    """
    tight = _invariance_gap(pair, approx, damping=1e-24)
    loose = _invariance_gap(pair, approx, damping=1e-16)
    assert tight < (1e-7 if approx == "blockdiag" else 1e-4)
    assert tight < loose / 100  # the gap is the damping's effect, vanishing with it


def test_plain_sgd_is_not_invariant():
    """Control: the same comparison under gradient descent shows a large gap."""
    net, twin, x, _, y = _tanh_logistic_pair()
    for model in (net, twin):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(6):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        assert (net(x) - twin(x)).abs().max() > 1e-3


# -- robustness --------------------------------------------------------------------------------
def _small_problem(kind="ce", n=32, seed=0):
    model = tiny_mlp(SIZES, seed=seed)
    x, y = data(kind, n, SIZES[0], SIZES[-1])
    return model, LOSS_CLASSES[kind](), x, y


def _statistics(opt):
    return copy.deepcopy(opt.state_dict()["statistics"])


def test_non_finite_loss_rejects_the_step():
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0)
    opt.step(x, y)
    params, stats, lam = flat_params(model), _statistics(opt), opt.state_dict()["lambda"]
    bad = x.clone()
    bad[3, 1] = math.nan
    gamma = opt.state_dict()["gamma"]
    with pytest.warns(KFACWarning) as caught:
        out = opt.step(bad, y)
    (warning,) = caught
    assert str(warning.message) == (f"step 2: non-finite loss, gradient or update; step "
                                    f"rejected, lambda raised to {lam / 0.95**5}")
    assert_warned_here(caught, __file__)
    assert math.isnan(out.pop("loss")) and math.isnan(out.pop("alpha"))
    assert math.isnan(out.pop("mu")) and math.isnan(out.pop("rho"))
    assert out == {"lambda": lam, "gamma": gamma, "refreshed": False, "accepted": False}
    assert opt.state_dict()["rejected"] == 1
    with pytest.warns(KFACWarning, match="step 2: non-finite"):
        opt.step(bad, y)
    assert opt.state_dict()["rejected"] == 2
    assert torch.equal(flat_params(model), params)  # parameters untouched
    after = _statistics(opt)
    assert after["count"] == stats["count"] == 1
    assert all(torch.equal(a, b) for a, b in zip(after["A"] + after["G"], stats["A"] + stats["G"],
                                                 strict=True))
    assert math.isclose(opt.state_dict()["lambda"], lam / 0.95**15)  # raised twice: ω₁, ω₁² (streak)
    assert opt.iteration == 1
    assert opt.step(x, y)["accepted"]  # and training goes on


def test_infinite_gradient_rejects_the_step():
    model, loss_fn, x, y = _small_problem("mse")
    opt = KFAC(model, loss_fn, damping=0.01, seed=0)
    params = flat_params(model)
    with pytest.warns(KFACWarning, match="rejected"):
        assert not opt.step(x, torch.full_like(y, 1e308))["accepted"]
    assert torch.equal(flat_params(model), params)
    assert _statistics(opt)["count"] == 0
    # before any batch set the default bounds, λ grows unbounded: (0, ∞)
    assert opt.state_dict()["lambda"] == pytest.approx(0.01 / 0.95**5, rel=1e-15)


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
@pytest.mark.parametrize("corruption", ["indefinite", "nan"])
def test_bad_factors_skip_the_refresh_and_keep_the_last_inverses(approx, corruption):
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, approx=approx, damping=1e-3, seed=0, adapt_damping=False)
    for _ in range(3):
        opt.step(x, y)
    inverse = opt._inverse
    A = opt._stats.A[1]
    if corruption == "nan":
        A[0, 0] = math.nan
    else:
        A.sub_(10 * torch.eye(A.shape[0], dtype=A.dtype) * A.diagonal().max())
    opt.inverse_every = 4  # step 4 refreshes
    params = flat_params(model)
    with pytest.warns(KFACWarning, match="refresh skipped") as caught:
        out = opt.step(x, y)
    assert_warned_here(caught, __file__)
    assert out["accepted"] and not out["refreshed"]
    assert opt._inverse is inverse
    assert not torch.equal(flat_params(model), params)


def test_first_inverse_failure_raises():
    model, loss_fn, x, y = _small_problem("mse")
    opt = KFAC(model, loss_fn, damping=0.0, weight_decay=0.0, adapt_damping=False,
               stats_fraction=1 / 32, seed=0)  # one case: singular factors, no damping
    with pytest.raises(FactorError, match="first K-FAC inverse"):
        opt.step(x, y)


def test_non_finite_batch_statistics_are_skipped(monkeypatch):
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0)
    opt.step(x, y)
    stats = _statistics(opt)
    real = optimizer_module.output_vectors
    monkeypatch.setattr(optimizer_module, "output_vectors",
                        lambda *a, **k: real(*a, **k) * math.nan)
    with pytest.warns(KFACWarning, match="step 2: non-finite curvature statistics; batch "
                      "skipped") as caught:
        assert opt.step(x, y)["accepted"]
    assert_warned_here(caught, __file__)
    after = _statistics(opt)
    assert after["count"] == 1 and torch.equal(after["G"][0], stats["G"][0])


def test_non_finite_objective_after_the_update_rejects_it(monkeypatch):
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0, damping_every=1)
    monkeypatch.setattr(KFAC, "_objective", lambda *a: math.inf)
    params = flat_params(model)
    with pytest.warns(KFACWarning, match="rejected"):
        out = opt.step(x, y)
    assert not out["accepted"] and math.isnan(out["rho"])
    assert torch.equal(flat_params(model), params)
    assert math.isclose(opt.state_dict()["lambda"], 1.0 / 0.95)


# -- checkpointing -----------------------------------------------------------------------------
@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_resumed_run_follows_the_same_trajectory_bit_for_bit(approx):
    x, y = data("ce", 64, SIZES[0], SIZES[-1])

    def run(model, opt, ks):
        out = []
        for k in ks:
            rows = torch.arange(16 * (k % 4), 16 * (k % 4) + 16)  # a different batch each step
            out.append(opt.step(x[rows], y[rows]))
        return out

    model = tiny_mlp(SIZES)
    opt = KFAC(model, nn.CrossEntropyLoss(), approx=approx, seed=1, stats_fraction=0.5)
    run(model, opt, range(1, 16))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), opt.state_dict()
    reference = run(model, opt, range(16, 26))  # covers a refresh, the γ search and ρ steps
    assert any(s["refreshed"] for s in reference) and any(s["rho"] == s["rho"] for s in reference)

    resumed = tiny_mlp(SIZES, seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = KFAC(resumed, nn.CrossEntropyLoss(), approx=approx, seed=123, stats_fraction=0.5)
    opt2.load_state_dict(saved_opt)
    for key in ("damping_bounds", "lambda", "gamma", "k", "rejected", "lm_streak", "seed"):
        assert opt2.state_dict()[key] == saved_opt[key], key
    again = run(resumed, opt2, range(16, 26))
    assert again == reference
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_mismatches():
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="approx"):
        KFAC(model, loss_fn, approx="tridiag").load_state_dict(state)
    with pytest.raises(ValueError, match="layers"):
        KFAC(tiny_mlp([3, 4, 3]), loss_fn).load_state_dict(state)
    with pytest.raises(ValueError, match=r"^state_dict: saved by a KFAC with lr=None \(lr "
                       r"multiplies the chosen update\), this optimizer has a fixed lr$"):
        KFAC(model, loss_fn, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"^state_dict: saved by a KFAC with a fixed lr, this "
                       r"optimizer has lr=None \(lr multiplies the chosen update\)$"):
        KFAC(model, loss_fn).load_state_dict(KFAC(model, loss_fn, lr=0.1).state_dict())


def test_a_cuda_rng_state_on_a_cpu_model_reseeds_with_a_warning():
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, seed=5)
    opt.step(x, y)
    state = opt.state_dict()
    state["rng_device"] = "cuda:0"  # CPU and CUDA generator states do not convert
    other = KFAC(copy.deepcopy(model), loss_fn, seed=6)
    with pytest.warns(KFACWarning, match=r"^state_dict: RNG state saved on cuda:0, model on cpu; "
                      r"reseeding, so sampled targets will differ$"):
        other.load_state_dict(state)
    assert other.state_dict()["seed"] == 5 and other.state_dict()["rng"] is None


# -- a hand-checked λ/γ trajectory --------------------------------------------------------------
def test_lambda_and_gamma_trajectory_on_linear_least_squares():
    """Linear least squares: h is exactly quadratic and F̆ = F (one layer, exact statistics).

    Then the λ-inclusive quadratic model gives ρ = 1 + λ‖δ‖²/(−∇hᵀδ) > 3/4 at every T₁ = 5,
    so λ shrinks by ω₁ = 0.95⁵ each time; at k = T₂ = 20 the γ search keeps the candidate of
    lowest M(δ), which we recompute densely. λ₀ = 10⁴ sits inside the spectrum of F, so the
    problem is far from solved after 20 steps and ρ is not rounding noise.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.diag(
        torch.logspace(0, 2, 8, dtype=torch.float64))
    y = torch.randn(64, 5, generator=g, dtype=torch.float64)
    model = nn.Linear(8, 5).double()
    opt = KFAC(model, nn.MSELoss(reduction="sum"), fisher="exact", stats_fraction=1.0,
               damping=1e4, weight_decay=0.0, gamma_rule="greedy", lm_streak=1)
    lambdas, gammas = [], []
    for k in range(1, 21):
        if k == 20:
            before = (copy.deepcopy(model), opt.state_dict()["delta0"])
        out = opt.step(x, y)
        lambdas.append(out["lambda"])
        gammas.append(out["gamma"])
        if k % 5 == 0:
            assert out["rho"] > 1.0
    w = 0.7737809374999998  # 0.95**5
    expected = [1e4] * 5 + [1e4 * w] * 5 + [1e4 * w**2] * 5 + [1e4 * w**3] * 5
    assert lambdas == pytest.approx(expected, rel=1e-14)
    assert opt.state_dict()["lambda"] == pytest.approx(1e4 * w**4, rel=1e-14)
    assert gammas[:19] == [100.0] * 19  # γ₀ = √(λ₀ + η)

    # k = 20: candidates {γω₂, γ, γ/ω₂}; recompute each M(δ_γ) − M(0) densely
    w2 = 0.95**10
    changes = {gamma: _dense_model_change(*before, x, y, gamma, 1e4 * w**3) for gamma in
               (100 * w2, 100.0, 100 / w2)}
    assert gammas[19] == min(changes, key=changes.get)
    assert opt.state_dict()["gamma"] == gammas[19]
    values = sorted(changes.values())
    assert values[1] - values[0] > 1e-6 * abs(values[0])  # a real choice, not a tie


def _dense_model_change(model, delta0, x, y, gamma, lam):
    """min over (α, μ) of M(αΔ_γ + μδ₀) − M(0) for one linear layer, with dense matrices."""
    loss_fn = nn.MSELoss(reduction="sum")
    ((A, G),) = kfac_factors(model, loss_fn, x, y, fisher="exact").values()
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    F_gamma = torch.kron(G + gamma / pi * torch.eye(5, dtype=A.dtype),
                         A + gamma * pi * torch.eye(9, dtype=A.dtype))
    grad = flat_gradient(model, loss_fn, x, y, 0.0)
    Delta = -torch.linalg.solve(F_gamma, grad)
    C = dense_ggn(model, "mse", "sum", x) + lam * torch.eye(45, dtype=A.dtype)
    U = torch.stack([Delta, delta0], 1)
    A2, c2 = U.T @ C @ U, U.T @ grad
    coeffs = -torch.linalg.solve(A2, c2)
    return (0.5 * c2 @ coeffs).item()


# -- per-iteration progress on a real data set ---------------------------------------------------
@pytest.mark.slow
def test_digits_kfac_beats_tuned_sgd_momentum_and_adam_per_iteration():
    """scikit-learn digits, full batch, 80 iterations each; K-FAC with its defaults."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)
    loss_fn, iterations = nn.CrossEntropyLoss(), 80

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(),
                             nn.Linear(32, 10))

    def final_loss(model):
        with torch.no_grad():
            return loss_fn(model(X), y).item()

    def baseline(cls, lr, **kw):
        model = make()
        opt = cls(model.parameters(), lr=lr, **kw)
        for _ in range(iterations):
            opt.zero_grad()
            loss_fn(model(X), y).backward()
            opt.step()
        return final_loss(model)

    sgd = [baseline(torch.optim.SGD, lr, momentum=0.9, nesterov=True) for lr in (0.1, 0.3, 0.6)]
    adam = [baseline(torch.optim.Adam, lr) for lr in (0.01, 0.03, 0.1)]
    # "well tuned": the best learning rate of each grid is an interior point
    assert min(sgd) == sgd[1] and min(adam) == adam[1]
    model = make()
    opt = KFAC(model, loss_fn, seed=0)
    for _ in range(iterations):
        opt.step(X, y)
    assert final_loss(model) < 0.5 * min(sgd + adam)


def test_default_damping_works_out_of_the_box_for_an_autoencoder():
    """damping=None calibrates λ₀ on the first batch; training then makes steady progress."""
    from sklearn.datasets import load_digits

    X = torch.tensor(load_digits(return_X_y=True)[0][:512] / 16, dtype=torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 8), nn.Linear(8, 32),
                          nn.Sigmoid(), nn.Linear(32, 64))
    opt = KFAC(model, nn.BCEWithLogitsLoss(), approx="tridiag", seed=0)
    history = [opt.step(X, X) for _ in range(30)]
    assert all(s["accepted"] for s in history)
    # λ₀ strictly inside the search's grid [10⁻⁸ λ_top, λ_top]: the search chose it
    top = opt.state_dict()["damping_bounds"][0] / (100 * torch.finfo(torch.float32).eps)
    assert 1e-8 * top * 1.001 < history[0]["lambda"] < top * 0.999
    assert history[0]["gamma"] == math.sqrt(history[0]["lambda"])
    losses = [s["loss"] for s in history]
    assert losses[-1] < 0.65 * losses[0]
    assert sum(b > a for a, b in zip(losses, losses[1:], strict=False)) <= 2  # nearly monotone


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"approx": "diag"}, "approx"),
    ({"fisher": "true"}, "fisher"),
    ({"pi": "max"}, "pi"),
    ({"lr": -1.0}, "lr"),
    ({"damping": -1.0}, "damping"),
    ({"weight_decay": -1e-5}, "weight_decay"),
    ({"inverse_every": 0}, "inverse_every"),
    ({"gamma_every": 30}, "gamma_every"),
    ({"stats_fraction": 0.0}, "stats_fraction"),
    ({"quad_fraction": 1.5}, "quad_fraction"),
    ({"ema_max": 1.0}, "ema_max"),
    ({"gamma_bounds": (1.0, 0.1)}, "gamma_bounds"),
])
def test_configuration_errors_name_the_keyword(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFAC(tiny_mlp(SIZES), nn.MSELoss(), **kwargs)


def test_seed_none_draws_the_sampling_seed_from_torchs_global_generator():
    x, y = data("mse", 16, SIZES[0], SIZES[-1])
    runs = []
    for global_seed in (3, 3, 4):
        model = tiny_mlp(SIZES)  # (seeds the global generator itself)
        torch.manual_seed(global_seed)
        opt = KFAC(model, nn.MSELoss(), damping=1.0, seed=None)
        runs.append((opt.state_dict()["seed"], opt.step(x, y)["alpha"]))
    assert runs[0] == runs[1] and runs[2][0] != runs[0][0]
    assert runs[2][1] != runs[0][1]  # other sampled targets, another step


def test_zero_grad_sets_gradients_to_none_by_default():
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0)
    opt.step(x, y)  # sets .grad
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt.step(x, y)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_tridiag_needs_a_chain():
    x, y = data("mse", 8, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="chain"):
        KFAC(SkipNet(), nn.MSELoss(), approx="tridiag").step(x, y)
    assert KFAC(SkipNet(), nn.MSELoss()).step(x, y)["accepted"]  # block-diagonal needs no chain


def test_fixed_step_sizes_and_param_group_lr():
    """Fixed α and μ as given, scheduled through the param group (the quadratic model's choice of
    the free one is checked against the dense reference, test_optimizer_reference.py)."""
    model, loss_fn, x, y = _small_problem("mse")
    opt = KFAC(model, loss_fn, lr=0.1, momentum=0.5, damping=1.0, adapt_damping=False, seed=0)
    first = opt.step(x, y)
    assert first["alpha"] == 0.1 and first["mu"] == 0.5 and math.isnan(first["rho"])
    opt.param_groups[0]["lr"] = 0.05  # schedulers write here
    opt.param_groups[0]["momentum"] = 0.25
    second = opt.step(x, y)
    assert second["alpha"] == 0.05 and second["mu"] == 0.25


def test_float32_training_tracks_float64_and_module_order():
    """Layers registered out of forward order, statistics on a 1/4 sub-batch: a float32 run
    follows the float64 run of the same network to rounding (exact statistics: no sampling).

    Bounds in units of u₃₂: the loss is a sum of 64 cases' terms (≤ 67 roundings; 2 seen); the
    parameters after 10 steps carry each step's α and μ from a 2×2 model whose entries are
    float32 inner products of P = 51 entries, √P·u each, amplified by the model's condition
    (1000 u; 30 seen); λ₀ is interpolated from a 20-step power iteration (200 u; 38 seen).
    """
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.out, self.inp = nn.Linear(6, 3), nn.Linear(4, 6)

        def forward(self, x):
            return self.out(torch.tanh(self.inp(x)))

    x, y = data("ce", 64, 4, 3)
    torch.manual_seed(0)
    model = Reordered().double()
    models = {"float64": model, "float32": copy.deepcopy(model).float()}
    runs = {}
    for dtype, net in models.items():
        opt = KFAC(net, nn.CrossEntropyLoss(), approx="tridiag", stats_fraction=0.25,
                   fisher="exact", seed=0)
        runs[dtype] = [opt.step(x.to(getattr(torch, dtype)), y) for _ in range(10)]
        assert opt._layers == [net.inp, net.out]
    for single, double in zip(runs["float32"], runs["float64"], strict=True):
        assert_close(single["loss"], double["loss"], dtype="float32", bound=67, label="KFAC loss")
    assert_close(runs["float32"][0]["lambda"], runs["float64"][0]["lambda"], dtype="float32",
                 bound=200, label="KFAC λ₀")
    assert_close(torch.cat([p.detach().reshape(-1) for p in models["float32"].parameters()]),
                 torch.cat([p.detach().reshape(-1) for p in models["float64"].parameters()]),
                 dtype="float32", bound=1000, label="KFAC parameters after 10 steps")


def _least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = torch.randn(64, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(6, 3).double(), x, y


@pytest.mark.parametrize("bounds", [None, (0.0, math.inf)])
def test_default_gamma_bounds_stop_the_greedy_search_at_sqrt_eta(bounds):
    """λ = 0 on least squares: a smaller γ models better at every step, so the greedy search
    walks γ down by ω₂ = √0.95 per step unless the default bounds (√η, ∞) hold it at √η."""
    eta = 1e-2
    model, x, y = _least_squares()
    opt = KFAC(model, nn.MSELoss(), fisher="exact", stats_fraction=1.0, damping=0.0,
               weight_decay=eta, gamma_rule="greedy", gamma_every=1, inverse_every=1,
               gamma_bounds=bounds, seed=0)
    ratios = [opt.step(x, y)["gamma"] / math.sqrt(eta) for _ in range(4)]
    expected = [1.0] * 4 if bounds is None else [0.95 ** (k / 2) for k in range(1, 5)]
    assert ratios == pytest.approx(expected, rel=1e-14)


def test_gamma_bounds_clamp_the_tied_gamma():
    model, x, y = _least_squares()
    for damping, gamma in ((1.0, 0.5), (1e-4, 0.1)):  # √(λ+η) = 1 and 0.01
        opt = KFAC(copy.deepcopy(model), nn.MSELoss(), damping=damping, gamma_bounds=(0.1, 0.5),
                   seed=0)
        assert opt.step(x, y)["gamma"] == gamma


# -- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_cuda_training_and_resume(approx):
    x, y = data("ce", 64, SIZES[0], SIZES[-1])
    x, y = x.cuda(), y.cuda()
    model = tiny_mlp(SIZES).cuda()
    opt = KFAC(model, nn.CrossEntropyLoss(), approx=approx, seed=0, stats_fraction=0.5)
    first = [opt.step(x, y)["loss"] for _ in range(6)]
    assert first[-1] < first[0]
    saved_model, saved = copy.deepcopy(model.state_dict()), opt.state_dict()
    reference = [opt.step(x, y) for _ in range(5)]
    resumed = tiny_mlp(SIZES, seed=5).cuda()
    resumed.load_state_dict(saved_model)
    opt2 = KFAC(resumed, nn.CrossEntropyLoss(), approx=approx, stats_fraction=0.5)
    opt2.load_state_dict(saved)
    assert [opt2.step(x, y) for _ in range(5)] == reference


# -- the default configuration: λ₀ search, tied γ, units, λ floor ------------------------------
def _dense_search_rhos(model, loss_fn, kind, x, y, lams, eta=0.0, rho_damping=True):
    """ρ and the decrease of h of the first block-diagonal step for each λ, densely."""
    factors = list(kfac_factors(model, loss_fn, x, y, fisher="exact").values())
    grad = flat_gradient(model, loss_fn, x, y, eta)
    theta = flat_params(model)

    def objective(net):
        with torch.no_grad():
            flat = flat_params(net)
            return loss_fn(net(x), y).item() + 0.5 * eta * (flat @ flat).item()

    h = objective(model)
    F = dense_ggn(model, kind, "mean", x)
    rhos, decreases = [], []
    for lam in lams:
        gamma = math.sqrt(lam + eta)
        blocks = []
        for A, G in factors:
            pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
            blocks.append(torch.kron(G + gamma / pi * torch.eye(G.shape[0], dtype=G.dtype),
                                     A + gamma * pi * torch.eye(A.shape[0], dtype=A.dtype)))
        Delta = -torch.linalg.solve(torch.block_diag(*blocks), grad)
        alpha = -(grad @ Delta) / (Delta @ F @ Delta + (lam + eta) * Delta @ Delta)
        rho_term = (lam if rho_damping else 0.0) + eta
        predicted = alpha * (grad @ Delta) + 0.5 * alpha**2 * (Delta @ F @ Delta
                                                               + rho_term * Delta @ Delta)
        twin = copy.deepcopy(model)
        set_flat_params(twin, theta + alpha * Delta)
        h_new = objective(twin)
        rhos.append(-math.inf if h_new > h else (h_new - h) / predicted.item())
        decreases.append(h - h_new)
    return rhos, decreases


@pytest.mark.parametrize(("eta", "rho_damping"), [(0.0, True), (0.02, True), (0.02, False)])
def test_default_initial_damping_is_the_lm_rest_point_of_a_dense_search(eta, rho_damping):
    """λ₀ = the grid's λ where the LM rule would rest on the first batch, recomputed densely
    (γ = √(λ + η) per candidate, ρ with or without the λ term)."""
    from kronlin_nn.damping import lm_rest_point

    model = tiny_mlp(SIZES)
    x, y = data("ce", 32, 3, 3)
    loss_fn = nn.CrossEntropyLoss()
    factors = kfac_factors(model, loss_fn, x, y, fisher="exact").values()
    top = max(torch.linalg.eigvalsh(A)[-1] * torch.linalg.eigvalsh(G)[-1] for A, G in factors)
    lams = [top.item() * 10.0**-j for j in range(9)]
    rhos, decreases = _dense_search_rhos(copy.deepcopy(model), loss_fn, "ce", x, y, lams, eta,
                                         rho_damping)
    chosen = lm_rest_point(lams, rhos, decreases)
    assert lams[-2] < chosen < lams[0]  # an interior choice: the search decided something
    opt = KFAC(model, loss_fn, fisher="exact", stats_fraction=1.0, weight_decay=eta,
               rho_includes_damping=rho_damping, seed=0)
    out = opt.step(x, y)
    assert out["lambda"] == pytest.approx(chosen, rel=1e-3)  # power iteration vs eigvalsh
    assert out["gamma"] == pytest.approx(math.sqrt(chosen + eta), rel=1e-3)
    floor, ceiling = opt.state_dict()["damping_bounds"]
    eps = torch.finfo(torch.float64).eps
    assert floor == pytest.approx(100 * eps * top.item(), rel=1e-3) and ceiling == math.inf


def test_tied_gamma_follows_lambda_at_every_refresh():
    """γ = √(λ+η) at every refresh: on schedule, or early once √(λ+η) drifted a factor 1/ω₂."""
    drift = -math.log(0.95**10)
    model = tiny_mlp(SIZES)
    x, y = data("mse", 24, 3, 3)
    opt = KFAC(model, nn.MSELoss(), damping=1.0, weight_decay=1e-3, seed=0, inverse_every=10,
               damping_every=1)
    history = [opt.step(x, y) for _ in range(25)]
    lambdas = [s["lambda"] for s in history]
    assert max(lambdas) / min(lambdas) > 10  # λ moved over more than one drift
    early = 0
    for k, s in enumerate(history, start=1):
        tied = math.sqrt(s["lambda"] + 1e-3)
        if s["refreshed"]:
            assert s["gamma"] == tied
            early += not (k <= 3 or k % 10 == 0)
        else:
            assert k > 3 and k % 10 and s["gamma"] == history[k - 2]["gamma"]
            assert abs(math.log(tied / s["gamma"])) <= drift
    assert early > 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_case_units_convert_damping_and_weight_decay_by_the_loss_scale(reduction):
    """units="case": λ and η of the per-case summed objective, i.e. κ = sN times in loss units."""
    model, twin = tiny_mlp(SIZES), tiny_mlp(SIZES)
    x, y = data("bce", 20, 3, 3)
    kappa = reduction_scale("bce", reduction, 20, 3) * 20  # 1/D for "mean", N for "sum"
    loss_fn = nn.BCEWithLogitsLoss(reduction=reduction)
    opt = KFAC(model, loss_fn, units="case", damping=0.5, weight_decay=1e-3, seed=0)
    ref = KFAC(twin, loss_fn, damping=0.5 * kappa, weight_decay=1e-3 * kappa, seed=0)
    for _ in range(6):
        out, expected = opt.step(x, y), ref.step(x, y)
        assert out["lambda"] * kappa == pytest.approx(expected["lambda"], rel=1e-12)
        assert out["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    torch.testing.assert_close(flat_params(model), flat_params(twin), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reject", [True, False])
def test_an_update_that_increases_h_on_a_rho_step_is_not_applied(monkeypatch, reject):
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0, damping_every=2, reject_uphill=reject)
    assert opt.step(x, y)["accepted"]
    params, h_before = flat_params(model), 0.0

    def uphill(self, inputs, targets, theta, eta):
        return h_before + 1.0

    monkeypatch.setattr(KFAC, "_objective", uphill)
    with torch.no_grad():
        h_before = loss_fn(model(x), y).item()
    out = opt.step(x, y)
    assert out["rho"] == -math.inf
    assert math.isclose(opt.state_dict()["lambda"], 1.0 / 0.95**2)  # the LM rule grew λ
    if reject:
        assert not out["accepted"] and torch.equal(flat_params(model), params)
        assert opt.state_dict()["delta0"] is None
    else:  # the paper: every update is applied
        assert out["accepted"] and not torch.equal(flat_params(model), params)


@pytest.mark.parametrize("reject", [True, False])
def test_a_step_whose_model_promises_more_than_h_gets_a_rho_check(monkeypatch, reject):
    """reject_uphill: M(δ) − M(0) < −h is impossible (h ≥ 0), so that step is a ρ step."""
    model, loss_fn, x, y = _small_problem()
    opt = KFAC(model, loss_fn, damping=1.0, seed=0, damping_every=5)
    opt.reject_uphill = reject
    assert math.isnan(opt.step(x, y)["rho"])  # step 1: no ρ step by the schedule
    params = flat_params(model)
    quadratic_model = KFAC._quadratic_model

    def overpromising(self, *args):
        j, alpha, mu, _, predicted_rho = quadratic_model(self, *args)
        return j, alpha, mu, -2.0 * h_before, predicted_rho

    monkeypatch.setattr(KFAC, "_quadratic_model", overpromising)
    monkeypatch.setattr(KFAC, "_objective", lambda self, *args: h_before + 1.0)
    with torch.no_grad():
        h_before = loss_fn(model(x), y).item()
    out = opt.step(x, y)  # step 2: not a multiple of T₁ = 5
    if reject:
        assert out["rho"] == -math.inf and not out["accepted"]
        assert torch.equal(flat_params(model), params)
    else:  # the paper's schedule: ρ every T₁ steps only, every update applied
        assert math.isnan(out["rho"]) and out["accepted"]


@pytest.mark.slow
def test_training_near_zero_loss_on_separable_classes_does_not_blow_up():
    """scikit-learn digits, tanh MLP, full batch, defaults: the loss falls below 1e-4 and stays.

    Near zero loss the exact Fisher vanishes along the separating directions; without the
    check of an over-promising model the loss went from 2e-4 to 28 within ten steps.
    """
    from sklearn.datasets import load_digits

    X, y = (torch.as_tensor(a) for a in load_digits(return_X_y=True))
    std = X.std(0, unbiased=False)
    X = ((X - X.mean(0)) / torch.where(std > 0, std, 1.0)).to(torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = KFAC(model, nn.CrossEntropyLoss(), seed=0)
    losses = [opt.step(X, y)["loss"] for _ in range(60)]
    best = torch.tensor(losses).cummin(0).values.tolist()
    assert best[-1] < 1e-4
    assert all(h < 2.0 * b for h, b in zip(losses[1:], best[:-1], strict=True))


def test_default_lower_bound_of_lambda_is_machine_epsilon_times_the_curvature_scale():
    """float32: the first LM update lifts a λ₀ far below 100·ε₃₂·λ_top onto that bound."""
    from kronlin_nn.damping import curvature_scale

    model = tiny_mlp(SIZES, dtype=torch.float32)
    x, y = data("mse", 24, 3, 3, dtype=torch.float32)
    loss_fn = nn.MSELoss()
    factors = list(kfac_factors(model, loss_fn, x, y, fisher="exact").values())
    top = curvature_scale([A for A, _ in factors], [G for _, G in factors])
    opt = KFAC(model, loss_fn, fisher="exact", stats_fraction=1.0, damping=1e-20 * top,
               damping_every=1, seed=0)
    opt.step(x, y)
    floor, ceiling = opt.state_dict()["damping_bounds"]
    assert floor == pytest.approx(100 * torch.finfo(torch.float32).eps * top, rel=1e-2)
    assert ceiling == math.inf and opt.state_dict()["lambda"] == floor
