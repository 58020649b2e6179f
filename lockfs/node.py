"""One node: its attributes, its place in the namespace and, for a regular file, its data.

A node changes its own data and times here; whether a change is allowed (limits, errnos) and
what it means for the namespace, the kernel's references and reclaim is the table's
(:mod:`lockfs.nodes`). Data is never kept for an empty file (``data is None``), so an emptied
file is idle again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .entryorder import EntryOrder
from .filedata import FileData

ROOT_INO = 1
NAME_MAX = 255


class FsError(Exception):
    """A request failed with ``errno``; the adapter turns it into a FUSE error reply."""

    def __init__(self, code: int) -> None:
        # Raised for every absent name a lookup asks about: the message is made only if shown.
        self.errno = code

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {os.strerror(self.errno)}"


@dataclass(slots=True, eq=False)
class Node:
    """One inode. ``parent`` is ``None`` once the node has no name (unlinked, still referenced);
    ``name`` then holds the path it had when it was unlinked (``lockfs locks`` shows it).

    ``lookups`` mirrors the kernel's lookup count for this node id (LOOKUP, CREATE, MKDIR,
    MKNOD and readdirplus entries add one, FORGET subtracts); ``opens`` counts open handles.
    ``last_used`` is the last request that used the node; a readdirplus entry is not a use.
    """

    ino: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    parent: Node | None = None
    name: bytes = b""
    children: dict[bytes, Node] | None = None
    #: A directory's children in inode order (listings resume from a cookie by bisection).
    order: EntryOrder | None = None
    subdirs: int = 0
    #: A regular file's bytes (sparse); ``None`` while the file is empty.
    data: FileData | None = None
    lookups: int = 0
    opens: int = 0
    depth: int = 0
    last_used: float = 0.0
    #: When ``opens`` last went from 0 to 1 (for `lockfs locks`: how long it has been held).
    open_since: float = 0.0

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else 0

    @property
    def nlink(self) -> int:
        if self.parent is None:
            return 0
        return 2 + self.subdirs if self.children is not None else 1

    def path(self) -> bytes:
        """The node's path relative to the mount root; once unlinked, the path it had then."""
        parts: list[bytes] = []
        node: Node | None = self
        while node is not None and node.ino != ROOT_INO:
            parts.append(node.name)
            node = node.parent
        return b"/".join(reversed(parts))

    def write(self, offset: int, buf: bytes, now_ns: int) -> None:
        """Write ``buf`` (not empty) at ``offset`` of a regular file: a modification at
        ``now_ns``."""
        if self.data is None:
            self.data = FileData()
        self.data.write(offset, buf)
        self.mtime_ns = self.ctime_ns = now_ns

    def resize(self, size: int, now_ns: int) -> None:
        """Set a regular file's (checked) size: a modification at ``now_ns``. Emptying the file
        drops its data."""
        if size == 0:
            self.data = None
        else:
            if self.data is None:
                self.data = FileData()
            self.data.truncate(size)
        self.mtime_ns = self.ctime_ns = now_ns
