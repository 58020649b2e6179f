"""docs/design.md matches the code: its module table names every module of the package."""

from __future__ import annotations

import re

from support import REPO

DESIGN = REPO / "docs" / "design.md"


def module_table() -> str:
    text = DESIGN.read_text()
    start = text.index("| module | job |")
    return text[start : text.index("\n\n", start)]


def test_module_table_covers_every_module() -> None:
    """Each module of the package (subpackages too: ``bench/cli.py``) has a row, and every
    module a row names exists."""
    rows = re.findall(r"`([a-z_/]+\.py)`", module_table())
    named = {name for name in rows if not name.startswith("tests/")}
    package = REPO / "lockfs"
    modules = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    assert modules - named == set(), "modules missing from the table in docs/design.md"
    assert named - modules == set(), "the table in docs/design.md names modules that are gone"
