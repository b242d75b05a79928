"""Real models train: a CNN on scikit-learn's digits, an MLP with LayerNorm, a bag of embeddings.

The three are workloads of the suite (:mod:`benchmarks.workloads.workloads`), trained full-batch;
the target is the loss of Adam after 40 iterations at the best learning rate of a grid whose best
point is interior ("tuned"). The issue's criterion, with ``KFAC(model, loss_fn)`` defaults, is
reaching it in at most 20 iterations. The second test sets the initial damping, and nothing
else.
"""

import functools
import warnings

import pytest
import torch
from torch import nn

from benchmarks.workloads.workloads import WORKLOADS as SUITE
from kronlin_nn import KFAC

ADAM_GRID = (0.01, 0.03, 0.1, 0.3)
ADAM_ITERATIONS = 40
LOSS = nn.CrossEntropyLoss()
WORKLOADS = ("cnn-digits", "layernorm-mlp", "bag-of-embeddings")  # the suite's definitions


def _problem(name):
    """The workload's model (its initial weights) and whole training set."""
    workload = SUITE[name]
    return (workload.build_model(), *workload.dataset())


def _final_loss(model, x, y):
    with torch.no_grad():
        return LOSS(model(x), y).item()


@functools.cache
def _tuned_adam_loss(workload):
    """The best 40-iteration Adam loss of the grid; its best learning rate must be interior."""
    losses = []
    for lr in ADAM_GRID:
        model, x, y = _problem(workload)
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
    model, x, y = _problem(workload)
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


# Measured with the defaults: 19 (CNN; its best λ₀ of a grid needs 27), 13 (MLP with LayerNorm)
# and 19 iterations (bag).
@pytest.mark.parametrize("workload", WORKLOADS)
def test_defaults_reach_tuned_adams_loss_in_half_the_iterations(workload):
    reached = _iterations_to_reach(workload)
    assert reached is not None and reached <= ADAM_ITERATIONS // 2


@pytest.mark.parametrize("workload", WORKLOADS)
def test_with_the_initial_damping_set_the_blocks_train_faster_than_tuned_adam(workload):
    """Measured (float32, 1 thread): 24 (CNN), 10 (MLP with LayerNorm), 22 iterations (bag)."""
    reached = _iterations_to_reach(workload, damping=1e-2)
    assert reached is not None and reached <= 3 * ADAM_ITERATIONS // 4
