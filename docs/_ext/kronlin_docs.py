"""Sphinx directives that put measured results into the docs without ever inventing them.

The experiment and the benchmarks write their results to files (``results.json``, PNG figures,
Markdown tables). Copied under ``docs/results/`` they appear on the pages; until then each
directive renders a clearly marked "not recorded yet" note that says which command produces
the file. Nothing here runs an experiment or a benchmark.

Directives (paths are relative to ``docs/results/``):

``.. results-figure:: mnist/error_vs_time.png``
    The figure with the directive's content as caption, or the note.
``.. results-include:: performance/compare.md``
    A fragment parsed in place in the language of the including page (Markdown for the
    MyST pages of this site), or the note.
``.. experiment-results:: mnist/results.json``
    The experiment's ``results.json`` (written by ``python -m kronlin_nn.experiments.autoencoder``):
    the hardware and command it records, its ``summary`` as a table (per optimizer: iterations,
    timed seconds, final batch size, final training error, and the time and iteration ratios to
    the baseline ``sgd``), then the recorded configuration.

Every directive takes ``:command:``, the command that writes the file, shown in the note.

The extension also checks the API reference's coverage: every name in the ``__all__`` of every
public module (no ``_`` in its dotted path) of the packages in ``api_coverage_packages`` must be
documented, under that module or under a package that re-exports the same object. A missing
name is a warning, so ``sphinx-build -W`` fails when code gains a public name that the
reference does not show.
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

RESULTS = "results"


class _ResultsDirective(SphinxDirective):
    required_arguments = 1
    optional_arguments = 0
    final_argument_whitespace = False
    option_spec = {"command": directives.unchanged}

    def _path(self) -> tuple[Path, str]:
        rel = self.arguments[0]
        path = Path(self.env.srcdir) / RESULTS / rel
        return path, f"/{RESULTS}/{rel}"

    def _missing(self, what: str) -> list[nodes.Node]:
        note = nodes.admonition(classes=["warning", "results-missing"])
        note += nodes.title(text="Not recorded yet")
        para = nodes.paragraph()
        para += nodes.Text(f"No measured {what} is published in this build. ")
        para += nodes.Text("It is read from ")
        para += nodes.literal(text=f"docs/{RESULTS}/{self.arguments[0]}")
        para += nodes.Text(", which this checkout does not have; the page never shows invented numbers.")
        note += para
        command = self.options.get("command")
        if command:
            note += nodes.paragraph(text="Produce it with:")
            note += nodes.literal_block(command, command, language="bash")
        return [note]


class ResultsFigure(_ResultsDirective):
    """A figure read from ``docs/results/``; the content is its caption."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        path, uri = self._path()
        if not path.is_file():
            return self._missing("figure")
        self.env.note_dependency(str(path))
        figure = nodes.figure()
        figure += nodes.image(uri=uri, candidates={"*": uri.lstrip("/")})
        if self.content:
            caption = nodes.caption(text=" ".join(self.content))
            figure += caption
        return [figure]


