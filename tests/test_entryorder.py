"""Unit tests of a directory's inode order (lockfs.entryorder), against a sorted list, with
blocks small enough that splits, merges and chunked listing all happen."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockfs import entryorder
from lockfs.entryorder import EntryOrder
from lockfs.nodes import Node

INOS = st.integers(min_value=2, max_value=200)
#: ("add", ino) adds the node if absent, ("remove", ino) removes it if present, ("list", ino)
#: lists after ino, ("append", _) adds a node newer than every other.
OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "list", "append", "append"]), INOS), max_size=150
)


def node(ino: int) -> Node:
    return Node(ino, stat.S_IFREG | 0o644, 0, 0, 0, 0, 0)


@pytest.fixture(autouse=True)
def small_blocks() -> Iterator[None]:
    with mock.patch.object(entryorder, "LOAD", 4), mock.patch.object(entryorder, "CHUNK", 3):
        yield


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_matches_a_sorted_list(operations: list[tuple[str, int]]) -> None:
    """Any sequence of adds (in order and out of order) and removes: the order holds exactly
    the nodes added and not removed, sorted, and ``after`` gives the ones above a cookie."""
    order, model = EntryOrder(), {}
    newest = 1000
    for kind, ino in operations:
        if kind == "append":
            newest += 1
            model[newest] = node(newest)
            order.add(model[newest])
        elif kind == "add" and ino not in model:
            model[ino] = node(ino)
            order.add(model[ino])
        elif kind == "remove" and ino in model:
            order.remove(model.pop(ino))
        elif kind == "list":
            assert [n.ino for n in order.after(ino)] == sorted(i for i in model if i > ino)
        order.check()
        assert [n.ino for n in order] == sorted(model) and len(order) == len(model)
    with pytest.raises(ValueError):
        order.remove(node(5000))


@settings(max_examples=200, deadline=None)
@given(
    st.sets(INOS, min_size=1, max_size=60),
    st.lists(st.tuples(st.booleans(), INOS), max_size=40),
    st.integers(min_value=0, max_value=60),
)
def test_listing_survives_changes_between_entries(
    start: set[int], changes: list[tuple[bool, int]], every: int
) -> None:
    """Changing the order while ``after`` is half way: every node present throughout is
    listed exactly once and in order; nothing listed is below the cookie or repeated."""
    nodes = {ino: node(ino) for ino in start}
    order = EntryOrder()
    for ino in sorted(start, reverse=True):  # out of order: every add bisects
        order.add(nodes[ino])
    present = set(start)
    throughout = set(start)
    listed = []
    pending = list(changes)
    for n, entry in enumerate(order.after(0)):
        listed.append(entry.ino)
        if pending and n % (every + 1) == 0:
            add, ino = pending.pop()
            if add and ino not in present:
                nodes[ino] = node(ino)
                order.add(nodes[ino])
                present.add(ino)
            elif not add and ino in present:
                order.remove(nodes[ino])
                present.discard(ino)
                throughout.discard(ino)
        order.check()
    assert listed == sorted(set(listed))
    assert throughout <= set(listed)
