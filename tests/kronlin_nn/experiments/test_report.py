import math
import re

import pytest

from kronlin_nn.experiments.report import (
    crossing,
    describe_search,
    format_table,
    format_text,
    legend,
    summarize,
)


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
    assert "| kfac-blockdiag | 10 | 4.0 | 10 | 1.000 | 2.0 | 0.200 | 0.050 |" in table
    assert "| sgd | 100 | 10.0 | 10 | 10.00 | – | – | – |" in table


def test_the_text_table_is_aligned_and_has_a_legend_for_every_column():
    summary = summarize({
        "kfac-blockdiag-nomomentum": {"records": _records([100, 50], [0, 2]), "iterations": 7,
                                      "seconds": 2.0, "eval_seconds": 0.0},
        "sgd": {"records": _records([100, 10], [0, 5]), "iterations": 1234,
                "seconds": 5.0, "eval_seconds": 0.0},
    })
    text = format_text(summary)
    assert "|" not in text and "\r" not in text
    table, notes = text.split("\n\n")
    header, rule, *rows = table.splitlines()
    assert header.split("  ")[0] == "optimizer" and set(rule) == {"-", " "}
    # names left-aligned; every other column ends at the same place in every line
    ends = [m.end() for m in re.finditer(r"-+", rule)][1:]
    for line in [header, *rows]:
        assert line[0] != " "
        for end in ends:
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), (line, end)
    assert rows[0].split() == ["kfac-blockdiag-nomomentum", "7", "2.0", "10", "50.00", "never",
                               "never", "never"]
    assert rows[1].split() == ["sgd", "1234", "5.0", "10", "10.00", "–", "–", "–"]
    assert max(len(line) for line in text.splitlines()) <= 110  # no wrap in a 120-column terminal
    titles = [t for t in re.split(r"\s{2,}", header)]
    explained = [line.split(":")[0].strip() for line in notes.splitlines() if not line.startswith("      ")]
    assert explained == titles[1:] + ["–"]
    assert "never: did not reach sgd's final error" in notes
    assert [line.split(":")[0] for line in legend(summary)] == titles[1:] + ["–"]

def test_summarize_without_baseline_or_never_reaching_it():
    slow = {"records": _records([100, 90], [0, 1]), "iterations": 1, "seconds": 1.0,
            "eval_seconds": 0.0}
    assert "time_ratio" not in summarize({"kfac-tridiag": slow})["kfac-tridiag"]
    fast = {"records": _records([100, 1], [0, 1]), "iterations": 1, "seconds": 1.0,
            "eval_seconds": 0.0}
    summary = summarize({"kfac-tridiag": slow, "sgd": fast})
    assert summary["kfac-tridiag"]["time_ratio"] is None
    alone = format_text(summarize({"kfac-tridiag": slow}))
    assert "ratio" not in alone and "never" not in alone and "final error" in alone


def test_describe_search():
    line = describe_search({"grid_paper_units": [0.05, 0.02], "final_errors": [53.1066, 45.349],
                            "chosen": 0.02, "iterations_each": 150, "seconds": 103.36})
    assert line == ("sgd learning-rate grid search (150 steps each, final training error): "
                    "0.05: 53.11, 0.02: 45.35; chose 0.02; cost 103.4 s")
