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
    """Each lockfs/*.py has a row, and every module a row names exists."""
    named = set(re.findall(r"`([a-z_]+\.py)`", module_table()))
    modules = {path.name for path in (REPO / "lockfs").glob("*.py")}
    assert modules - named == set(), "modules missing from the table in docs/design.md"
    assert named - modules == set(), "the table in docs/design.md names modules that are gone"
