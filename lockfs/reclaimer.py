"""The reclaim task: asks the kernel to drop entries of nodes that stayed idle long enough."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .nodes import NodeTable

#: Never wake more often than this: due nodes are handled in batches.
MIN_SLEEP = 0.01


def max_sleep(table: NodeTable) -> float:
    """The longest the task sleeps, so that reclaim lags its delay by at most half of it."""
    shortest = min(table.policy.file_delay, table.policy.dir_grace)
    return min(1.0, max(MIN_SLEEP, shortest / 2))


def next_sleep(table: NodeTable, longest: float) -> float:
    """How long to sleep after a pass: until half of ``longest`` after the earliest deadline,
    so that the nodes falling due in that window are handled in the same pass (one list for
    the invalidator, one burst of FORGETs), and never longer than ``longest``.

    A steady stream of idle nodes is then handled in a few passes per second instead of one
    per node every ``MIN_SLEEP``; every pass costs wake-ups of three threads (this task, the
    invalidator, the request loop for the FORGETs), which were most of the reclaim cost."""
    deadline = table.next_deadline()
    if deadline is None:
        return longest
    return min(longest, max(MIN_SLEEP, deadline - table.clock() + longest / 2))


async def reclaim_loop(
    table: NodeTable, invalidate: Callable[[list[tuple[int, bytes]]], None]
) -> None:
    """Run forever: hand the entries of all due nodes to ``invalidate``, one list of
    ``(parent_ino, name)`` per pass (never an empty one).

    The kernel answers an invalidation by dropping its dentry and, once nothing else pins the
    inode, with FORGET, which lets the table drop the node. ``invalidate`` must not block: it
    queues the list for the thread that sends the notifications (:mod:`lockfs.invalidator`).
    """
    longest = max_sleep(table)
    while True:
        entries = [(node.parent.ino, node.name) for node in table.due() if node.parent]
        if entries:
            invalidate(entries)
        await trio.sleep(next_sleep(table, longest))
