"""The documentation's own code (docs/_ext, docs/update_readme.py) importable by the tests here."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "docs" / "_ext"), str(ROOT / "docs")]
