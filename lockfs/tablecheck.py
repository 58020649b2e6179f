"""The node table's consistency check: every structural invariant compared explicitly, so it
works under ``python -O`` too (no ``assert``). Used by the tests after every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .idle import is_idle
from .node import ROOT_INO

if TYPE_CHECKING:
    from .namespace import Namespace


class TableInconsistent(Exception):
    """The table broke one of its invariants (the message says which, and where)."""


def _require(holds: bool, what: str) -> None:
    if not holds:
        raise TableInconsistent(what)


def check_table(table: Namespace) -> None:
    """Raise :class:`TableInconsistent` unless names, counts, orders and queues agree."""
    for node in table.nodes.values():
        _require(node.lookups >= 0 and node.opens >= 0, f"negative count on {node.ino}")
        if node.ino == ROOT_INO:
            continue
        if node.parent is not None:
            siblings = node.parent.children
            _require(siblings is not None, f"parent of {node.ino} is not a directory")
            _require(
                siblings is not None and siblings.get(node.name) is node,
                f"name of {node.ino} does not lead to it: {node.path()!r}",
            )
            _require(node.parent.ino in table.nodes, f"parent of {node.ino} not in the table")
        else:
            _require(bool(node.lookups or node.opens), f"unreferenced unlinked node {node.ino}")
        if node.children is not None:
            subdirs = sum(1 for c in node.children.values() if c.is_dir)
            _require(node.subdirs == subdirs, f"subdirectory count of {node.ino}")
    for node in table.nodes.values():
        if node.children is not None:
            _require(node.order is not None, f"directory {node.ino} without entry order")
            if node.order is not None:
                try:
                    node.order.check()
                except ValueError as exc:
                    raise TableInconsistent(f"entry order of {node.ino}: {exc}") from exc
                in_order = sorted(node.order, key=id)
                _require(in_order == sorted(node.children.values(), key=id), f"order of {node.ino}")
        if node in table.idle:
            _require(is_idle(node), f"{node.ino} queued but not idle")
    for node in table.idle:
        _require(table.nodes.get(node.ino) is node, f"queued node {node.ino} not in the table")
    nodes = table.nodes.values()
    _require(table.dir_count == sum(1 for n in nodes if n.children is not None), "dir_count")
    _require(table.open_count == sum(1 for n in nodes if n.opens), "open_count")
    _require(table.referenced_count == sum(1 for n in nodes if n.lookups), "referenced_count")
