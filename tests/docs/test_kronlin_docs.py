"""The result directives of docs/_ext/kronlin_docs.py, through a small Sphinx build."""

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from sphinx.cmd.build import build_main

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "docs" / "_ext"

PAGE = """\
# Results

```{experiment-results} run/results.json
:command: make-run
```

```{results-include} bench.md
:command: make-bench
```

## Missing

```{experiment-results} gpu/results.json
:command: make-gpu
```

```{results-figure} gpu/error_vs_time.png
:command: make-gpu
A caption.
```

```{results-include} other.md
:command: make-other
```
"""


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    src = tmp_path_factory.mktemp("site")
    (src / "conf.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(EXT)!r})
        extensions = ["sphinx.ext.autodoc", "myst_parser", "kronlin_docs", "html_checks"]
        exclude_patterns = ["results/**"]
    """))
    (src / "index.md").write_text(PAGE)
    results = src / "results"
    (results / "run").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "results" / "mnist" / "results.json", results / "run")
    (results / "bench.md").write_text(
        "`bench --markdown` on a day:\n\n```text\nKron matmat, float64\n"
        "  kronlin      1094.27 ms    1.00×  ok 0e+00\n  plain A @ X   1171.77 ms    1.07×\n```\n")
    out = tmp_path_factory.mktemp("html")
    assert build_main(["-q", "-W", "--keep-going", "-b", "html", str(src), str(out)]) == 0
    return (out / "index.html").read_text()


def test_experiment_results_are_tables_not_a_json_dump(html):
    recorded = json.loads((ROOT / "docs" / "results" / "mnist" / "results.json").read_text())
    assert f"Recorded on {recorded['config']['date']} with:" in html
    assert "--no-progress" in html and "results/mnist" in html
    summary = recorded["summary"]
    cells = ["kfac-blockdiag", f"{summary['kfac-blockdiag']['final_error']:#.4g}",  # 4 digits
             "to sgd’s error (s)", "iter ratio"]
    if any(run.get("seconds_to_baseline", 0.0) is None for run in summary.values()):
        cells.append("never")  # a run that did not reach the baseline's error
    for cell in cells:
        assert cell in html, cell
    assert "m: mini-batch size of the last step" in html
    assert "784-1000-500-250-30-250-500-1000-784 (2,837,314 parameters)" in html
    assert "approx=blockdiag" in html and "batch_schedule: (first=250" in html
    assert '"architecture"' not in html and "language-json" not in html


def test_logs_become_tables_with_numbers_right_aligned(html):
    assert "<pre>Kron matmat" not in html and "1094.27 ms" in html
    assert '<p class="results-log rubric">Kron matmat, float64</p>' in html  # table heading
    assert '<td class="numeric"><p>1094.27 ms</p></td>' in html
    assert "--markdown</span></code> on a day:" in html


def test_a_missing_result_names_its_command_once(html):
    assert html.count("Not recorded yet") == 2  # gpu (table + figure), other
    assert html.count("make-gpu") == 1 and html.count("make-other") == 1
    assert "docs/results/gpu/results.json" in html
