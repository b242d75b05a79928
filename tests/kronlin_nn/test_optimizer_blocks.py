"""The optimizer over every block type: a dense re-implementation, resume, NaNs, tridiag, refusals."""

import copy
import math

import pytest
import torch
from torch import nn

import kronlin_nn.optimizer as optimizer_module
from kronlin_nn import KFAC, kfac_factors
from kronlin_nn.blocks import DiagonalFactors, model_blocks
from kronlin_nn.curvature import KFACWarning

from .helpers import exact_fisher, layout_jacobian, model_outputs


def _mixed(fallback: bool, seed=0):
    """Conv2d, GroupNorm, Linear, LayerNorm, (PReLU: the diagonal fallback), Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.Tanh(), nn.Flatten(),
        nn.Linear(32, 5), nn.LayerNorm(5), nn.PReLU() if fallback else nn.Tanh(), nn.Linear(5, 3),
    ).double()


def _data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _flat(blocks, tensors):
    """Per-parameter tensors as the blocks' segments: [W.reshape(d_out, -1) | b] or flattened."""
    parts = []
    for b in blocks:
        ts = [tensors[id(p)] for p in b.params if p is not None]
        if b.kind in ("conv2d", "linear"):
            M = ts[0].reshape(ts[0].shape[0], -1)
            parts.append(torch.cat([M, ts[1][:, None]], 1).reshape(-1) if len(ts) == 2 else M.reshape(-1))
        else:
            parts.append(torch.cat([t.reshape(-1) for t in ts]))
    return torch.cat(parts)


def _damped_blocks(factors, blocks, gamma):
    """F̃_γ block by block: Kronecker blocks with factored damping (trace π), diagonal + γ²."""
    dense = []
    for b in blocks:
        f = factors[b.module]
        if isinstance(f, DiagonalFactors):
            d = torch.cat([f.diagonals[name].reshape(-1) for name in b.param_names])
            dense.append(torch.diag(d + gamma**2))
        else:
            A, G = f
            pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
            I_G, I_A = (torch.eye(M.shape[0], dtype=M.dtype) for M in (G, A))
            dense.append(torch.kron(G + gamma / pi * I_G, A + gamma * pi * I_A))
    return torch.block_diag(*dense)


@pytest.mark.parametrize("fallback", [False, True], ids=["cached-tangents", "torch.func-tangents"])
def test_first_steps_match_a_dense_reimplementation(fallback):
    """Fixed λ, exact statistics on the whole batch: Δ = −F̃_γ⁻¹∇h, (α, μ) from the exact Fisher."""
    model, (x, y) = _mixed(fallback), _data()
    reference = copy.deepcopy(model)
    loss_fn, lam, eta = nn.CrossEntropyLoss(), 0.05, 1e-3
    gamma = math.sqrt(lam + eta)
    opt = KFAC(model, loss_fn, fisher="exact", damping=lam, adapt_damping=False, weight_decay=eta,
               stats_fraction=1.0)
    blocks, delta0, stats = model_blocks(reference), None, None
    for k in range(1, 3):
        params = {id(p): p for p in reference.parameters()}
        theta = _flat(blocks, {i: p.detach() for i, p in params.items()})
        grads = torch.autograd.grad(loss_fn(reference(x), y), list(params.values()))
        grad = _flat(blocks, dict(zip(params, grads, strict=True))) + eta * theta
        batch = kfac_factors(reference, loss_fn, x, y, fisher="exact")
        stats = batch if stats is None else _averaged(stats, batch, min(1 - 1 / k, 0.95))
        Delta = -torch.linalg.solve(_damped_blocks(stats, blocks, gamma), grad)
        F = exact_fisher(layout_jacobian(reference, blocks, x), "ce", "mean", model_outputs(reference, x))
        C = F + (lam + eta) * torch.eye(F.shape[0], dtype=F.dtype)
        if delta0 is None:
            alpha, mu = (-(grad @ Delta) / (Delta @ C @ Delta)).item(), 0.0
        else:
            U = torch.stack([Delta, delta0], 1)
            alpha, mu = (-torch.linalg.solve(U.T @ C @ U, U.T @ grad)).tolist()
        delta = alpha * Delta + (mu * delta0 if delta0 is not None else 0)
        with torch.no_grad():
            for p, new in zip(params.values(), _unflat(blocks, theta + delta, params), strict=True):
                p.copy_(new)
        delta0 = delta
        out = opt.step(x, y)
        assert out["accepted"] and math.isclose(out["alpha"], alpha, rel_tol=1e-8)
        assert math.isclose(out["mu"], mu, rel_tol=1e-8, abs_tol=1e-12)
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def _averaged(old, new, eps):
    """The moving average ε·old + (1 − ε)·new of every block's factors."""
    out = {}
    for m in new:
        if isinstance(new[m], DiagonalFactors):
            out[m] = DiagonalFactors({n: eps * old[m].diagonals[n] + (1 - eps) * d
                                      for n, d in new[m].diagonals.items()})
        else:
            out[m] = [eps * a + (1 - eps) * b for a, b in zip(old[m], new[m], strict=True)]
    return out


