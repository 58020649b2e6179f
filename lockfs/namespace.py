"""The namespace and the kernel's references to it, kept together: their invariants span both.

:class:`Namespace` holds every node of a mount, the name each one has, how often the kernel
refers to it (``lookups``) and how many handles are open on it (``opens``), and makes every
change to them through transitions that keep these rules (docs/design.md, "The node table's
invariants"):

* A name maps to exactly one node. Only an explicit ``unlink``/``rmdir``/``rename`` (a process
  asked for it) or :meth:`Namespace._reclaim` detaches a name, and ``_reclaim`` runs only for
  a node that the kernel no longer references (``lookups == 0``) and nobody has open
  (``opens == 0``). Because the kernel keeps ``flock``/``fcntl`` locks on its own inode, which
  exists exactly as long as its lookup count is non-zero, a reclaimed name can never have a
  lock holder.
* Inode numbers come from a counter and are never reused within a mount.
* An idle node (lockfs.idle) whose delay has passed is reclaimed once the kernel drops it, or
  handed out by :meth:`Namespace.due` so that the daemon asks the kernel to drop its entry.

The requests that change it, with their checks and errnos, are :class:`lockfs.nodes.NodeTable`.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .entryorder import EntryOrder
from .idle import IdleQueues, ReclaimPolicy
from .node import NAME_MAX, ROOT_INO, FsError, Node


@dataclass(slots=True)
class TableStats:
    """Cumulative counters of the table's life."""

    created: int = 0
    reclaimed: int = 0
    invalidations: int = 0


