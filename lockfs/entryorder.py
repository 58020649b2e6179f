"""A directory's entries in inode order, so READDIR resumes from its cookie without sorting or
scanning the directory.

Cookies are ``ino + 2`` (lockfs.nodes), and a directory's names map is in insertion order,
which is not inode order once an older node is renamed into it. :class:`EntryOrder` keeps the
entries sorted by inode number in blocks of at most ``2 * LOAD`` (a list of short sorted
lists), so that

* adding the newest node (the common case: inode numbers only grow) appends, O(1);
* adding an older one (renamed in) or removing one is two bisections and a move of at most one
  block and the block list, O(log n + LOAD);
* listing after a cookie is a bisection and then the entries in order: O(log n + page).

Blocks never get empty (an empty one is dropped) and one that shrinks below ``LOAD // 4`` is
merged into a neighbour, so the block list stays at most about ``n / (LOAD // 4)`` long.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nodes import Node

#: Entries per block when appending; a block splits above twice this, merges below a quarter.
LOAD = 256
#: Entries :meth:`EntryOrder.after` copies from a block at a time before it looks again.
CHUNK = 64

_ino = attrgetter("ino")


def _last_ino(block: list[Node]) -> int:
    return block[-1].ino


class EntryOrder:
    """The nodes of one directory, sorted by inode number (each at most once)."""

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        self._blocks: list[list[Node]] = []

    def __len__(self) -> int:
        return sum(len(block) for block in self._blocks)

    def __iter__(self) -> Iterator[Node]:
        for block in self._blocks:
            yield from block

    def add(self, node: Node) -> None:
        """Insert ``node`` (not present) at its place."""
        blocks = self._blocks
        if not blocks:
            blocks.append([node])
            return
        last = blocks[-1]
        if node.ino > last[-1].ino:  # the newest node: append
            if len(last) < LOAD:
                last.append(node)
            else:
                blocks.append([node])
            return
        i = bisect_left(blocks, node.ino, key=_last_ino)
        block = blocks[i]
        insort(block, node, key=_ino)
        if len(block) > 2 * LOAD:
            half = len(block) // 2
            blocks[i : i + 1] = [block[:half], block[half:]]

    def remove(self, node: Node) -> None:
        """Take ``node`` (present) out. The oldest entry, the one reclaim usually takes, is
        found without a bisection."""
        blocks = self._blocks
        if blocks and blocks[0][0] is node:
            i, block, j = 0, blocks[0], 0
        else:
            i = bisect_left(blocks, node.ino, key=_last_ino)
            block = blocks[i] if i < len(blocks) else []
            j = bisect_left(block, node.ino, key=_ino)
            if j == len(block) or block[j] is not node:
                raise ValueError(f"node {node.ino} is not in this order")
        del block[j]
        if len(block) >= LOAD // 4 or len(blocks) == 1:
            if not block:
                del blocks[i]
            return
        # A short block: merge it into a neighbour (and split that again if too long).
        k = i + 1 if i + 1 < len(blocks) else i - 1
        first, second = min(i, k), max(i, k)
        merged = blocks[first] + blocks[second]
        if len(merged) > 2 * LOAD:
            half = len(merged) // 2
            blocks[first : second + 1] = [merged[:half], merged[half:]]
        else:
            blocks[first : second + 1] = [merged]

    def after(self, ino: int) -> Iterator[Node]:
        """The nodes with an inode number above ``ino``, in order.

        Copies at most :data:`CHUNK` nodes at a time and finds its place again by bisection
        before the next ones, so it stays correct while the order changes between the nodes
        it yields: a node present throughout is yielded exactly once, in order; one removed
        meanwhile may still be yielded from the chunk in hand (the caller checks).
        """
        while True:
            blocks = self._blocks
            i = bisect_right(blocks, ino, key=_last_ino)
            if i == len(blocks):
                return
            block = blocks[i]
            j = bisect_right(block, ino, key=_ino)
            chunk = block[j : j + CHUNK]
            yield from chunk
            ino = chunk[-1].ino

    def check(self) -> None:
        """Raise ValueError unless the structure's invariants hold (used by tests; no
        ``assert``, so it checks under ``python -O`` too)."""
        inos = [node.ino for node in self]
        if inos != sorted(set(inos)):
            raise ValueError("not strictly in inode order")
        if not all(0 < len(block) <= 2 * LOAD for block in self._blocks):
            raise ValueError("a block is empty or too long")
