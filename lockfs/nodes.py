"""The node table: names, nodes, kernel lookup counts, open counts and reclaim rules.

This module knows nothing about FUSE; the adapter in :mod:`lockfs.fuse_ops` maps requests onto
it. Every invariant that keeps locks correct lives here:

* A name maps to exactly one node. Only an explicit ``unlink``/``rmdir``/``rename`` (a process
  asked for it) or :meth:`NodeTable._reclaim` detaches a name, and ``_reclaim`` runs only for a
  node that the kernel no longer references (``lookups == 0``) and nobody has open
  (``opens == 0``).
  Because the kernel keeps ``flock``/``fcntl`` locks on its own inode, which exists exactly as
  long as its lookup count is non-zero, a reclaimed name can never have a lock holder.
* Inode numbers come from a counter and are never reused within a mount.
* A node is *idle* when it is linked, nobody has it open and it holds nothing: an empty regular
  file, or a directory without entries. Idle nodes wait in a queue ordered by the time they were
  last used; once their delay has passed, :meth:`NodeTable.due` hands them out so that the
  daemon can ask the kernel to drop its entry. The kernel then sends FORGET, the lookup count
  reaches zero and the node is reclaimed. A file with data is never idle, so it is kept.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, Protocol

ROOT_INO = 1
NAME_MAX = 255
#: At most one "entry limit reached" log line per this many seconds.
LIMIT_LOG_INTERVAL = 60.0

log = logging.getLogger(__name__)

#: ``renameat2`` flags (linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


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
    subdirs: int = 0
    data: bytearray | None = None
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


@dataclass(slots=True)
class ReclaimPolicy:
    """How long an idle node waits before the daemon asks the kernel to drop it (seconds)."""

    file_delay: float = 0.5
    dir_grace: float = 10.0

    @property
    def dir_entry_timeout(self) -> float:
        """How long the kernel may trust a directory's entry: half the grace, so the entry is
        stale before the directory can be due, and a path walk through it (``mkdir -p`` then
        ``open``) must ask again, which is a use. See docs/design.md."""
        return self.dir_grace / 2


@dataclass(slots=True)
class Limits:
    """Bounds that keep one misbehaving user from exhausting the daemon's memory.

    Hitting one fails only the request that would exceed it (ENOSPC, EFBIG, ENAMETOOLONG);
    nothing that exists is touched, and the table recovers as entries are reclaimed.
    """

    max_entries: int = 1_000_000
    max_file_size: int = 64 << 20
    max_depth: int = 32


class Capacity(NamedTuple):
    """What STATFS reports: entries the table may hold, how many more it takes before creating
    fails with ENOSPC, and the longest name."""

    total: int
    free: int
    name_max: int


@dataclass(slots=True)
class TableStats:
    """Cumulative counters of the table's life."""

    created: int = 0
    reclaimed: int = 0
    invalidations: int = 0


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


