"""Idle nodes and when they fall due: the one statement of what *idle* means, a queue per kind
of node in order of last use, and the delays (:class:`ReclaimPolicy`).

A node is *idle* when it is linked, nobody has it open and it holds nothing: an empty regular
file, or a directory without entries (:func:`is_idle`). Every use of a node (:meth:`touch`)
records the time and moves it to the end of its queue, or takes it off when it is not idle, so
the oldest use is always first and finding the due nodes costs O(due). A queued node is idle
(the table touches a node after every change that can end its idleness, and takes it off when
it loses its name); the table decides what becomes of a due node (lockfs.nodes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .node import ROOT_INO, Node
from .options import MountOptions

_DEFAULTS = MountOptions()


@dataclass(slots=True)
class ReclaimPolicy:
    """How long an idle node waits before the daemon asks the kernel to drop it (seconds).
    The defaults are the mount options' (lockfs.options)."""

    file_delay: float = _DEFAULTS.reclaim_delay
    dir_grace: float = _DEFAULTS.dir_grace

    @property
    def dir_entry_timeout(self) -> float:
        """How long the kernel may trust a directory's entry: half the grace, so the entry is
        stale before the directory can be due, and a path walk through it (``mkdir -p`` then
        ``open``) must ask again, which is a use. See docs/design.md."""
        return self.dir_grace / 2


def is_idle(node: Node) -> bool:
    """Whether ``node`` is idle: linked, not the root, not open, and empty (a regular file
    without data, a directory without entries). A file with data is never idle: it is kept."""
    if node.parent is None or node.ino == ROOT_INO or node.opens:
        return False
    if node.children is not None:
        return not node.children
    return not node.data


class IdleQueues:
    """The idle nodes of one table, oldest use first, and when each falls due."""

    def __init__(self, policy: ReclaimPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        # Values are unused; OrderedDict gives O(1) move-to-end and pop-oldest.
        self.files: OrderedDict[Node, None] = OrderedDict()
        self.dirs: OrderedDict[Node, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files) + len(self.dirs)

    def queue_of(self, node: Node) -> OrderedDict[Node, None]:
        return self.dirs if node.children is not None else self.files

    def delay_of(self, node: Node) -> float:
        return self.policy.dir_grace if node.children is not None else self.policy.file_delay

    def touch(self, node: Node) -> None:
        """Record a use of ``node`` and (re)queue it at the end if it is idle, else take it
        off its queue."""
        node.last_used = self.clock()
        queue = self.dirs if node.children is not None else self.files
        if is_idle(node):
            queue[node] = None
            queue.move_to_end(node)
        else:
            queue.pop(node, None)

    def discard(self, node: Node) -> None:
        """Take ``node`` off its queue (it lost its name or left the table)."""
        self.queue_of(node).pop(node, None)

    def requeue_unused(self, node: Node) -> None:
        """Queue ``node`` again, if it is idle and off its queue, without a use: it keeps its
        last-use time, so it falls due once the nodes ahead of it are, at most one delay
        later (a readdirplus entry: a new kernel reference that is not a use)."""
        if is_idle(node):
            queue = self.queue_of(node)
            if node not in queue:
                queue[node] = None

    def waited_out(self, node: Node) -> bool:
        """Whether ``node`` is idle and its delay has passed since its last use."""
        return is_idle(node) and self.clock() - node.last_used >= self.delay_of(node)

    def _queues_and_delays(self) -> tuple[tuple[OrderedDict[Node, None], float], ...]:
        return (self.files, self.policy.file_delay), (self.dirs, self.policy.dir_grace)

    def pop_due(self) -> Iterator[Node]:
        """Take the nodes whose delay has passed off the queues, files first, oldest use
        first, and yield the ones still idle. The caller may change the table between two
        nodes (a reclaim touches the parent directory, which may queue it)."""
        now = self.clock()
        for queue, delay in self._queues_and_delays():
            while queue:
                node = next(iter(queue))
                if node.last_used + delay > now:
                    break
                queue.popitem(last=False)
                if is_idle(node):
                    yield node

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest idle node becomes due, or ``None``."""
        deadlines = []
        for queue, delay in self._queues_and_delays():
            if queue:
                deadlines.append(next(iter(queue)).last_used + delay)
        return min(deadlines) if deadlines else None

    def __contains__(self, node: Node) -> bool:
        return node in self.queue_of(node)

    def __iter__(self) -> Iterator[Node]:
        """Every queued node (files, then directories)."""
        yield from self.files
        yield from self.dirs
