import math

import pytest

from kronlin_nn.experiments.report import crossing, format_table, summarize


def _records(errors, seconds, iterations=None):
    iterations = iterations or list(range(len(errors)))
    return [
        {"iteration": i, "seconds": s, "batch_size": 10, "train_error": e}
        for e, s, i in zip(errors, seconds, iterations, strict=True)
    ]


def test_crossing_interpolates_in_log_error():
    records = _records([100.0, 10.0, 1.0], [0.0, 1.0, 3.0])
    assert crossing(records, 10.0, "seconds") == pytest.approx(1.0)
    assert crossing(records, math.sqrt(10.0), "seconds") == pytest.approx(2.0)
    assert crossing(records, 1000.0, "seconds") == 0.0
    assert crossing(records, 0.5, "seconds") is None
    assert crossing(_records([5.0, math.nan, 1.0], [0, 1, 2]), 2.0, "iteration") == 2.0


def test_summarize_ratios_against_the_baseline():
    runs = {
        "kfac-blockdiag": {"records": _records([100, 10, 1], [0, 2, 4], [0, 5, 10]),
                           "iterations": 10, "seconds": 4.0, "eval_seconds": 0.5},
        "sgd": {"records": _records([100, 50, 10], [0, 5, 10], [0, 50, 100]),
                "iterations": 100, "seconds": 10.0, "eval_seconds": 0.2},
    }
    summary = summarize(runs)
    assert summary["sgd"]["final_error"] == 10
    kfac = summary["kfac-blockdiag"]
    assert kfac["seconds_to_baseline"] == pytest.approx(2.0)
    assert kfac["time_ratio"] == pytest.approx(0.2)
    assert kfac["iteration_ratio"] == pytest.approx(0.05)
    table = format_table(summary)
    assert "| kfac-blockdiag | 10 | 4.0 | 10 | 1 | 2.0 | 0.200 | 0.050 |" in table
    assert "| sgd | 100 | 10.0 | 10 | 10 | – | – | – |" in table


def test_summarize_without_baseline_or_never_reaching_it():
    slow = {"records": _records([100, 90], [0, 1]), "iterations": 1, "seconds": 1.0,
            "eval_seconds": 0.0}
    assert "time_ratio" not in summarize({"kfac-tridiag": slow})["kfac-tridiag"]
    fast = {"records": _records([100, 1], [0, 1]), "iterations": 1, "seconds": 1.0,
            "eval_seconds": 0.0}
    summary = summarize({"kfac-tridiag": slow, "sgd": fast})
    assert summary["kfac-tridiag"]["time_ratio"] is None