def _unflat(blocks, flat, params):
    """The inverse of _flat, in the order of ``params``."""
    out, offset = {}, 0
    for b in blocks:
        ps = [p for p in b.params if p is not None]
        if b.kind in ("conv2d", "linear"):
            rows = ps[0].shape[0]
            cols = ps[0][0].numel() + (len(ps) == 2)
            M = flat[offset:offset + rows * cols].reshape(rows, cols)
            out[id(ps[0])] = M[:, : ps[0][0].numel()].reshape(ps[0].shape)
            if len(ps) == 2:
                out[id(ps[1])] = M[:, -1]
            offset += rows * cols
        else:
            for p in ps:
                out[id(p)] = flat[offset:offset + p.numel()].reshape(p.shape)
                offset += p.numel()
    return [out[i] for i in params]


def _chain_with_diagonal_blocks(seed=0):
    """Three linear layers (a chain) with a LayerNorm and a PReLU between them."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4), nn.PReLU(),
                         nn.Linear(4, 3)).double()


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_resumed_run_follows_the_same_trajectory_bit_for_bit(approx):
    make = (lambda s: _mixed(True, s)) if approx == "blockdiag" else _chain_with_diagonal_blocks
    x, y = _data(64) if approx == "blockdiag" else (torch.randn(64, 3, dtype=torch.float64),
                                                    torch.randint(0, 3, (64,)))

    def run(opt, ks):
        out = []
        for k in ks:
            rows = torch.arange(16 * (k % 4), 16 * (k % 4) + 16)
            out.append(opt.step(x[rows], y[rows]))
        return out

    model = make(0)
    opt = KFAC(model, nn.CrossEntropyLoss(), approx=approx, seed=1, stats_fraction=0.5)
    run(opt, range(1, 16))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), opt.state_dict()
    reference = run(opt, range(16, 26))  # a refresh, the γ search and ρ steps
    assert any(s["refreshed"] for s in reference) and any(s["rho"] == s["rho"] for s in reference)
    assert "D" in saved_opt["statistics"]

    resumed = make(99)
    resumed.load_state_dict(saved_model)
    opt2 = KFAC(resumed, nn.CrossEntropyLoss(), approx=approx, seed=123, stats_fraction=0.5)
    opt2.load_state_dict(saved_opt)
    assert run(opt2, range(16, 26)) == reference
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    if approx == "tridiag":  # the chain's inverse, the diagonal blocks beside it
        assert [type(op).__name__ for op in opt._inverse] == ["BlockTridiagInverse", "Diagonal",
                                                                "Diagonal"]


def test_non_finite_loss_rejects_the_step_and_leaves_every_statistic():
    model, (x, y) = _mixed(True), _data(16)
    opt = KFAC(model, nn.CrossEntropyLoss(), damping=1.0, seed=0)
    opt.step(x, y)
    params = [p.detach().clone() for p in model.parameters()]
    stats = copy.deepcopy(opt.state_dict()["statistics"])
    bad = x.clone()
    bad[3, 0, 1, 1] = math.nan
    with pytest.warns(KFACWarning, match="rejected"):
        assert not opt.step(bad, y)["accepted"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    after = opt.state_dict()["statistics"]
    assert after["count"] == 1 and sorted(after) == sorted(stats)
    assert all(torch.equal(a, b) for key in ("A", "G", "D") for a, b in zip(after[key], stats[key],
                                                                            strict=True))
    assert opt.step(x, y)["accepted"]


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        return self.shared(torch.tanh(self.shared(x)))


@pytest.mark.parametrize(("model", "inputs", "match"), [
    (lambda: _mixed(False), lambda: _data(8)[0],
     r"neighbouring chain layers model\.0 \(Conv2d, 16 locations per case\) and model\.4 \(Linear, 1\)"),
    (Siamese, lambda: torch.randn(8, 3, dtype=torch.float64),
     r"model\.shared is called 2 times per forward pass \(weight sharing\)"),
])
def test_tridiag_refuses_what_it_cannot_chain(model, inputs, match):
    net = model().double()
    x = inputs()
    y = torch.randint(0, 3, (x.shape[0],))
    with pytest.raises(ValueError, match=match):
        KFAC(net, nn.CrossEntropyLoss(), approx="tridiag").step(x, y)
    assert KFAC(net, nn.CrossEntropyLoss()).step(x, y)["accepted"]  # block-diagonal: fine
    with pytest.raises(ValueError, match="expected nn.Linear or nn.Conv2d layers to chain"):
        KFAC(nn.LayerNorm(3), nn.MSELoss(), approx="tridiag")


def test_cross_entropy_over_positions_is_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (3, 2)))  # (n, C=3, positions=2)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8, 2))
    with pytest.raises(ValueError, match=r"nn\.CrossEntropyLoss on model outputs of shape \(8, 3, 2\)"):
        KFAC(model, nn.CrossEntropyLoss()).step(x, y)
    with pytest.raises(ValueError, match=r"outputs \(n, C\)"):
        kfac_factors(model, nn.CrossEntropyLoss(), x, y)


class Swapping(nn.Module):
    """Two linear layers whose order flips on the second call."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.calls = nn.Linear(3, 3), nn.Linear(3, 3), 0

    def forward(self, x):
        self.calls += 1
        first, second = (self.a, self.b) if self.calls == 1 else (self.b, self.a)
        return second(torch.tanh(first(x)))


