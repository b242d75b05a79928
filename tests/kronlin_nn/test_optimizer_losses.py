"""Masked and weighted losses through the whole iteration: the same as the objective without them."""

import pytest
import torch
from torch import nn

from kronlin_nn import KFAC

from .helpers import RepeatColumns, data, flat_params, tiny_mlp

SIZES = [3, 4, 5, 3]


def _run(model, loss_fn, x, y, steps=6, **kw):
    opt = KFAC(model, loss_fn, seed=3, **kw)
    return [opt.step(x, y) for _ in range(steps)], flat_params(model)


def _assert_same_runs(run, expected, rtol=1e-9):
    (history, params), (expected_history, expected_params) = run, expected
    for s, t in zip(history, expected_history, strict=True):
        for key in s:
            assert s[key] == pytest.approx(t[key], rel=rtol, abs=1e-13, nan_ok=True), key
    torch.testing.assert_close(params, expected_params, rtol=rtol, atol=1e-12)


WHOLE_BATCH = dict(stats_fraction=1.0, quad_fraction=1.0, inverse_every=2, gamma_every=4)


# An initial λ is given: the λ₀ search's power iteration starts from the ones vector, the null
# vector of a softmax output layer's G, so λ₀ varies with rounding (damping.py's business).
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_ignored_cases_give_the_iteration_of_the_valid_cases(approx, fisher, reduction):
    """CrossEntropyLoss's ignore_index (-100 by default): as if the ignored cases were not there."""
    x, y = data("ce", 24, SIZES[0], SIZES[-1])
    y[torch.tensor([0, 5, 6, 11, 17, 23])] = -100
    valid = y != -100
    kw = dict(approx=approx, fisher=fisher, damping=0.1, **WHOLE_BATCH)
    masked = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(reduction=reduction), x, y, **kw)
    alone = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(reduction=reduction), x[valid], y[valid],
                 **kw)
    _assert_same_runs(masked, alone)


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_the_inputs_of_ignored_cases_change_nothing(approx):
    """fisher="mc", sub-batches S₁ and S₂ with ignored cases in them."""
    x, y = data("ce", 64, SIZES[0], SIZES[-1])
    ignored = torch.tensor([1, 2, 9, 30, 31, 50])
    y[ignored] = -100
    other = x.clone()
    other[ignored] = torch.randn(len(ignored), SIZES[0], dtype=x.dtype) * 10
    kw = dict(approx=approx, stats_fraction=0.25, quad_fraction=0.5, quad_min_cases=1)
    _assert_same_runs(_run(tiny_mlp(SIZES), nn.CrossEntropyLoss(), x, y, **kw),
                      _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(), other, y, **kw), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_integer_class_weights_give_the_iteration_of_repeated_cases(reduction):
    x, y = data("ce", 16, SIZES[0], SIZES[-1])
    W = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    repeats = W[y].long()
    kw = dict(fisher="exact", approx="tridiag", damping=0.1, **WHOLE_BATCH)
    weighted = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(weight=W, reduction=reduction), x, y, **kw)
    repeated = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(reduction=reduction),
                    x.repeat_interleave(repeats, 0), y.repeat_interleave(repeats), **kw)
    _assert_same_runs(weighted, repeated)


@pytest.mark.parametrize("fisher", ["mc", "empirical", "exact"])
def test_label_smoothing_gives_the_iteration_of_smoothed_probability_targets(fisher):
    x, y = data("ce", 48, SIZES[0], SIZES[-1])
    eps = 0.2
    q = (1 - eps) * nn.functional.one_hot(y, 3).double() + eps / 3
    smoothed = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(label_smoothing=eps), x, y, fisher=fisher)
    soft = _run(tiny_mlp(SIZES), nn.CrossEntropyLoss(), x, q, fisher=fisher)
    _assert_same_runs(smoothed, soft)


def test_integer_output_weights_give_the_iteration_of_repeated_outputs():
    x, y = data("bce", 16, SIZES[0], SIZES[-1])
    w = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    kw = dict(fisher="exact", **WHOLE_BATCH)
    weighted = _run(tiny_mlp(SIZES), nn.BCEWithLogitsLoss(weight=w, reduction="sum"), x, y, **kw)
    twin = nn.Sequential(*tiny_mlp(SIZES), RepeatColumns(w.long()))
    repeated = _run(twin, nn.BCEWithLogitsLoss(reduction="sum"), x,
                    y.repeat_interleave(w.long(), dim=1), **kw)
    _assert_same_runs(weighted, repeated)


def test_neutral_pos_weight_is_no_pos_weight_and_the_empirical_fisher_of_weights_is_refused():
    x, y = data("bce", 32, SIZES[0], SIZES[-1])
    _assert_same_runs(_run(tiny_mlp(SIZES), nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), x, y),
                      _run(tiny_mlp(SIZES), nn.BCEWithLogitsLoss(), x, y), rtol=1e-12)
    history, _ = _run(tiny_mlp(SIZES), nn.BCEWithLogitsLoss(pos_weight=torch.full((3,), 3.0)),
                      x, y, steps=10)
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ValueError, match="fisher='empirical' with loss_fn.weight"):
        KFAC(tiny_mlp(SIZES), nn.CrossEntropyLoss(weight=torch.ones(3)), fisher="empirical")
