"""The single-process parts of kronlin_nn.distributed: the union order, LPT, packing, the grid.

The collectives themselves run in process groups in ``test_distributed_ranks.py``.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kronlin_nn import KFAC
from kronlin_nn.distributed import (
    Assignment,
    Replicas,
    Shards,
    _pack,
    _unpack,
    lpt,
    union_order,
    union_positions,
)

from .helpers import tiny_mlp

shard_sizes = st.lists(st.integers(1, 12), min_size=1, max_size=5)


@given(shard_sizes)
def test_the_union_is_ordered_by_each_cases_fractional_position_then_rank(sizes):
    keys = sorted((Fraction(2 * i + 1, 2 * m), r, i) for r, m in enumerate(sizes) for i in range(m))
    assert union_order(sizes) == [(r, i) for _, r, i in keys]


@given(st.integers(1, 40), st.integers(1, 6))
def test_shards_dealt_round_robin_give_back_the_batch_in_its_order(M, W):
    sizes = [len(range(r, M, W)) for r in range(W) if r < M]
    positions = [r + W * i for r, i in union_order(sizes)]  # batch[r::W][i] is batch[r + W·i]
    assert positions == list(range(M))


@given(shard_sizes, st.data())
def test_a_ranks_part_of_a_sub_batch_is_its_first_cases_at_their_union_positions(sizes, draw):
    n = draw.draw(st.integers(1, sum(sizes)))
    order = union_order(sizes)
    for rank in range(len(sizes)):
        shards = Shards(tuple(sizes), rank)
        mine = [i for r, i in order[:n] if r == rank]
        assert mine == list(range(len(mine)))  # a prefix of the shard
        np.testing.assert_array_equal(shards.positions(n),
                                      [p for p, (r, _) in enumerate(order[:n]) if r == rank])
        np.testing.assert_array_equal(union_positions(sizes, rank), shards._positions[rank])
        if all(any(r == q for r, _ in order[:n]) for q in range(len(sizes))):
            assert shards.count(n, "stats_fraction") == len(mine)


def test_a_rank_without_a_case_of_a_sub_batch_is_refused():
    with pytest.raises(ValueError, match=r"stats_fraction: rank 1 gets none of the union's first 4 "
                                         r"cases \(shard sizes \[30, 2\]\)"):
        Shards((30, 2), 0).count(4, "stats_fraction")


def makespan(costs, owners, bins):
    loads = [0.0] * bins
    for c, o in zip(costs, owners, strict=True):
        loads[o] += c
    return max(loads)


@given(st.lists(st.integers(0, 100), min_size=1, max_size=7), st.integers(1, 3))
def test_lpt_is_within_grahams_bound_of_the_brute_force_optimum(costs, bins):
    best = min(makespan(costs, owners, bins)
               for owners in itertools.product(range(bins), repeat=len(costs)))
    found = makespan(costs, lpt(costs, bins), bins)
    assert best <= found <= (4 / 3 - 1 / (3 * bins)) * best + 1e-9


def test_lpt_gives_the_costliest_jobs_their_own_ranks_and_fills_the_least_loaded():
    assert lpt([1.0, 8.0, 27.0], 3) == [2, 1, 0]  # one each, the costliest to rank 0
    assert lpt([5.0, 4.0, 3.0, 3.0, 3.0], 2) == [0, 1, 1, 0, 1]  # loads 8 and 10 (optimum 9)
    assert lpt([0.0, 2.0], 1) == [0, 0]


def test_symmetric_matrices_travel_as_their_upper_triangle():
    torch.manual_seed(0)
    S = torch.randn(4, 4, dtype=torch.float64)
    S = S + S.T
    R, v = torch.randn(3, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    flat = _pack([S, R, v, S], [True, False, True, False])
    assert flat.numel() == 10 + 15 + 6 + 16
    back = _unpack(flat, [(S.shape, True), (R.shape, False), (v.shape, True), (S.shape, False)])
    for a, b in zip(back, [S, R, v, S], strict=True):
        assert torch.equal(a, b)


def test_the_grid_of_ranks_applying_each_unit():
    # 8 ranks, 2 per unit: 2 rows of 4 columns; unit u refreshed by rank owners[u]
    grid = [Assignment((5, 2, 7), 8, 2, rank) for rank in range(8)]
    assert grid[6].column_ranks() == [2, 6] and grid[6].row_ranks() == [4, 5, 6, 7]
    assert [a.applies(0) for a in grid] == [False, True, False, False, False, True, False, False]
    ends = Assignment((0, 1), 2, 2, 1), Assignment((0, 1), 2, 1, 1)
    assert [ends[0].applies(u) for u in (0, 1)] == [True, True]  # every rank holds every inverse
    assert [ends[1].applies(u) for u in (0, 1)] == [False, True]  # each holds its own


def test_one_process_has_replicas_of_size_one_that_communicate_nothing():
    model = tiny_mlp([3, 4, 2])
    network, replicas = Replicas.of(model)
    assert network is model and (replicas.rank, replicas.size) == (0, 1)
    t = [torch.ones(2)]
    assert replicas.sum_shares(t, 0.5, "gradient")[0] is t[0]
    opt = KFAC(model, torch.nn.MSELoss(), seed=0, grad_worker_fraction=0.5)  # W = 1: ignored
    opt.step(torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    assert opt.traffic.step == {} and opt.traffic.total == {}


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_a_grad_worker_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=f"grad_worker_fraction: expected a fraction in \\(0, 1\\], "
                                         f"got {fraction}"):
        KFAC(tiny_mlp([3, 2]), torch.nn.MSELoss(), grad_worker_fraction=fraction)
