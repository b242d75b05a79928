"""Checks of the built HTML site: it works offline, and none of its internal links is broken.

Run at the end of every HTML build (Sphinx's ``build-finished`` event, after the extensions that
copy their files); each problem is a warning, so ``sphinx-build -W`` fails on it:

- **Offline.** No page loads anything from another host: every ``<script src>``, every loaded
  ``<link href>`` (stylesheets, icons, preloads), every ``<img>``, ``<iframe>``, ``<source>``,
  ``<embed>`` and ``<object>`` names a file of the build by a relative path, and that file
  exists; no stylesheet of the build imports a ``url(...)`` from another host. Links *to*
  other sites (``<a href="https://...">``) are fine: following one is the reader's choice.
- **Internal links.** Every relative ``<a href>`` names a file of the build, and where it has a
  fragment (``page.html#name``, ``#name``), an element of that page with that ``id`` (or an
  ``<a name>``).

Standalone, on an existing build::

    python docs/_ext/html_checks.py docs/_build/html

prints one line per problem and exits with status 1 if there is any.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["check_site", "setup"]

# <link rel=...> values whose target the browser loads (the others only name a relation).
_LOADED_RELS = {"stylesheet", "icon", "shortcut", "apple-touch-icon", "preload", "modulepreload",
                "prefetch", "manifest", "mask-icon"}
# Tag → the attribute that makes the browser fetch something.
_LOADING_ATTRS = {"script": "src", "img": "src", "iframe": "src", "source": "src",
                  "embed": "src", "audio": "src", "video": "src", "object": "data"}
_CSS_URL = re.compile(r"""(?:@import\s+(?:url\(\s*)?|url\(\s*)["']?([^"')\s;]+)""")


@dataclass
class _Page:
    """What one HTML file defines and refers to."""

    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)  # <a href>
    loads: list[tuple[str, str]] = field(default_factory=list)  # (tag, URL) the page fetches


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = _Page()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.page.ids.add(values["id"])
        if tag == "a":
            if "name" in values:
                self.page.ids.add(values["name"])
            if values.get("href"):
                self.page.links.append(values["href"])
        elif tag == "link" and values.get("href"):
            if _LOADED_RELS & set(values.get("rel", "").lower().split()):
                self.page.loads.append((tag, values["href"]))
        elif tag in _LOADING_ATTRS and values.get(_LOADING_ATTRS[tag]):
            self.page.loads.append((tag, values[_LOADING_ATTRS[tag]]))

    handle_startendtag = handle_starttag


def _read(path: Path) -> _Page:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    collector.close()
    return collector.page


def _is_remote(url: str) -> bool:
    """Whether fetching ``url`` leaves the build: a scheme with a host, or ``//host/...``."""
    parts = urlsplit(url)
    return bool(parts.netloc) or parts.scheme not in ("", "data")


def _target(root: Path, page: Path, url: str) -> tuple[Path, str]:
    """The file (inside the site) and fragment a relative ``url`` of ``page`` points to."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    target = page if not path else (root / path.lstrip("/") if path.startswith("/")
                                    else page.parent / path)
    if target.is_dir():
        target = target / "index.html"
    return target.resolve(), unquote(parts.fragment)


def check_site(root: str | Path) -> list[str]:
    """Every offline and internal-link problem of the HTML site in ``root``.

    Args:
        root: the output folder of an HTML build (``docs/_build/html``).

    Returns:
        One message per problem, naming the page, the URL and what is wrong; empty if none.

    """
    root = Path(root).resolve()
    pages = {path.resolve(): _read(path) for path in sorted(root.rglob("*.html"))}
    problems: list[str] = []
    for path, page in pages.items():
        name = path.relative_to(root).as_posix()
        for tag, url in page.loads:
            if _is_remote(url):
                problems.append(f"{name}: <{tag}> loads {url} from another host (offline, it fails)")
            elif urlsplit(url).scheme != "data" and not _target(root, path, url)[0].is_file():
                problems.append(f"{name}: <{tag}> loads {url}, which the build does not contain")
        for url in page.links:
            if _is_remote(url) or urlsplit(url).scheme in ("mailto", "javascript"):
                continue
            target, fragment = _target(root, path, url)
            if not target.is_file():
                problems.append(f"{name}: link {url}: no such file in the build")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _read(target).ids
                if fragment not in ids:
                    where = target.relative_to(root).as_posix() if target.is_relative_to(root) \
                        else target
                    problems.append(f"{name}: link {url}: {where} has no element id={fragment!r}")
    for css in sorted(root.rglob("*.css")):
        for url in _CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            if _is_remote(url):
                problems.append(f"{css.relative_to(root).as_posix()}: loads {url} from another host")
    return problems


def _check_build(app: Any, exception: BaseException | None) -> None:
    """``build-finished``: warn about every problem of a successful HTML build."""
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for problem in check_site(app.outdir):
        logger.warning("built HTML: %s", problem, type="kronlin", subtype="html")


def setup(app: Any) -> dict[str, Any]:
    # Late (priority 900 > the default 500): after extensions that copy files into the build at
    # build-finished, such as sphinx-mathjax-offline.
    app.connect("build-finished", _check_build, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    found = check_site(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    print("\n".join(found) or "no problem found")
    sys.exit(1 if found else 0)
