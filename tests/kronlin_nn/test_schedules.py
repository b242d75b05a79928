import math

import pytest
import torch

from kronlin_nn.schedules import PolyakAverage, exponential_batch_size, sutskever_momentum


def test_batch_schedule_matches_the_curves_logs():
    # The authors' CURVES logs: m = 1000, 1006, 1012, ... reaching |S| = 20000 at k = 500.
    sizes = [exponential_batch_size(k, first=1000, total=20000) for k in (1, 2, 3, 500, 501, 900)]
    assert sizes == [1000, 1006, 1012, 20000, 20000, 20000]


@pytest.mark.parametrize("total", [20000, 60000, 5000])
def test_batch_schedule_is_the_closed_form(total):
    first, reach_at = min(1000, total // 20), 500
    b = (reach_at - 1) / math.log(total / first)
    sizes = [exponential_batch_size(k, first=first, total=total, reach_at=reach_at)
             for k in range(1, 700)]
    for k, m in enumerate(sizes, start=1):
        exact = first * math.exp((k - 1) / b)
        # floor of the exact value, up to rounding of the last ulp at integers
        assert m == min(total, math.floor(exact)) or abs(exact - round(exact)) < 1e-6
    assert sizes[0] == first and sizes[reach_at - 1] == total
    assert all(a <= c for a, c in zip(sizes, sizes[1:], strict=False))


def test_batch_schedule_edge_cases():
    assert exponential_batch_size(1, first=1000, total=800) == 800
    assert exponential_batch_size(7, first=10, total=10, reach_at=2) == 10
    with pytest.raises(ValueError):
        exponential_batch_size(0, total=100)
    with pytest.raises(ValueError):
        exponential_batch_size(1, total=100, reach_at=1)


def test_sutskever_momentum_values():
    assert sutskever_momentum(0) == 0.5
    assert sutskever_momentum(249) == 0.5
    assert sutskever_momentum(250) == 0.75
    assert sutskever_momentum(500) == pytest.approx(1 - 1 / 6)
    assert sutskever_momentum(10**6) == 0.99
    assert sutskever_momentum(10**6, mu_max=0.9) == 0.9
    assert sutskever_momentum(10**6, mu_max=0.0) == 0.0
    for t in range(0, 30000, 97):  # the published 2^(...) form
        published = min(1 - 2 ** (-1 - math.log2(t // 250 + 1)), 0.999)
        assert sutskever_momentum(t, 0.999) == pytest.approx(published, abs=1e-12)
    with pytest.raises(ValueError):
        sutskever_momentum(-1)
    with pytest.raises(ValueError):
        sutskever_momentum(0, mu_max=1.0)


def _reference_average(iterates, decay, start, warm_start):
    average = iterates[0]
    for k, theta in enumerate(iterates, start=1):
        if k < start:
            xi = 0.0
        elif warm_start:
            xi = min(1 - 1 / (k - start + 1), decay)
        else:
            xi = decay
        average = xi * average + (1 - xi) * theta
    return average


@pytest.mark.parametrize(("start", "warm_start"), [(1, True), (3, True), (200, True), (5, False)])
def test_polyak_average_matches_the_recursion(start, warm_start):
    torch.manual_seed(0)
    param = torch.zeros(4, dtype=torch.float64)
    average = PolyakAverage([param], decay=0.99, start=start, warm_start=warm_start)
    iterates = []
    for _ in range(250):
        param.add_(torch.randn(4, dtype=torch.float64))
        iterates.append(param.clone())
        average.update()
    expected = _reference_average(iterates, 0.99, start, warm_start)
    torch.testing.assert_close(average.average[0], expected, rtol=1e-12, atol=1e-12)


def test_polyak_warm_start_is_the_flat_mean_then_exponential():
    param = torch.zeros(1, dtype=torch.float64)
    average = PolyakAverage([param], start=1)
    for k in range(1, 51):
        param.fill_(k)
        average.update()
    assert average.average[0].item() == pytest.approx(25.5)  # mean of 1..50
    assert average.current_decay() == pytest.approx(1 - 1 / 50)
    for _ in range(100):
        average.update()
    assert average.current_decay() == 0.99


def test_polyak_before_start_tracks_the_iterate():
    param = torch.zeros(3)
    average = PolyakAverage([param], start=10)
    for k in range(9):
        param.fill_(float(k))
        average.update()
        assert not average.active
        torch.testing.assert_close(average.average[0], param)


def test_polyak_applied_swaps_in_and_restores():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # any optimizer
    average = PolyakAverage(model.parameters(), start=1)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        opt.zero_grad()
        model(torch.ones(1, 3)).square().sum().backward()
        opt.step()
        average.update()
    current = [p.detach().clone() for p in model.parameters()]
    with average.applied():
        for p, avg in zip(model.parameters(), average.average, strict=True):
            torch.testing.assert_close(p.detach(), avg)
    for p, c, b in zip(model.parameters(), current, before, strict=True):
        torch.testing.assert_close(p.detach(), c)
        assert not torch.equal(c, b)


def test_polyak_rejects_bad_arguments():
    with pytest.raises(ValueError):
        PolyakAverage([torch.zeros(1)], decay=1.0)
    with pytest.raises(ValueError):
        PolyakAverage([torch.zeros(1)], start=0)
