"""The units of an inverse refresh: segments, statistics, candidates, and inverses as tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kronlin_nn import KFAC
from kronlin_nn.units import BlockUnit, ChainUnit

from .helpers import data, tiny_mlp


def _refreshed(approx):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    opt = KFAC(model, nn.CrossEntropyLoss(), approx=approx, seed=0, damping=0.1)
    x, y = data("ce", 32, 4, 3)
    opt.step(x, y)
    return opt


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_units_cover_the_flat_vector_in_order_with_their_own_statistics(approx):
    opt = _refreshed(approx)
    units = opt._units
    assert [u.start for u in units] == [0, *(u.stop for u in units[:-1])]
    assert units[-1].stop == opt._layout.size
    kinds = [type(u).__name__ for u in units]
    if approx == "tridiag":  # the two linear layers chained, the LayerNorm beside them
        assert kinds == ["ChainUnit", "BlockUnit"]
        assert units[0].keys == (("A", 0), ("A", 1), ("G", 0), ("G", 1), ("A_cross", 0),
                                 ("G_cross", 0))
        assert units[0].symmetric_statistics() == [True] * 4 + [False] * 2
    else:
        assert kinds == ["BlockUnit"] * 3 and units[1].keys == (("D", 0),)


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_each_units_inverse_rebuilt_from_its_tensors_applies_as_the_original(approx):
    opt = _refreshed(approx)
    g = torch.randn(opt._layout.size, dtype=torch.float64)
    for unit, op in zip(opt._units, opt._inverse, strict=True):
        tensors = unit.tensors(op)
        rebuilt = unit.operator([t.clone() for t in tensors])
        segment = g[unit.start: unit.stop]
        assert torch.equal(rebuilt @ segment, op @ segment)
        flags = unit.symmetric(tensors)
        for t, symmetric in zip(tensors, flags, strict=True):
            if symmetric:
                assert torch.equal(t, t.T)
        if isinstance(unit, ChainUnit):  # couplings and conditionals are not symmetric
            assert flags == [False] * (len(tensors) - 2) + [True, True]


def test_a_block_with_non_finite_statistics_factors_no_candidate():
    opt = _refreshed("blockdiag")
    unit = opt._units[0]
    assert isinstance(unit, BlockUnit)
    stats = [opt._stats.groups[name][i].clone() for name, i in unit.keys]
    gammas = torch.tensor([0.1, 1.0], dtype=torch.float64)
    assert unit.candidates(stats, 1.0, gammas, "trace").ok.tolist() == [True, True]
    stats[0][0, 0] = math.nan
    assert unit.candidates(stats, 1.0, gammas, "trace").ok.tolist() == [False, False]


def test_a_chain_that_cannot_be_factored_for_a_candidate_drops_that_candidate_only():
    model = tiny_mlp([3, 4, 2])
    opt = KFAC(model, nn.MSELoss(), approx="tridiag", seed=0, damping=0.1)
    opt.step(*data("mse", 16, 3, 2))
    (chain,) = opt._units
    stats = [opt._stats.groups[name][i] for name, i in chain.keys]
    # γ = -1000 shifts the factors by a large negative multiple of I: not positive definite
    found = chain.candidates(stats, 1.0, torch.tensor([0.1, -1e3], dtype=torch.float64), "one")
    assert found.ok.tolist() == [True, False]