def test_more_refusals_name_the_problem():
    x, y = torch.randn(8, 3), torch.randn(8, 3)
    with pytest.raises(ValueError, match=r"the forward order of the chain layers changed to \[1, 0\]"):
        opt = KFAC(Swapping(), nn.MSELoss(), approx="tridiag", stats_fraction=1.0)
        opt.step(x, y)
        opt.step(x, y)
    with pytest.raises(ValueError, match=r"unsupported: expected one of \('diagonal', 'first_order', "
                                         r"'error'\), got 'sgd'"):
        KFAC(nn.Linear(3, 3), nn.MSELoss(), unsupported="sgd")

    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w, x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TupleOut()

        def forward(self, x):
            return self.inner(x)[0]

    with pytest.raises(TypeError, match=r"\(TupleOut\): K-FAC records a module's output, expected a "
                                        r"tensor, got tuple"):
        KFAC(Model(), nn.MSELoss()).step(x, y)


def test_a_state_for_other_blocks_is_refused():
    x, y = torch.randn(8, 3), torch.randn(8, 3)
    opt = KFAC(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), nn.MSELoss())
    opt.step(x, y)
    other = KFAC(nn.Sequential(nn.Linear(3, 3), nn.PReLU(3)), nn.MSELoss())
    with pytest.raises(ValueError, match=r"saved for blocks of kinds \['linear', 'scale_shift'\], the "
                                         r"model's are \['linear', 'diagonal'\]"):
        other.load_state_dict(opt.state_dict())
    stale = opt.state_dict()
    stale["version"] = 1  # the linear-only optimizer's checkpoints
    with pytest.raises(ValueError, match=f"expected version {optimizer_module._STATE_VERSION}, got 1"):
        opt.load_state_dict(stale)
    stale["version"] = 4  # the inverse in the layout before units
    with pytest.raises(ValueError, match="got 4 \\(saved before version 5 kept the inverse in "
                                         "another layout"):
        opt.load_state_dict(stale)
