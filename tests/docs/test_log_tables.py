import re
from pathlib import Path

import pytest
from log_tables import Line, Table, is_numeric, parse_log

ROOT = Path(__file__).resolve().parents[2]

RECORDED = sorted((ROOT / "docs" / "results" / "performance").glob("*.md"))


def _log(path):
    return re.search(r"^```text\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL).group(1)


def _words(blocks):
    for block in blocks:
        if isinstance(block, Line):
            yield from block.text.split()
        else:
            for row in ([block.header] if block.header else []) + block.rows:
                for cell in row:
                    yield from cell.split()


def test_columns_follow_the_layout_not_the_word_count():
    log = ("Kron matmat, float64\n"
           "  kronlin                  1094.27 ms    1.00×     31.4 GF/s  ok 0e+00\n"
           "  NumPy chain (tensordot)   773.25 ms    4.03×                ok 3e-16\n"
           "\n"
           "total 172 s\n")
    blocks = parse_log(log)
    assert blocks[0] == Line("Kron matmat, float64", heading=True)
    assert blocks[1] == Table(None, [
        ["kronlin", "1094.27 ms", "1.00×", "31.4 GF/s", "ok 0e+00"],
        ["NumPy chain (tensordot)", "773.25 ms", "4.03×", "", "ok 3e-16"],
    ])
    assert blocks[2] == Line("total 172 s", heading=False)


def test_a_first_line_without_digits_is_the_header():
    log = ("  phase       ms/step  x SGD\n"
           "  forward       202.0   0.42\n"
           "  extra back     18.7   0.04\n")
    assert parse_log(log) == [Table(["phase", "ms/step", "x SGD"],
                                    [["forward", "202.0", "0.42"], ["extra back", "18.7", "0.04"]])]


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_recorded_logs_lose_no_word_and_tables_are_rectangular(path):
    log = _log(path)
    blocks = parse_log(log)
    assert list(_words(blocks)) == log.split()
    tables = [b for b in blocks if isinstance(b, Table)]
    assert tables
    for table in tables:
        width = len(table.header or table.rows[0])
        assert all(len(row) == width for row in table.rows)


def test_the_recorded_comparison_reads_as_tables():
    blocks = parse_log(_log(ROOT / "docs" / "results" / "performance" / "compare.md"))
    first = next(i for i, b in enumerate(blocks)
                 if isinstance(b, Line) and b.text.startswith("Kron matmat, two 512×512"))
    table = blocks[first + 1]
    assert table.rows[0][0] == "kronlin" and table.rows[0][-1].startswith("ok ")
    assert all(is_numeric(row[1]) and row[1].endswith(" ms") for row in table.rows)
    targets = next(b for b, after in zip(blocks, blocks[1:], strict=False)
                   if isinstance(b, Line) and b.text.startswith("targets"))
    assert targets.heading
    verdicts = blocks[blocks.index(targets) + 1]
    assert {row[-1] for row in verdicts.rows} <= {"PASS", "FAIL"}


def test_is_numeric():
    assert is_numeric("1.00×") and is_numeric("96% GEMM") and is_numeric("-3e-5") and is_numeric(".5")
    assert not is_numeric("ok 0e+00") and not is_numeric("n =") and not is_numeric("")
