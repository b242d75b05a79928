"""The Markdown fragments the comparison scripts save for the documentation."""

import sys

from benchmarks._report import machine, recorded


def test_recorded_saves_what_is_printed_under_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--markdown", "out dir/x.md"])
    path = tmp_path / "performance" / "x.md"
    with recorded(str(path)):
        print("ratio 1.23x")
        print("second line")
    assert capsys.readouterr().out == "ratio 1.23x\nsecond line\n"  # still printed
    text = path.read_text()
    header, block = text.split("\n\n", 1)
    assert header.startswith("`python benchmarks/x.py --markdown 'out dir/x.md'` on ")
    assert header.endswith(f"{machine()}:")
    assert block == "```text\nratio 1.23x\nsecond line\n```\n"


def test_recorded_without_a_path_only_prints(tmp_path, capsys):
    with recorded(None):
        print("hello")
    assert capsys.readouterr().out == "hello\n"
    assert list(tmp_path.iterdir()) == []
