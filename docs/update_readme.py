"""Rewrite the README's results tables from the recorded ``results.json`` files.

The README marks each table with the file it comes from::

    <!-- results docs/results/mnist/results.json -->
    ... (generated: the command, the date, the machine, the table, its legend) ...
    <!-- /results -->

Between the markers this script writes :func:`kronlin_nn.experiments.report.markdown_report`
of that file, the Markdown the experiment itself writes to ``results.md``; so a table can only
show what the command beside it recorded. Usage, from the repository root::

    python docs/update_readme.py            # rewrite README.md in place
    python docs/update_readme.py --check    # exit 1 (and say which) if a table is out of date

Re-recording the main job is then one line::

    python -m kronlin_nn.experiments.autoencoder --threads 1 --out results/mnist \\
        && cp results/mnist/* docs/results/mnist/ && python docs/update_readme.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kronlin_nn.experiments.report import markdown_report  # noqa: E402

BLOCK = re.compile(r"(<!-- results (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)


def updated(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every marked block regenerated from its ``results.json``.

    Args:
        readme: the README's text.
        root: the folder the blocks' paths are relative to.

    Raises:
        FileNotFoundError: a block names a file that does not exist.

    """

    def render(match: re.Match[str]) -> str:
        results = json.loads((root / match["path"]).read_text(encoding="utf-8"))
        return f"{match[1]}\n{markdown_report(results)}\n{match[4]}"

    return BLOCK.sub(render, readme)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the README; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is current")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="default: README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = updated(text)
    if new == text:
        return 0
    if args.check:
        print(f"{args.readme}: a results table differs from its results.json; "
              "run python docs/update_readme.py")
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"rewrote the results tables of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