class Namespace:
    """All nodes of one mount, their names and reference counts, and the idle queues."""

    def __init__(
        self,
        *,
        root_mode: int,
        root_uid: int,
        root_gid: int,
        policy: ReclaimPolicy,
        clock: Callable[[], float],
        wall_clock_ns: Callable[[], int],
    ) -> None:
        self.stats = TableStats()
        self.clock = clock
        self._now_ns = wall_clock_ns
        self._next_ino = ROOT_INO
        self.nodes: dict[int, Node] = {}
        #: Kept up to date at every transition, so status never walks the table.
        self.dir_count = 0
        self.open_count = 0  # nodes with opens > 0
        self.referenced_count = 0  # nodes with lookups > 0
        self.idle = IdleQueues(policy, clock)
        self.root = self._new_node(stat.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid)
        self.root.parent = self.root

    @property
    def policy(self) -> ReclaimPolicy:
        return self.idle.policy

    @policy.setter
    def policy(self, policy: ReclaimPolicy) -> None:
        self.idle.policy = policy

    # ----------------------------------------------------------------- nodes and names

    def _new_node(self, mode: int, uid: int, gid: int) -> Node:
        now = self._now_ns()
        node = Node(self._next_ino, mode, uid, gid, now, now, now)
        if stat.S_ISDIR(mode):
            node.children = {}
            node.order = EntryOrder()
            self.dir_count += 1
        self._next_ino += 1
        self.nodes[node.ino] = node
        self.stats.created += 1
        return node

    def _remove_if_unreferenced(self, node: Node) -> None:
        """Called when a reference to ``node`` went away: if neither the kernel nor a process
        refers to it any more, remove it (unlinked) or reclaim it (idle, its delay passed)."""
        if node.lookups or node.opens or node.ino == ROOT_INO:
            return
        if node.parent is None:
            self._remove_from_table(node)
        elif self.idle.waited_out(node):
            self._reclaim(node)

    def _reclaim(self, node: Node) -> None:
        """The table's own unlink: detach an idle, unreferenced node's name and remove it."""
        parent = node.parent
        assert parent is not None and node.lookups == 0 and node.opens == 0
        self._detach(node)
        self._remove_from_table(node)
        self.stats.reclaimed += 1
        self.idle.touch(parent)

    def _remove_from_table(self, node: Node) -> None:
        """Remove a node that has no name and no reference left from the table's indexes."""
        self.idle.discard(node)
        del self.nodes[node.ino]
        if node.children is not None:
            self.dir_count -= 1

    def _detach(self, node: Node, *, keep_order: bool = False) -> None:
        """Remove ``node``'s name from its directory (``keep_order``: it comes back to the
        same directory at once, under another name, so its place in inode order stays)."""
        parent = node.parent
        assert parent is not None and parent.children is not None and parent.order is not None
        del parent.children[node.name]
        if not keep_order:
            parent.order.remove(node)
        if node.children is not None:
            parent.subdirs -= 1
        node.parent = None
        self.idle.discard(node)

    def _attach(self, parent: Node, name: bytes, node: Node, *, keep_order: bool = False) -> None:
        assert parent.children is not None and parent.order is not None
        parent.children[name] = node
        if not keep_order:
            parent.order.add(node)
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

    def _unlink_node(self, node: Node) -> None:
        """Detach a name on a process's request; the node lives on while referenced, and
        keeps its former path as its name."""
        former_path = node.path()
        self._detach(node)
        node.name = former_path
        node.ctime_ns = self._now_ns()
        self._remove_if_unreferenced(node)

    def _modified(self, directory: Node) -> None:
        directory.mtime_ns = directory.ctime_ns = self._now_ns()
        self.idle.touch(directory)

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

    # ----------------------------------------------------------------- queries

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        node = self.get(ino)
        if node.children is None:
            raise FsError(errno.ENOTDIR)
        return node

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
        exists throughout. The directory keeps its entries in that order
        (lockfs.entryorder): resuming costs a bisection, not a sort of the directory.
        """
        directory = self._dir(ino)
        self.idle.touch(directory)
        if after < 1:
            yield b".", directory, 1
        if after < 2:
            yield b"..", directory.parent or directory, 2
        assert directory.order is not None
        for node in directory.order.after(after - 2):
            if node.parent is directory:  # still there after earlier yields
                yield node.name, node, node.ino + 2

    @property
    def idle_count(self) -> int:
        return len(self.idle)

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest idle node becomes due, or ``None``."""
        return self.idle.next_deadline()

    # ----------------------------------------------------------------- references

    def _add_lookup(self, node: Node) -> None:
        """An entry reply for ``node`` (LOOKUP, CREATE, MKDIR, MKNOD): one more kernel lookup
        reference, and a use."""
        if node.lookups == 0:
            self.referenced_count += 1
        node.lookups += 1
        self.idle.touch(node)

    def _add_listed_lookup(self, node: Node) -> None:
        """A readdirplus entry for ``node`` went to the kernel: one more lookup reference,
        but not a use, so listing a directory never keeps its entries alive.

        The node keeps its last-use time and its place in the idle queue. If it is idle but
        off the queue (:meth:`due` handed it out and this reference may have been taken after
        the kernel processed the invalidation), it is queued again with its old last-use time,
        so that the new reference is invalidated in turn (:meth:`IdleQueues.requeue_unused`).
        """
        if node.lookups == 0:
            self.referenced_count += 1
        node.lookups += 1
        self.idle.requeue_unused(node)

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

    def _open(self, node: Node) -> None:
        node.opens += 1
        self.idle.touch(node)
        if node.opens == 1:
            self.open_count += 1
            node.open_since = node.last_used

    def release(self, ino: int) -> None:
        """RELEASE, RELEASEDIR: one handle on ``ino`` fewer."""
        node = self.nodes.get(ino)
        if node is None or node.opens == 0:
            return
        node.opens -= 1
        self.idle.touch(node)
        if node.opens == 0:
            self.open_count -= 1
            self._remove_if_unreferenced(node)

    def due(self) -> list[Node]:
        """Pop idle nodes whose delay has passed.

        Nodes the kernel no longer references are reclaimed here; the ones returned still have
        kernel references, and the caller asks the kernel to drop their entries (FORGET then
        reclaims the node). A returned node re-enters the queue on its next use.
        """
        out: list[Node] = []
        for node in self.idle.pop_due():
            if node.lookups == 0:
                self._reclaim(node)
            else:
                out.append(node)
                self.stats.invalidations += 1
        return out
