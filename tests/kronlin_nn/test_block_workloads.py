"""Real models train: a CNN on scikit-learn's digits, an MLP with LayerNorm, a bag of embeddings.

Each is trained full-batch; the target is the loss of Adam after 40 iterations at the best
learning rate of a grid whose best point is interior ("tuned"). The issue's criterion, with
``KFAC(model, loss_fn)`` defaults, is reaching it in at most 20 iterations; with today's
default initial damping (the largest curvature eigenvalue, about 100× too large on these
problems) K-FAC spends its first iterations trust-region-like, so that test is marked as
expected to fail (strictly: a pass is reported) for the workloads in ``AWAITING_DEFAULTS``.
The second test sets the initial damping, and nothing else, to show what the blocks do today.
"""

import functools
import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kronlin_nn import KFAC

ADAM_GRID = (0.01, 0.03, 0.1, 0.3)
ADAM_ITERATIONS = 40
LOSS = nn.CrossEntropyLoss()


@functools.cache
def _digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)


def _cnn_digits():
    X, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    return model, X[:512].reshape(-1, 1, 8, 8), y[:512]


def _layer_norm_mlp():
    X, y = _digits()
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 10)), X, y


class Bag(nn.Module):
    """The mean of the token embeddings, then an MLP."""

    def __init__(self, vocabulary, classes, width=8, hidden=16):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.out = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, tokens):
        return self.out(self.embed(tokens).mean(1))


def _bag_of_embeddings(n=1024, vocabulary=50, length=10, classes=4):
    """Synthetic "documents": the class is the argmax of a random teacher's mean token score."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocabulary, (n, length), generator=g)
    labels = torch.argmax(torch.randn(vocabulary, classes, generator=g)[tokens].mean(1), 1)
    torch.manual_seed(0)
    return Bag(vocabulary, classes), tokens, labels


WORKLOADS = {"cnn-digits": _cnn_digits, "layernorm-mlp": _layer_norm_mlp,
             "bag-of-embeddings": _bag_of_embeddings}


def _final_loss(model, x, y):
    with torch.no_grad():
        return LOSS(model(x), y).item()


@functools.cache
def _tuned_adam_loss(workload):
    """The best 40-iteration Adam loss of the grid; its best learning rate must be interior."""
    losses = []
    for lr in ADAM_GRID:
        model, x, y = WORKLOADS[workload]()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(ADAM_ITERATIONS):
            opt.zero_grad()
            LOSS(model(x), y).backward()
            opt.step()
        losses.append(_final_loss(model, x, y))
    best = min(losses)
    assert losses.index(best) not in (0, len(losses) - 1), f"grid not tuned: {losses}"
    return best


def _iterations_to_reach(workload, **config):
    """K-FAC's first iteration whose loss is at most tuned Adam's (at most 40); no warning allowed."""
    target = _tuned_adam_loss(workload)
    model, x, y = WORKLOADS[workload]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # torch's own, once per process, on the first forward-mode AD call (issue 10 hides it)
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated",
                                category=DeprecationWarning)
        opt = KFAC(model, LOSS, seed=0, **config)
        for k in range(1, ADAM_ITERATIONS + 1):
            assert opt.step(x, y)["accepted"]
            if _final_loss(model, x, y) <= target:
                return k
    return None


# Measured on this branch's defaults (λ₀ = the largest curvature eigenvalue): none reached. With
# issue 10's defaults (trial merge): 23, 12 and 25 iterations; "layernorm-mlp" then passes.
AWAITING_DEFAULTS = {"bag-of-embeddings"}


@pytest.mark.parametrize("workload", [
    pytest.param(w, marks=pytest.mark.xfail(strict=True, reason="awaits defaults that need no tuning "
                                                                 "(issue 10)"))
    if w in AWAITING_DEFAULTS else w for w in WORKLOADS])
def test_defaults_reach_tuned_adams_loss_in_half_the_iterations(workload):
    reached = _iterations_to_reach(workload)
    assert reached is not None and reached <= ADAM_ITERATIONS // 2


@pytest.mark.parametrize("workload", WORKLOADS)
def test_with_the_initial_damping_set_the_blocks_train_faster_than_tuned_adam(workload):
    """Measured (float32, 1 thread): 24 (CNN), 10 (MLP with LayerNorm), 22 iterations (bag)."""
    reached = _iterations_to_reach(workload, damping=1e-2)
    assert reached is not None and reached <= 3 * ADAM_ITERATIONS // 4
