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
    The ````text`` blocks of the fragment (a benchmark's printed output) are rendered as
    headings, sentences and tables (:mod:`log_tables`), not as preformatted text.
``.. experiment-results:: mnist/results.json``
    The experiment's ``results.json`` (written by ``python -m kronlin_nn.experiments.autoencoder``):
    its date and command, its ``summary`` as the results table with its legend (the columns of
    :func:`kronlin_nn.experiments.report.table_cells`, as the command prints them), then a
    compact table of the recorded settings and one of the optimizers' settings.

Every directive takes ``:command:``, the command that writes the file, shown in the note; a
page shows the note for one command once (a section whose table and figures are all missing
has one note).

The extension also checks the API reference's coverage: every name in the ``__all__`` of every
public module (no ``_`` in its dotted path) of the packages in ``api_coverage_packages`` must be
documented, under that module or under a package that re-exports the same object. A missing
name is a warning, so ``sphinx-build -W`` fails when code gains a public name that the
reference does not show.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from log_tables import Line, is_numeric, parse_log
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from kronlin_nn.experiments.report import BASELINE_MARK, NEVER, describe_search, legend, table_cells

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
        """The "not recorded yet" note, once per page and command.

        A section whose table and figures come from one command (a GPU run not recorded yet)
        says so once: later directives of the page with the same command render nothing.
        """
        command = self.options.get("command")
        shown = self.env.temp_data.setdefault("kronlin_missing_commands", set())  # this page's
        if command and command in shown:
            return []
        shown.add(command)
        note = nodes.admonition(classes=["warning", "results-missing"])
        note += nodes.title(text="Not recorded yet")
        para = nodes.paragraph()
        para += nodes.Text(f"No measured {what} is published in this build. ")
        para += nodes.Text("It is read from ")
        para += nodes.literal(text=f"docs/{RESULTS}/{self.arguments[0]}")
        para += nodes.Text(", which this checkout does not have; the page never shows invented numbers.")
        note += para
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


_LOG_BLOCK = re.compile(r"^```text\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


class ResultsInclude(_ResultsDirective):
    """A Markdown or reStructuredText fragment read from ``docs/results/``.

    The ````text`` blocks in it, a benchmark's printed output, become headings, sentences and
    tables (:mod:`log_tables`) instead of preformatted text cut off at the page's edge.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        path, _ = self._path()
        if not path.is_file():
            return self._missing("table")
        self.env.note_dependency(str(path))
        text = path.read_text(encoding="utf-8")
        container = nodes.container(classes=["results-include"])
        done = 0
        for match in [*_LOG_BLOCK.finditer(text), None]:
            prose = text[done:match.start() if match else len(text)]
            # Parsed in the language of the including page (MyST pages parse Markdown here).
            self.state.nested_parse(StringList(prose.splitlines(), str(path)), 0, container)
            if match:
                container += _log_nodes(match.group(1))
                done = match.end()
        return [container]


def _log_nodes(log: str) -> list[nodes.Node]:
    """A printed log as docutils nodes: headings (rubrics), paragraphs and tables."""
    out: list[nodes.Node] = []
    for block in parse_log(log):
        if isinstance(block, Line):
            node = nodes.rubric if block.heading else nodes.paragraph
            out.append(node(text=block.text, classes=["results-log"], support_smartquotes=False))
        else:
            out.append(_table(block.header, block.rows))
    return out


def _table(header: list[str] | None, rows: list[list[str]]) -> nodes.table:
    """A results table; a column whose cells start with numbers is right-aligned."""
    # Measured output as printed: no typographic quotes, dashes or ellipses ("..." stays).
    table = nodes.table(classes=["results-table"], support_smartquotes=False)
    width = len(header) if header else max(len(r) for r in rows)
    numeric = [any(is_numeric(r[i]) for r in rows)
               and all(is_numeric(r[i]) or r[i] in _MARKS for r in rows) for i in range(width)]
    group = nodes.tgroup(cols=width)
    table += group
    for _ in range(width):
        group += nodes.colspec(colwidth=1)
    if header:
        head = nodes.thead()
        group += head
        head += _row(header, numeric)
    body = nodes.tbody()
    group += body
    for r in rows:
        body += _row(r, numeric)
    return table


def _row(cells: list[str], numeric: list[bool]) -> nodes.row:
    row = nodes.row()
    for cell, right in zip(cells, numeric, strict=True):
        # Numbers right-aligned; numbers and short cells ("ok 0e+00") kept on one line.
        entry = nodes.entry(classes=["numeric"] if right else ["short"] if len(cell) <= 16 else [])
        entry += nodes.paragraph(text=cell)
        row += entry
    return row


_MARKS = {"", BASELINE_MARK, NEVER}


class ExperimentResults(_ResultsDirective):
    """An experiment's ``results.json``: how it was made, its results table, its settings."""

    has_content = False
    option_spec = {"command": directives.unchanged, "baseline": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        path, _ = self._path()
        if not path.is_file():
            return self._missing("result")
        self.env.note_dependency(str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
        baseline = self.options.get("baseline", "sgd")
        config = data["config"]
        out: list[nodes.Node] = [
            nodes.paragraph(text=f"Recorded on {config['date']} with:" if "date" in config
                            else "Recorded with:"),
            nodes.literal_block(config["command"], config["command"], language="bash"),
            _table(*table_cells(data["summary"], baseline)),
        ]
        legend_list = nodes.bullet_list(classes=["results-legend"])
        for line in legend(data["summary"], baseline):
            item = nodes.list_item()
            item += nodes.paragraph(text=line)
            legend_list += item
        out += [legend_list, nodes.rubric(text="Settings"),
                _table(["setting", "value"], _settings(config))]
        optimizers = config.get("optimizers", {})
        out.append(_table(["optimizer", "label", "settings"], [
            [name, str(settings.get("label", "")),
             _flat({k: v for k, v in settings.items() if k != "label"})]
            for name, settings in optimizers.items()]))
        note = nodes.paragraph(text="Every record of every run, and these settings in full: ")
        note += nodes.literal(text=f"docs/{RESULTS}/{self.arguments[0]}")
        note += nodes.Text(".")
        out.append(note)
        return out


def _settings(config: dict[str, Any]) -> list[list[str]]:
    """The run's settings and provenance as (setting, value) rows, in reading order."""
    rows = []

    def add(label: str, *keys: str, fmt: Any = str) -> None:
        values = [config.get(k) for k in keys]
        if all(v is not None for v in values):
            rows.append([label, fmt(*values)])

    add("data", "dataset", "n_train", "source", fmt=lambda d, n, s: f"{d}: {n:,} images ({s})")
    add("network", "architecture", "parameters",
        fmt=lambda a, p: f"{'-'.join(map(str, a))} ({p:,} parameters)")
    add("initialization", "initialization")
    add("loss", "loss")
    add("metric", "metric")
    add("budget", "time_budget", fmt=lambda t: f"{t:g} timed seconds per optimizer")
    add("step limit", "max_iterations")
    add("seed", "seed")
    add("Polyak averaging", "polyak", fmt=_flat)
    add("sgd learning rate", "sgd_grid_search",
        fmt=lambda g: describe_search(g).removeprefix("sgd learning-rate "))
    add("device", "device", "device_name", fmt=lambda d, n: f"{d} ({n})" if n else d)
    add("ranks", "world_size", fmt=lambda w: f"{w} (torchrun, each rank a shard of every batch)"
        if w > 1 else "1")
    add("machine", "platform", "cpu_count", "threads",
        fmt=lambda p, c, t: f"{p}, {c} CPUs, {t} torch threads")
    add("torch", "torch")
    return rows


def _flat(value: Any) -> str:
    """A nested JSON value on one line: ``key=value, group: (key=value, ...)``."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: ({_flat(v)})" if isinstance(v, dict) else f"{k}={_flat(v)}"
                         for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return str(value)


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
