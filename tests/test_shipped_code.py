"""The package ships only code it uses: what only the tests need lives in tests/support.

Read from the source (ast): every public module-level function and class of lockfs, and every
keyword-only parameter of a public function, must be used somewhere in the package itself
(lockfs-bench counts: it is a shipped command).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support import REPO

PACKAGE = REPO / "lockfs"
#: Keyword arguments that code outside the package passes: trio's ``nursery.start`` passes
#: ``task_status`` to the task it starts.
PASSED_FROM_OUTSIDE = {"task_status"}


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(REPO), ast.parse(path.read_text(), str(path))


def uses() -> tuple[set[str], set[str]]:
    """Every name the package refers to, and every keyword it passes (a keyword also counts
    as passed where it is a string, such as a key of a dict that is passed with ``**``)."""
    names: set[str] = set()
    keywords: set[str] = set()
    for _, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add(node.name.rpartition(".")[2])
            elif isinstance(node, ast.Call):
                keywords.update(keyword.arg for keyword in node.keywords if keyword.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                keywords.add(node.value)
    return names, keywords


def test_every_public_function_and_class_is_used_by_the_package() -> None:
    names, _ = uses()
    unused = [
        f"{path}: {node.name}"
        for path, tree in modules()
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and not node.name.startswith("_")
        and node.name not in names
    ]
    assert not unused, f"only the tests use these (move them to tests/support): {unused}"


def test_every_keyword_only_parameter_is_passed_by_the_package() -> None:
    _, keywords = uses()
    unused = [
        f"{path}: {node.name}({arg.arg}=)"
        for path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not node.name.startswith("_")
        for arg in node.args.kwonlyargs
        if arg.arg not in keywords | PASSED_FROM_OUTSIDE
    ]
    assert not unused, f"only the tests pass these: {unused}"
