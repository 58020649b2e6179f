"""Bounds that keep one misbehaving user from exhausting the daemon's memory, and what STATFS
reports of them.

Hitting one fails only the request that would exceed it (ENOSPC, EFBIG, ENAMETOOLONG): the
table's requests (lockfs.nodes) check them before changing anything, so nothing that exists is
touched, and the table recovers as entries are reclaimed. The defaults are the mount options'
(lockfs.options), written there only.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import NamedTuple

from .node import NAME_MAX, FsError, Node
from .options import MountOptions

_DEFAULTS = MountOptions()


class Capacity(NamedTuple):
    """What STATFS reports: entries the table may hold, how many more it takes before creating
    fails with ENOSPC, and the longest name."""

    total: int
    free: int
    name_max: int


@dataclass(slots=True)
class Limits:
    """Live entries (the root included), bytes per file, directory depth."""

    max_entries: int = _DEFAULTS.max_entries
    max_file_size: int = _DEFAULTS.max_file_size
    max_depth: int = _DEFAULTS.max_depth

    def capacity(self, used: int) -> Capacity:
        """``max_entries`` (never fewer than the ``used`` entries) and what is left of it."""
        total = max(self.max_entries, used)
        return Capacity(total, total - used, NAME_MAX)

    def check_move(self, parent: Node, node: Node) -> None:
        """ENAMETOOLONG unless ``node`` and everything below it fit below ``parent``."""
        if parent.depth + 1 + subtree_height(node) > self.max_depth:
            raise FsError(errno.ENAMETOOLONG)


def subtree_height(directory: Node) -> int:
    """Levels below ``directory`` (0 for an empty directory or a file)."""
    height, level = 0, [directory]
    while True:
        level = [c for n in level if n.children for c in n.children.values()]
        if not level:
            return height
        height += 1
