import textwrap

from html_checks import check_site
from sphinx.cmd.build import build_main


def _site(tmp_path, pages):
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><head></head><body>{body}</body></html>")
    return tmp_path


def test_a_clean_site_has_no_problem(tmp_path):
    site = _site(tmp_path, {
        "index.html": '<script src="_static/a.js?v=1"></script><link rel="stylesheet" href="s.css">'
                      '<a href="guide/page.html#sec-2">x</a><a href="#top">t</a><p id="top"></p>'
                      '<a href="https://example.org/x.html#nope">out</a><a href="mailto:a@b">m</a>'
                      '<img src="data:image/png;base64,AAAA"><a href="guide/">dir</a>',
        "guide/page.html": '<section id="sec-2"></section><a href="../index.html">up</a>',
        "guide/index.html": '<a name="old-style"></a><a href="#old-style">o</a>',
        "_static/a.js": "",
        "s.css": "body { background: url('img/x.png'); }",
    })
    assert check_site(site) == []


def test_every_kind_of_problem_is_reported(tmp_path):
    site = _site(tmp_path, {
        "index.html": '<script defer src="https://cdn.example.org/mathjax.js"></script>'
                      '<script src="//cdn.example.org/x.js"></script>'
                      '<link rel="stylesheet" href="missing.css">'
                      '<link rel="canonical" href="https://example.org/">'  # not loaded: fine
                      '<a href="page.html#kronlin_nn.sutskever_momentum">broken anchor</a>'
                      '<a href="gone.html">missing page</a><a href="#nowhere">same page</a>',
        "page.html": '<div id="kronlin_nn.schedules.sutskever_momentum"></div>',
        "theme.css": "@import url(https://fonts.example.org/font.css);",
    })
    problems = check_site(site)
    assert len(problems) == 7, problems
    text = "\n".join(problems)
    for expected in ("https://cdn.example.org/mathjax.js from another host",
                     "//cdn.example.org/x.js from another host",
                     "missing.css, which the build does not contain",
                     "page.html has no element id='kronlin_nn.sutskever_momentum'",
                     "gone.html: no such file",
                     "index.html has no element id='nowhere'",
                     "theme.css: loads https://fonts.example.org/font.css"):
        assert expected in text
    assert "canonical" not in text


def test_a_sphinx_build_with_a_broken_link_fails_under_W(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('html_checks').__file__.rsplit('/', 1)[0])!r})
        extensions = ["html_checks"]
    """))
    (src / "index.rst").write_text("Title\n=====\n\n.. raw:: html\n\n   <a href=\"#no-such-anchor\">x</a>\n")
    args = ["-q", "-W", "--keep-going", "-b", "html", str(src), str(tmp_path / "out")]
    assert build_main(args) != 0
    (src / "index.rst").write_text("Title\n=====\n\nFine.\n")
    assert build_main(args) == 0
