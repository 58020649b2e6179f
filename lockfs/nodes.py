"""The node table: every request's rules and errnos, over the namespace it changes.

This module knows nothing about FUSE; the adapter in :mod:`lockfs.fuse_ops` maps requests onto
:class:`NodeTable`, one method per request. Each checks everything first (names, limits, the
data observer) and raises :class:`FsError` with nothing changed, then changes the namespace
and the kernel's references through the transitions of :class:`lockfs.namespace.Namespace`,
which keep the invariants (one node per name; a name is reclaimed only once the kernel and
every process let go of it; inode numbers never reused). What *idle* means and when an idle
node falls due is lockfs.idle; a node's own data and times are lockfs.node; the bounds are
lockfs.limits; the consistency check is lockfs.tablecheck. The names callers use are all
importable from here (``__all__``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import NoReturn, Protocol

from .idle import ReclaimPolicy
from .limits import Capacity, Limits
from .namespace import Namespace, TableStats
from .node import NAME_MAX, ROOT_INO, FsError, Node
from .options import MountOptions
from .tablecheck import check_table

__all__ = [
    "LIMIT_LOG_INTERVAL",
    "LISTED_PER_REQUEST",
    "NAME_MAX",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INO",
    "Capacity",
    "DataObserver",
    "FsError",
    "Limits",
    "Node",
    "NodeTable",
    "ReclaimPolicy",
    "TableStats",
]

#: At most one "entry limit reached" log line per this many seconds.
LIMIT_LOG_INTERVAL = 60.0

#: Entries one READDIRPLUS reply holds at most (``.`` and ``..`` included). Requests are
#: served one at a time in arrival order, so a lock request that arrives behind listings
#: waits for them. With two processes listing 65,536 entries in a loop, lock takers kept
#: 0.68-0.74 of their throughput with 8 entries per reply, 0.25-0.37 with full 4 KiB pages
#: (about 25 entries; the bench's listing section, docs/benchmark.md).
LISTED_PER_REQUEST = 8

log = logging.getLogger(__name__)

#: ``renameat2`` flags (linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_DEFAULTS = MountOptions()


class DataObserver(Protocol):
    """Told of every change to what a regular file holds, and to its name, owner, mode or
    mtime, and of a directory's name, owner and mode (lockfs.persist keeps data files across
    restarts with it). Each method runs once the table has checked the request and before it
    changes anything: an :class:`FsError` it raises fails the request with nothing changed.
    ``mtime_ns`` and the attributes are the values the node will have (None: unchanged)."""

    def write(self, node: Node, offset: int, buf: bytes, mtime_ns: int) -> None: ...

    def setattr(
        self,
        node: Node,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> None: ...

    def unlink(self, node: Node) -> None: ...

    def rename(
        self, node: Node, target: Node | None, new_parent: Node, new_name: bytes, exchange: bool
    ) -> None: ...


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL)


class NodeTable(Namespace):
    """All nodes of one mount and the requests that use and change them."""

    def __init__(
        self,
        *,
        root_mode: int = _DEFAULTS.mode,
        root_uid: int = _DEFAULTS.uid,
        root_gid: int = _DEFAULTS.gid,
        policy: ReclaimPolicy | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.limits = limits or Limits()
        self._limit_logged_at = -LIMIT_LOG_INTERVAL
        #: Told of data changes before they are made (lockfs.persist), or None.
        self.observer: DataObserver | None = None
        super().__init__(
            root_mode=root_mode,
            root_uid=root_uid,
            root_gid=root_gid,
            policy=policy or ReclaimPolicy(),
            clock=clock,
            wall_clock_ns=wall_clock_ns,
        )

    # ----------------------------------------------------------------- limits

    def _log_entry_limit(self) -> None:
        """Creating failed at ``max_entries``: log it (at most once a minute), naming the
        directory that holds the most entries."""
        now = self.clock()
        if now - self._limit_logged_at < LIMIT_LOG_INTERVAL:
            return
        self._limit_logged_at = now
        busiest = max(
            (node for node in self.nodes.values() if node.children),
            key=lambda node: len(node.children or ()),
            default=self.root,
        )
        log.error(
            "entry limit reached (%d live entries, max_entries=%d): creating fails with ENOSPC "
            "until entries are released; busiest directory: /%s (%d entries)",
            len(self.nodes),
            self.limits.max_entries,
            busiest.path().decode("utf-8", "backslashreplace"),
            len(busiest.children or ()),
        )

    def _check_size(self, node: Node, size: int) -> None:
        if node.children is not None:
            raise FsError(errno.EISDIR)
        if size < 0:
            raise FsError(errno.EINVAL)
        if size > self.limits.max_file_size:
            raise FsError(errno.EFBIG)

    def capacity(self) -> Capacity:
        """STATFS: ``max_entries`` (never fewer than the entries held) and what is left of it."""
        return self.limits.capacity(len(self.nodes))

    # ----------------------------------------------------------------- kernel references

    def lookup(self, parent_ino: int, name: bytes) -> Node | None:
        """Resolve a name and take a kernel reference on the node it names.

        An absent name gives ``None``, not :class:`FsError`: it is the most common answer of a
        cold lock cycle (the lock, its temporary name and the rename target are looked up
        before they exist), and an exception costs more than the rest of the lookup. A parent
        that is not a directory, or unknown, and an overlong name still raise.
        """
        node = self._named(parent_ino, name)
        if node is None:
            return None
        self._add_lookup(node)
        assert node.parent is not None
        self.idle.touch(node.parent)
        return node

    def getattr(self, ino: int) -> Node:
        """GETATTR: the node whose attributes the kernel asks for. Asking is a use, like every
        request about a node (PBS's lock helper stats its lock file before and after locking)."""
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT)
        self.idle.touch(node)
        return node

    def readdirplus(self, ino: int, after: int, reply: Callable[[bytes, Node, int], bool]) -> None:
        """READDIRPLUS: offer the entries of directory ``ino`` after cookie ``after`` (see
        :meth:`listing`) to ``reply(name, node, cookie)`` until it returns False (the kernel's
        buffer is full: that entry was not sent, and the next request resumes with it), at
        most :data:`LISTED_PER_REQUEST` of them (the kernel asks again for the rest).

        Every entry sent is a kernel lookup reference but not a use
        (:meth:`_add_listed_lookup`), except ``.`` and ``..``, which the kernel skips without
        taking a reference. The directory itself is used.
        """
        room = LISTED_PER_REQUEST
        for name, node, cookie in self.listing(ino, after):
            if not room or not reply(name, node, cookie):
                return
            room -= 1
            if name != b"." and name != b"..":
                self._add_listed_lookup(node)

    # ----------------------------------------------------------------- namespace changes

    def _new_entry(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        _check_name(name)
        parent = self._dir(parent_ino)
        assert parent.children is not None
        if parent.parent is None:
            raise FsError(errno.ENOENT)  # creating inside a removed directory
        if name in parent.children:
            raise FsError(errno.EEXIST)
        if parent.depth >= self.limits.max_depth:
            raise FsError(errno.ENAMETOOLONG)
        if len(self.nodes) >= self.limits.max_entries:
            self._log_entry_limit()
            raise FsError(errno.ENOSPC)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        node = self._new_node(mode, uid, gid)
        self._attach(parent, name, node)
        self._modified(parent)
        return node

    def mkdir(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        """Create a directory; the reply is an entry, so the kernel holds one reference."""
        node = self._new_entry(parent_ino, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._add_lookup(node)
        return node

    def mknod(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        """Create a regular file without opening it; other node types are refused (EPERM)."""
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise FsError(errno.EPERM)
        node = self._new_entry(parent_ino, name, stat.S_IFREG | (mode & 0o7777), uid, gid)
        self._add_lookup(node)
        return node

    def create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        """Create and open a regular file (the kernel checked O_EXCL against its dcache)."""
        node = self._new_entry(parent_ino, name, stat.S_IFREG | (mode & 0o7777), uid, gid)
        node.opens += 1
        self.open_count += 1
        self._add_lookup(node)
        node.open_since = node.last_used
        return node

    def unlink(self, parent_ino: int, name: bytes) -> None:
        node = self.child(parent_ino, name)
        if node.children is not None:
            raise FsError(errno.EISDIR)
        if self.observer is not None:
            self.observer.unlink(node)
        self._unlink_node(node)
        assert node.parent is None
        self._modified(self._dir(parent_ino))

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        node = self.child(parent_ino, name)
        if node.children is None:
            raise FsError(errno.ENOTDIR)
        if node.children:
            raise FsError(errno.ENOTEMPTY)
        self._unlink_node(node)
        self._modified(self._dir(parent_ino))

    def rename(
        self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes, flags: int
    ) -> None:
        """POSIX rename, plus ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FsError(errno.EINVAL)
        _check_name(new_name)
        node = self.child(old_parent_ino, old_name)
        new_parent = self._dir(new_parent_ino)
        old_parent = self._dir(old_parent_ino)
        assert new_parent.children is not None
        if new_parent.parent is None:
            raise FsError(errno.ENOENT)
        target = new_parent.children.get(new_name)
        if node.children is not None and self._is_ancestor(node, new_parent):
            raise FsError(errno.EINVAL)
        if new_parent is not old_parent:
            self.limits.check_move(new_parent, node)
            if flags & RENAME_EXCHANGE and target is not None:
                self.limits.check_move(old_parent, target)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FsError(errno.ENOENT)
            if target.children is not None and self._is_ancestor(target, old_parent):
                raise FsError(errno.EINVAL)
            if target is not node:
                if self.observer is not None:
                    self.observer.rename(node, target, new_parent, new_name, True)
                same = new_parent is old_parent
                self._detach(node, keep_order=same)
                self._detach(target, keep_order=same)
                self._attach(new_parent, new_name, node, keep_order=same)
                self._attach(old_parent, old_name, target, keep_order=same)
                target.ctime_ns = self._now_ns()
                self.idle.touch(target)
        else:
            if target is node:
                return
            if target is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                if node.children is not None:
                    if target.children is None:
                        raise FsError(errno.ENOTDIR)
                    if target.children:
                        raise FsError(errno.ENOTEMPTY)
                elif target.children is not None:
                    raise FsError(errno.EISDIR)
            if self.observer is not None:
                self.observer.rename(node, target, new_parent, new_name, False)
            if target is not None:
                self._unlink_node(target)
            same = new_parent is old_parent
            self._detach(node, keep_order=same)
            self._attach(new_parent, new_name, node, keep_order=same)
        node.ctime_ns = self._now_ns()
        self.idle.touch(node)
        self._modified(old_parent)
        if new_parent is not old_parent:
            self._modified(new_parent)

    # ----------------------------------------------------------------- what the table refuses

    def link(self, ino: int, new_parent_ino: int, new_name: bytes) -> NoReturn:
        """LINK is refused (EPERM): one name per node keeps reclaim simple. PBS links only
        where ``renameat2`` fails (EINVAL), which it does not here. A name too long for any
        entry gets ENAMETOOLONG first, as everywhere."""
        if len(new_name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        raise FsError(errno.EPERM)

    def symlink(self, parent_ino: int, name: bytes, target: bytes) -> NoReturn:
        """SYMLINK is refused (EPERM): lock directories hold no symbolic links. A name too
        long for any entry gets ENAMETOOLONG first, as everywhere."""
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        raise FsError(errno.EPERM)

    def readlink(self, ino: int) -> NoReturn:
        """READLINK: EINVAL, as for any node that is not a symbolic link (none is)."""
        raise FsError(errno.EINVAL)

    # ----------------------------------------------------------------- open files and data

    def open(self, ino: int, flags: int = 0) -> Node:
        """OPEN a regular file with open(2) ``flags`` (EISDIR for a directory). The kernel
        passes O_TRUNC here instead of a SETATTR (atomic_o_trunc): it empties the file and marks
        mtime and ctime for update even if the file was empty already, as POSIX and tmpfs do."""
        node = self.get(ino)
        if node.children is not None:
            raise FsError(errno.EISDIR)
        self._open(node)
        if flags & os.O_TRUNC:
            self._truncate(node, 0)
        return node

    def opendir(self, ino: int) -> Node:
        """OPENDIR a directory (ENOTDIR for anything else)."""
        node = self.get(ino)
        if node.children is None:
            raise FsError(errno.ENOTDIR)
        self._open(node)
        return node

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self.get(ino)
        if node.data is None:
            return b""
        node.atime_ns = self._now_ns()
        return node.data.read(offset, size)

    def write(self, ino: int, offset: int, buf: bytes) -> int:
        node = self.get(ino)
        if not buf:
            return 0
        if offset + len(buf) > self.limits.max_file_size:
            raise FsError(errno.EFBIG)
        now = self._now_ns()
        if self.observer is not None:
            self.observer.write(node, offset, buf, now)
        node.write(offset, buf, now)
        self.idle.touch(node)
        return len(buf)

    def _truncate(self, node: Node, size: int) -> None:
        """Set a regular file's size (OPEN with O_TRUNC)."""
        self._check_size(node, size)
        now = self._now_ns()
        if self.observer is not None:
            self.observer.setattr(node, size=size, mtime_ns=now)
        self._set_size(node, size, now)

    def _set_size(self, node: Node, size: int, now: int) -> None:
        """Set a checked size; data is never kept for an empty file, so emptying it makes it
        idle again."""
        node.resize(size, now)
        self.idle.touch(node)

    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        """Change attributes (the kernel already checked permissions: default_permissions)."""
        node = self.get(ino)
        now = self._now_ns()
        if size is not None:
            self._check_size(node, size)
        if self.observer is not None:
            self.observer.setattr(
                node,
                size=size,
                mode=None if mode is None else mode & 0o7777,
                uid=uid,
                gid=gid,
                mtime_ns=mtime_ns if mtime_ns is not None or size is None else now,
            )
        if size is not None:
            self._set_size(node, size, now)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        node.ctime_ns = now
        self.idle.touch(node)
        return node

    # ----------------------------------------------------------------- consistency

    def check(self) -> None:
        """Raise :class:`lockfs.tablecheck.TableInconsistent` unless the table's structural
        invariants hold (used by tests; works under ``python -O``)."""
        check_table(self)