class NodeTable:
    """All nodes of one mount, their names, reference counts and the idle queues."""

    def __init__(
        self,
        *,
        root_mode: int = 0o755,
        root_uid: int = 0,
        root_gid: int = 0,
        policy: ReclaimPolicy | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.policy = policy or ReclaimPolicy()
        self.limits = limits or Limits()
        self.stats = TableStats()
        self._limit_logged_at = -LIMIT_LOG_INTERVAL
        self.clock = clock
        self._now_ns = wall_clock_ns
        self._next_ino = ROOT_INO
        self.nodes: dict[int, Node] = {}
        #: Kept up to date at every transition, so status never walks the table.
        self.dir_count = 0
        self.open_count = 0  # nodes with opens > 0
        self.referenced_count = 0  # nodes with lookups > 0
        # Idle linked nodes, oldest use first. Values are unused; OrderedDict gives O(1)
        # move-to-end and pop-oldest.
        self._idle_files: OrderedDict[Node, None] = OrderedDict()
        self._idle_dirs: OrderedDict[Node, None] = OrderedDict()
        #: Told of data changes before they are made (lockfs.persist), or None.
        self.observer: DataObserver | None = None
        self.root = self._new_node(stat.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid)
        self.root.parent = self.root

    # ----------------------------------------------------------------- bookkeeping

    def _new_node(self, mode: int, uid: int, gid: int) -> Node:
        now = self._now_ns()
        node = Node(self._next_ino, mode, uid, gid, now, now, now)
        if stat.S_ISDIR(mode):
            node.children = {}
            self.dir_count += 1
        self._next_ino += 1
        self.nodes[node.ino] = node
        self.stats.created += 1
        return node

    def _is_idle(self, node: Node) -> bool:
        if node.parent is None or node.ino == ROOT_INO or node.opens:
            return False
        if node.children is not None:
            return not node.children
        return not node.data

    def _queue_of(self, node: Node) -> OrderedDict[Node, None]:
        return self._idle_dirs if node.children is not None else self._idle_files

    def _delay_of(self, node: Node) -> float:
        return self.policy.dir_grace if node.children is not None else self.policy.file_delay

    def _touch(self, node: Node) -> None:
        """Record a use of ``node`` and (re)queue it if it is idle, else take it off the queue.

        Runs several times per request: :meth:`_queue_of` and :meth:`_is_idle` written out.
        """
        node.last_used = self.clock()
        children = node.children
        if children is None:
            queue, empty = self._idle_files, not node.data
        else:
            queue, empty = self._idle_dirs, not children
        if empty and not node.opens and node.parent is not None and node.ino != ROOT_INO:
            queue[node] = None
            queue.move_to_end(node)
        else:
            queue.pop(node, None)

    def _remove_if_unreferenced(self, node: Node) -> None:
        """Called when a reference to ``node`` went away: if neither the kernel nor a process
        refers to it any more, remove it (unlinked) or reclaim it (idle, its delay passed)."""
        if node.lookups or node.opens or node.ino == ROOT_INO:
            return
        if node.parent is None:
            self._remove_from_table(node)
        elif self._is_idle(node) and self.clock() - node.last_used >= self._delay_of(node):
            self._reclaim(node)

    def _reclaim(self, node: Node) -> None:
        """The table's own unlink: detach an idle, unreferenced node's name and remove it."""
        parent = node.parent
        assert parent is not None and node.lookups == 0 and node.opens == 0
        self._detach(node)
        self._remove_from_table(node)
        self.stats.reclaimed += 1
        self._touch(parent)

    def _remove_from_table(self, node: Node) -> None:
        """Remove a node that has no name and no reference left from the table's indexes."""
        self._queue_of(node).pop(node, None)
        del self.nodes[node.ino]
        if node.children is not None:
            self.dir_count -= 1

    def _detach(self, node: Node) -> None:
        """Remove ``node``'s name from its directory."""
        parent = node.parent
        assert parent is not None and parent.children is not None
        del parent.children[node.name]
        if node.children is not None:
            parent.subdirs -= 1
        node.parent = None
        self._queue_of(node).pop(node, None)

    def _attach(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None
        parent.children[name] = node
        if node.children is not None:
            parent.subdirs += 1
        if node.children:  # a moved, non-empty directory: renumber its subtree
            self._set_depth(node, parent.depth + 1)
        else:
            node.depth = parent.depth + 1
        node.parent = parent
        node.name = name

    def _set_depth(self, directory: Node, depth: int) -> None:
        """Renumber a moved subtree (iteratively: subtrees are at most max_depth deep)."""
        stack = [(directory, depth)]
        while stack:
            node, node_depth = stack.pop()
            node.depth = node_depth
            if node.children:
                stack.extend((child, node_depth + 1) for child in node.children.values())

    def _subtree_height(self, directory: Node) -> int:
        """Levels below ``directory`` (0 for an empty directory or a file)."""
        height, level = 0, [directory]
        while True:
            level = [c for n in level if n.children for c in n.children.values()]
            if not level:
                return height
            height += 1

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

    def _unlink_node(self, node: Node) -> None:
        """Detach a name on a process's request; the node lives on while referenced, and
        keeps its former path as its name."""
        former_path = node.path()
        self._detach(node)
        node.name = former_path
        node.ctime_ns = self._now_ns()
        self._remove_if_unreferenced(node)

    def _dir(self, ino: int) -> Node:
        node = self.get(ino)
        if node.children is None:
            raise FsError(errno.ENOTDIR)
        return node

    def _modified(self, directory: Node) -> None:
        directory.mtime_ns = directory.ctime_ns = self._now_ns()
        self._touch(directory)

    # ----------------------------------------------------------------- queries

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def _named(self, parent_ino: int, name: bytes) -> Node | None:
        """The node named ``name`` in directory ``parent_ino``, or ``None`` (no reference
        taken); an unknown parent, one that is not a directory, or an overlong name raise."""
        parent = self._dir(parent_ino)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        assert parent.children is not None
        return parent.children.get(name)

    def child(self, parent_ino: int, name: bytes) -> Node:
        """The node named ``name`` in directory ``parent_ino`` (no reference taken)."""
        node = self._named(parent_ino, name)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def listing(self, ino: int, after: int) -> Iterator[tuple[bytes, Node, int]]:
        """Entries of a directory as ``(name, node, cookie)``, ``.`` and ``..`` first.

        Cookies are 1 for ``.``, 2 for ``..`` and ``ino + 2`` for entries, listed in inode
        order, so a listing resumed after any cookie neither repeats nor skips an entry that
        exists throughout.
        """
        directory = self._dir(ino)
        self._touch(directory)
        if after < 1:
            yield b".", directory, 1
        if after < 2:
            yield b"..", directory.parent or directory, 2
        assert directory.children is not None
        entries = sorted(
            (node for node in directory.children.values() if node.ino + 2 > after),
            key=lambda node: node.ino,
        )
        for node in entries:
            if node.parent is directory:  # still there after earlier yields
                yield node.name, node, node.ino + 2

    def capacity(self) -> Capacity:
        """STATFS: ``max_entries`` (never fewer than the entries held) and what is left of it."""
        used = len(self.nodes)
        total = max(self.limits.max_entries, used)
        return Capacity(total, total - used, NAME_MAX)

    @property
    def idle_count(self) -> int:
        return len(self._idle_files) + len(self._idle_dirs)

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest idle node becomes due, or ``None``."""
        deadlines = []
        for queue, delay in (
            (self._idle_files, self.policy.file_delay),
            (self._idle_dirs, self.policy.dir_grace),
        ):
            if queue:
                deadlines.append(next(iter(queue)).last_used + delay)
        return min(deadlines) if deadlines else None

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
        self._touch(node.parent)
        return node

    def getattr(self, ino: int) -> Node:
        """GETATTR: the node whose attributes the kernel asks for. Asking is a use, like every
        request about a node (PBS's lock helper stats its lock file before and after locking)."""
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT)
        self._touch(node)
        return node

    def _add_lookup(self, node: Node) -> None:
        """An entry reply for ``node`` (LOOKUP, CREATE, MKDIR, MKNOD): one more kernel lookup
        reference, and a use."""
        if node.lookups == 0:
            self.referenced_count += 1
        node.lookups += 1
        self._touch(node)

    def readdirplus(self, ino: int, after: int, reply: Callable[[bytes, Node, int], bool]) -> None:
        """READDIRPLUS: offer the entries of directory ``ino`` after cookie ``after`` (see
        :meth:`listing`) to ``reply(name, node, cookie)`` until it returns False (the kernel's
        buffer is full: that entry was not sent, and the next request resumes with it).

        Every entry sent is a kernel lookup reference but not a use
        (:meth:`_add_listed_lookup`), except ``.`` and ``..``, which the kernel skips without
        taking a reference. The directory itself is used.
        """
        for name, node, cookie in self.listing(ino, after):
            if not reply(name, node, cookie):
                return
            if name != b"." and name != b"..":
                self._add_listed_lookup(node)

    def _add_listed_lookup(self, node: Node) -> None:
        """A readdirplus entry for ``node`` went to the kernel: one more lookup reference,
        but not a use, so listing a directory never keeps its entries alive.

        The node keeps its last-use time and its place in the idle queue. If it is idle but
        off the queue (:meth:`due` handed it out and this reference may have been taken after
        the kernel processed the invalidation), it is queued again with its old last-use time,
        so that the new reference is invalidated in turn: it is handed out again once the
        nodes ahead of it are due, at most one delay later.
        """
        if node.lookups == 0:
            self.referenced_count += 1
        node.lookups += 1
        if self._is_idle(node):
            queue = self._queue_of(node)
            if node not in queue:
                queue[node] = None

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` lookup references on ``ino``."""
        node = self.nodes.get(ino)
        if node is None or node.ino == ROOT_INO:
            return
        if node.lookups == 0:
            return
        node.lookups = max(0, node.lookups - count)
        if node.lookups == 0:
            self.referenced_count -= 1
            self._remove_if_unreferenced(node)

    def due(self) -> list[Node]:
        """Pop idle nodes whose delay has passed.

        Nodes the kernel no longer references are reclaimed here; the ones returned still have
        kernel references, and the caller asks the kernel to drop their entries (FORGET then
        reclaims the node). A returned node re-enters the queue on its next use.
        """
        now = self.clock()
        out: list[Node] = []
        for queue, delay in (
            (self._idle_files, self.policy.file_delay),
            (self._idle_dirs, self.policy.dir_grace),
        ):
            while queue:
                node = next(iter(queue))
                if node.last_used + delay > now:
                    break
                queue.popitem(last=False)
                if not self._is_idle(node):
                    continue
                if node.lookups == 0:
                    self._reclaim(node)
                else:
                    out.append(node)
                    self.stats.invalidations += 1
        return out

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
            self._check_depth(new_parent, node)
            if flags & RENAME_EXCHANGE and target is not None:
                self._check_depth(old_parent, target)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FsError(errno.ENOENT)
            if target.children is not None and self._is_ancestor(target, old_parent):
                raise FsError(errno.EINVAL)
            if target is not node:
                if self.observer is not None:
                    self.observer.rename(node, target, new_parent, new_name, True)
                self._detach(node)
                self._detach(target)
                self._attach(new_parent, new_name, node)
                self._attach(old_parent, old_name, target)
                target.ctime_ns = self._now_ns()
                self._touch(target)
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
            self._detach(node)
            self._attach(new_parent, new_name, node)
        node.ctime_ns = self._now_ns()
        self._touch(node)
        self._modified(old_parent)
        if new_parent is not old_parent:
            self._modified(new_parent)

    def _check_depth(self, parent: Node, node: Node) -> None:
        if parent.depth + 1 + self._subtree_height(node) > self.limits.max_depth:
            raise FsError(errno.ENAMETOOLONG)

    def _is_ancestor(self, node: Node, other: Node) -> bool:
        """Whether ``node`` is ``other`` or one of its ancestors."""
        cursor: Node | None = other
        while cursor is not None:
            if cursor is node:
                return True
            if cursor.ino == ROOT_INO:
                return False
            cursor = cursor.parent
        return False

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

    def _open(self, node: Node) -> None:
        node.opens += 1
        self._touch(node)
        if node.opens == 1:
            self.open_count += 1
            node.open_since = node.last_used

    def release(self, ino: int) -> None:
        node = self.nodes.get(ino)
        if node is None or node.opens == 0:
            return
        node.opens -= 1
        self._touch(node)
        if node.opens == 0:
            self.open_count -= 1
            self._remove_if_unreferenced(node)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self.get(ino)
        if node.data is None:
            return b""
        node.atime_ns = self._now_ns()
        return bytes(node.data[offset : offset + size])

    def write(self, ino: int, offset: int, buf: bytes) -> int:
        node = self.get(ino)
        if not buf:
            return 0
        if offset + len(buf) > self.limits.max_file_size:
            raise FsError(errno.EFBIG)
        now = self._now_ns()
        if self.observer is not None:
            self.observer.write(node, offset, buf, now)
        data = node.data
        if data is None:
            data = node.data = bytearray()
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        data[offset : offset + len(buf)] = buf
        node.mtime_ns = node.ctime_ns = now
        self._touch(node)
        return len(buf)

    def _truncate(self, node: Node, size: int) -> None:
        """Set a regular file's size (OPEN with O_TRUNC)."""
        self._check_size(node, size)
        now = self._now_ns()
        if self.observer is not None:
            self.observer.setattr(node, size=size, mtime_ns=now)
        self._set_size(node, size, now)

    def _check_size(self, node: Node, size: int) -> None:
        if node.children is not None:
            raise FsError(errno.EISDIR)
        if size < 0:
            raise FsError(errno.EINVAL)
        if size > self.limits.max_file_size:
            raise FsError(errno.EFBIG)

    def _set_size(self, node: Node, size: int, now: int) -> None:
        """Set a checked size; data is never kept for an empty file, so emptying it makes it
        idle again."""
        if size == 0:
            node.data = None
        else:
            data = node.data if node.data is not None else bytearray()
            if size < len(data):
                del data[size:]
            else:
                data.extend(bytes(size - len(data)))
            node.data = data
        node.mtime_ns = node.ctime_ns = now
        self._touch(node)

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
        self._touch(node)
        return node

    # ----------------------------------------------------------------- consistency

    def check(self) -> None:
        """Assert the table's structural invariants (used by tests)."""
        for node in self.nodes.values():
            assert node.lookups >= 0 and node.opens >= 0
            if node.ino == ROOT_INO:
                continue
            if node.parent is not None:
                assert node.parent.children is not None
                assert node.parent.children.get(node.name) is node, node.path()
                assert node.parent.ino in self.nodes
            else:
                assert node.lookups or node.opens, f"unreferenced unlinked node {node.ino}"
            if node.children is not None:
                assert node.subdirs == sum(1 for c in node.children.values() if c.is_dir)
            queued = node in self._queue_of(node)
            if queued:
                assert self._is_idle(node)
        for queue in (self._idle_files, self._idle_dirs):
            for node in queue:
                assert self.nodes.get(node.ino) is node
        nodes = self.nodes.values()
        assert self.dir_count == sum(1 for node in nodes if node.children is not None)
        assert self.open_count == sum(1 for node in nodes if node.opens)
        assert self.referenced_count == sum(1 for node in nodes if node.lookups)
