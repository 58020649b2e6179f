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


async def reclaim_loop(table: NodeTable, invalidate: Callable[[int, bytes], None]) -> None:
    """Run forever: hand every due node's entry to ``invalidate(parent_ino, name)``.

    The kernel answers an invalidation by dropping its dentry and, once nothing else pins the
    inode, with FORGET, which lets the table drop the node. ``invalidate`` must not block:
    pyfuse3's ``invalidate_entry_async`` queues the notification for a separate thread.
    """
    longest = max_sleep(table)
    while True:
        for node in table.due():
            parent = node.parent
            if parent is not None:
                invalidate(parent.ino, node.name)
        deadline = table.next_deadline()
        wait = longest if deadline is None else deadline - table.clock()
        await trio.sleep(min(longest, max(MIN_SLEEP, wait)))
