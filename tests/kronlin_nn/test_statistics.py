import pytest
import torch

from kronlin_nn.statistics import FactorStatistics, ema_decay


def test_ema_decay_schedule():
    assert ema_decay(1, 0.95) == 0.0
    assert ema_decay(2, 0.95) == 0.5
    assert ema_decay(10, 0.95) == 0.9
    assert ema_decay(20, 0.95) == 0.95
    assert ema_decay(1000, 0.95) == 0.95
    with pytest.raises(ValueError, match="k"):
        ema_decay(0, 0.95)


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [([torch.randn(3, 3, generator=g)], [torch.randn(2, 2, generator=g)],
             [torch.randn(3, 4, generator=g)], [torch.randn(2, 5, generator=g)]) for _ in range(n)]


def test_warm_start_returns_the_first_batch_exactly():
    """Spec §13: k = 1 gives the batch estimate itself (ε₁ = 0)."""
    stats = FactorStatistics(0.95)
    (A, G, Ac, Gc), = _batches(1)
    stats.update(A, G, Ac, Gc)
    assert torch.equal(stats.A[0], A[0]) and torch.equal(stats.G[0], G[0])
    assert torch.equal(stats.A_cross[0], Ac[0]) and torch.equal(stats.G_cross[0], Gc[0])
    assert stats.A[0] is not A[0]  # a copy: later updates do not touch the caller's tensor


def test_moving_average_matches_the_recursion():
    stats = FactorStatistics(0.6)
    expected = None
    for k, (A, G, Ac, Gc) in enumerate(_batches(6), start=1):
        stats.update(A, G, Ac, Gc)
        eps = min(1 - 1 / k, 0.6)
        expected = A[0] if expected is None else eps * expected + (1 - eps) * A[0]
    torch.testing.assert_close(stats.A[0], expected)
    assert stats.count == 6


def test_state_dict_round_trip():
    stats = FactorStatistics(0.95)
    for batch in _batches(3):
        stats.update(*batch)
    other = FactorStatistics(0.5)
    other.load_state_dict(stats.state_dict())
    assert other.count == 3 and other.ema_max == 0.95
    assert torch.equal(other.G_cross[0], stats.G_cross[0])
    assert other.G_cross[0] is not stats.G_cross[0]


def test_rejects_bad_ema_max():
    with pytest.raises(ValueError, match="ema_max"):
        FactorStatistics(1.0)


def test_named_groups_are_averaged_alike_and_must_keep_their_sizes():
    stats = FactorStatistics(0.5)
    (A, G, _, _), (A2, G2, _, _) = _batches(2)
    D, D2 = [torch.ones(4)], [torch.zeros(4)]
    stats.update(A, G, D=D)
    stats.update(A2, G2, D=D2)
    torch.testing.assert_close(stats.groups["D"][0], torch.full((4,), 0.5))
    assert stats.tensors() == [*stats.A, *stats.G, *stats.A_cross, *stats.G_cross, *stats.groups["D"]]
    with pytest.raises(ValueError, match=r"update: expected groups of sizes .*'D': 1"):
        stats.update(A, G)
