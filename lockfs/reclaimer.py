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
        deadline = table.next_deadline()
        wait = longest if deadline is None else deadline - table.clock()
        await trio.sleep(min(longest, max(MIN_SLEEP, wait)))
