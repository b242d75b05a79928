"""Sphinx configuration of the kronlin documentation.

Build (CI runs both, warnings are errors):

    sphinx-build -W --keep-going -b html    docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

The second command executes every example on every page (``testcode``/``doctest`` blocks and
``>>>`` examples in docstrings) and fails if one raises or prints something unexpected.
"""

from __future__ import annotations

import doctest
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, even without `pip install -e .`
sys.path.insert(0, str(DOCS / "_ext"))

# The executed examples are small: one BLAS/OpenMP thread each is fastest, and it keeps them fast
# on shared CI machines, where idle-spinning threads of tiny GEMMs cost 10-100x (set before NumPy
# and torch are imported; an explicit environment setting wins).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import kronlin  # noqa: E402

project = "kronlin"
author = "kronlin developers"
copyright = "the kronlin developers"  # noqa: A001
release = kronlin.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 served from this build's _static/mathjax/ (the package copies it and points
    # mathjax_path there): formulas render offline, with no CDN.
    "sphinx-mathjax-offline",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "myst_parser",
    "kronlin_docs",  # docs/_ext/kronlin_docs.py: measured results included when recorded
    "html_checks",  # docs/_ext/html_checks.py: no external script, every internal link resolves
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "dev", "results/**", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# -- MyST (Markdown pages) --------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc / napoleon (Google-style docstrings) ---------------------------------------------
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
# docs/_ext/kronlin_docs.py warns (so -W fails) about public names missing from the reference.
api_coverage_packages = ["kronlin", "kronlin_nn"]
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- doctest -----------------------------------------------------------------------------------
doctest_global_setup = """
import numpy as np
import kronlin as kl
np.set_printoptions(precision=4, suppress=True)
try:
    import torch
    torch.set_num_threads(1)
except ImportError:  # kronlin itself does not need torch
    torch = None
"""
doctest_default_flags = (
    doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1
)
trim_doctest_flags = True

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"kronlin {release}"
html_static_path = ["_static"]
html_css_files = ["kronlin.css"]  # wide display equations and result tables scroll
html_theme_options = {
    "navigation_with_keys": True,
}
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# No network at build time: no intersphinx. References to NumPy/SciPy/torch objects render as
# plain code (nitpicky mode stays off for that reason).
nitpicky = False