class ResultsInclude(_ResultsDirective):
    """A Markdown or reStructuredText fragment read from ``docs/results/``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        path, _ = self._path()
        if not path.is_file():
            return self._missing("table")
        self.env.note_dependency(str(path))
        text = path.read_text(encoding="utf-8")
        container = nodes.container(classes=["results-include"])
        # Parsed in the language of the including page (MyST pages parse Markdown here).
        self.state.nested_parse(StringList(text.splitlines(), str(path)), 0, container)
        return [container]


def _table(header: list[str], rows: list[list[str]]) -> nodes.table:
    table = nodes.table(classes=["results-table"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    head += _row(header)
    body = nodes.tbody()
    group += body
    for r in rows:
        body += _row(r)
    return table


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=cell)
        row += entry
    return row


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _first_time_below(records: list[dict[str, Any]], target: float) -> float | None:
    for record in records:
        error = record.get("train_error")
        if error is not None and error <= target:
            return float(record["seconds"])
    return None


class ExperimentResults(_ResultsDirective):
    """The summary table of an experiment's ``results.json``, with its provenance."""

    has_content = False
    option_spec = {"command": directives.unchanged, "baseline": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        path, _ = self._path()
        if not path.is_file():
            return self._missing("result")
        self.env.note_dependency(str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
        baseline = self.options.get("baseline", "sgd")
        out: list[nodes.Node] = []
        config = data.get("config") or {}
        facts = []
        if data.get("problem") is not None:
            facts.append(f"problem {data['problem']}")
        for key, label in (("dataset", "data"), ("device", "device"), ("platform", "platform"),
                           ("cpu_count", "CPUs"), ("threads", "torch threads"),
                           ("torch", "torch"), ("time_budget", "timed seconds per optimizer")):
            if config.get(key) is not None:
                facts.append(f"{label}: {config[key]}")
        if facts:
            out.append(nodes.paragraph(text="Recorded with " + "; ".join(facts) + "."))
        if config.get("command"):
            out.append(nodes.literal_block(config["command"], config["command"], language="bash"))
        summary = data.get("summary")
        if summary:
            out.append(_summary_table(summary, baseline))
        else:
            out.append(_runs_table(data.get("runs", {}), baseline))
        if config:
            text = json.dumps(config, indent=2, sort_keys=True)
            out.append(nodes.paragraph(text="The recorded configuration (results.json, \"config\"):"))
            out.append(nodes.literal_block(text, text, language="json"))
        return out


def _summary_table(summary: dict[str, dict[str, Any]], baseline: str) -> nodes.table:
    """The table of ``kronlin_nn.experiments.report.summarize``'s output."""
    header = ["optimizer", "iterations", "timed seconds", "final batch size",
              "final training error", f"seconds to reach {baseline}'s final error",
              "time ratio", "iteration ratio"]
    rows = []
    for name, row in summary.items():
        rows.append([
            name, _fmt(row.get("iterations")), _fmt(row.get("seconds"), 3),
            _fmt(row.get("final_batch_size")), _fmt(row.get("final_error")),
            _fmt(row.get("seconds_to_baseline"), 3), _fmt(row.get("time_ratio"), 3),
            _fmt(row.get("iteration_ratio"), 3),
        ])
    return _table(header, rows)


def _runs_table(runs: dict[str, list[dict[str, Any]]], baseline: str) -> nodes.table:
    """A table computed from the raw records, for results without a summary."""
    target = runs[baseline][-1].get("train_error") if runs.get(baseline) else None
    header = ["optimizer", "iterations", "timed seconds", "final training error"]
    if target is not None:
        header.append(f"seconds to reach {baseline}'s final error")
    rows = []
    for name, records in runs.items():
        if not records:
            continue
        last = records[-1]
        row = [name, _fmt(last.get("iteration")), _fmt(last.get("seconds"), 3),
               _fmt(last.get("train_error"))]
        if target is not None:
            row.append(_fmt(_first_time_below(records, target), 3))
        rows.append(row)
    return _table(header, rows)


def _resolve(fullname: str) -> tuple[bool, Any]:
    """Import the object named ``fullname`` (``package.module.attr…``); ``(False, None)`` if not."""
    parts = fullname.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False, None
        return True, obj
    return False, None


def _public_modules(package: str) -> list[Any]:
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def check_api_coverage(app: Sphinx, env: Any) -> None:
    """Warn about public names (``__all__``) that the API reference does not document."""
    packages = app.config.api_coverage_packages
    if not packages:
        return
    objects = env.get_domain("py").objects
    documented_ids = set()
    for fullname in objects:
        found, obj = _resolve(fullname)
        if found:
            documented_ids.add(id(obj))
    for package in packages:
        for module in _public_modules(package):
            for name in getattr(module, "__all__", ()):
                fullname = f"{module.__name__}.{name}"
                if fullname in objects:
                    continue
                obj = getattr(module, name, None)
                if obj is not None and id(obj) in documented_ids and not isinstance(
                    obj, int | float | str | bool
                ):
                    continue
                logger.warning(
                    "API reference: the public name %s (in %s.__all__) is not documented; "
                    "add it to docs/api/", fullname, module.__name__,
                    type="kronlin", subtype="api-coverage",
                )


def drop_inherited_type_docs(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                              lines: list[str]) -> None:
    """Drop the docstring a constant "inherits" from its type (e.g. ``tuple``'s for a tuple).

    autodoc shows ``tuple.__doc__`` for an undocumented tuple constant; the text the directive's
    content adds stays.
    """
    if what != "data" or not lines:
        return
    type_doc = getattr(type(obj), "__doc__", None)

    def words(text_lines: list[str]) -> list[str]:
        return " ".join(text_lines).split()

    if type_doc and words(lines) == words(type_doc.splitlines()):
        lines.clear()


_VIEWCODE_BACK = re.compile(
    r'(<div class="viewcode-block" id="(?P<name>[^"]+)">\s*<a class="viewcode-back" '
    r'href="[^"#]*#)(?P<anchor>[^"]+)"'
)


def fix_viewcode_backlinks(app: Sphinx, pagename: str, templatename: str,
                           context: dict[str, Any], doctree: Any) -> None:
    """Point each ``[docs]`` link of a highlighted module at the name it is documented under.

    Sphinx's viewcode builds every ``[docs]`` link of a module's source page from the module
    name under which it *first* met one of the module's objects: once ``kronlin_nn.PolyakAverage``
    (a re-export of ``kronlin_nn.schedules.PolyakAverage``) is documented, the link of
    ``kronlin_nn.schedules.sutskever_momentum``, documented under its own module, became
    ``#kronlin_nn.sutskever_momentum``, an anchor that does not exist. Where the anchor is not
    a documented object but ``module.name`` is, the link is rewritten to it.
    """
    if not pagename.startswith("_modules/") or "body" not in context:
        return
    modname = pagename.removeprefix("_modules/").replace("/", ".")
    objects = app.env.get_domain("py").objects

    def relink(match: re.Match[str]) -> str:
        anchor, real = match["anchor"], f"{modname}.{match['name']}"
        if anchor not in objects and real in objects:
            anchor = objects[real].node_id
        return f'{match[1]}{anchor}"'

    context["body"] = _VIEWCODE_BACK.sub(relink, context["body"])


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("results-figure", ResultsFigure)
    app.add_directive("results-include", ResultsInclude)
    app.add_directive("experiment-results", ExperimentResults)
    app.add_config_value("api_coverage_packages", [], "env")
    app.connect("env-check-consistency", check_api_coverage)
    app.connect("autodoc-process-docstring", drop_inherited_type_docs)
    app.connect("html-page-context", fix_viewcode_backlinks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
