"""The README's promises: its examples print what it shows, its commands match its results."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from update_readme import updated

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n\nprints[^\n]*\n\n```text\n(?P<output>.*?)```",
                     re.DOTALL)


def _same(shown: str, printed: str) -> bool:
    """Equal text, and numbers within 5 % or one unit of the last digit shown."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", printed):
        return False
    for e, a in zip(NUMBER.findall(shown), NUMBER.findall(printed), strict=True):
        digits = len(e.split(".")[1]) if "." in e and "e" not in e else 0
        if not math.isclose(float(e), float(a), rel_tol=0.05, abs_tol=1.01 * 10.0 ** -digits):
            return False
    return True


EXAMPLES = [m.groupdict() for m in EXAMPLE.finditer(README)]


def test_every_python_example_shows_its_output():
    assert len(EXAMPLES) == README.count("```python") == 2


@pytest.mark.parametrize("example", EXAMPLES, ids=["kronlin", "kfac"])
def test_the_readme_examples_print_what_the_readme_shows(example, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", example["code"]], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    shown, printed = example["output"].splitlines(), done.stdout.splitlines()
    assert len(shown) == len(printed), (shown, printed)
    for s, p in zip(shown, printed, strict=True):
        assert _same(s, p), f"README shows {s!r}, the example printed {p!r}"


def test_the_comparison_of_printed_numbers():
    assert _same("epoch 3: loss 0.177, test accuracy 94.6%", "epoch 3: loss 0.180, test accuracy 94.1%")
    assert not _same("test accuracy 94.6%", "test accuracy 80.0%")
    assert not _same("x recovered: True", "x recovered: False")
    assert not _same("loss 0.177", "loss 0.177 nan")


def test_every_install_line_pins_torch_the_same_way():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    pins = set()
    for page in pages:
        for line in page.read_text(encoding="utf-8").splitlines():
            if "pip install" not in line or "-e" not in line.split("pip install", 1)[1]:
                continue
            installed = line.split("pip install", 1)[1]
            if '".[' in installed:  # an extra: every one of them needs torch
                assert installed.lstrip().startswith("torch=="), f"{page.name}: {line.strip()}"
            pins.update(re.findall(r"torch==(\S+)", line))
    assert len(pins) == 1, pins


def test_the_test_command_states_its_duration():
    assert re.search(r"Run the tests \(about \d+ minutes on 2 CPU cores\)", README)


def test_the_results_tables_are_generated_from_their_results_json():
    assert updated(README) == README, "run: python docs/update_readme.py"
    assert README.count("<!-- results docs/results/") == 2


def test_the_main_job_command_is_the_one_that_recorded_its_table():
    recorded = json.loads((ROOT / "docs/results/mnist/results.json").read_text())["config"]
    shown = re.search(r"&& (python -m kronlin_nn\.experiments\.autoencoder [^\n`]*)", README)[1]
    # --no-progress only hides the progress display; everything else must be the same.
    assert shown.split() == [a for a in recorded["command"].split() if a != "--no-progress"]
