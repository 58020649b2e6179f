"""Tests of the reclaim task on trio's mock clock: idle entries are invalidated in time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from trio.testing import MockClock

from lockfs.nodes import ROOT_INO, Node, NodeTable, ReclaimPolicy
from lockfs.reclaimer import MIN_SLEEP, max_sleep, reclaim_loop

FILE_DELAY = 0.5
DIR_GRACE = 2.0


class CountingTable(NodeTable):
    """A node table that counts how often the reclaim task polled it."""

    polls = 0

    def due(self) -> list[Node]:
        self.polls += 1
        return super().due()


class Kernel:
    """Stands in for the kernel: records invalidations and then forgets the node's lookups.

    ``pinned`` inodes (a process's cwd, say) are invalidated but never forgotten.
    """

    def __init__(self, table: NodeTable) -> None:
        self.table = table
        self.calls: list[tuple[float, int, bytes]] = []
        self.pinned: set[int] = set()
        self.batches = 0

    def invalidate(self, entries: list[tuple[int, bytes]]) -> None:
        """One reclaim pass's list: never empty, each entry once."""
        assert entries and len(set(entries)) == len(entries)
        self.batches += 1
        for parent_ino, name in entries:
            self.calls.append((trio.current_time(), parent_ino, name))
            node = self.table.child(parent_ino, name)
            if node.ino not in self.pinned and not node.opens:
                self.table.forget(node.ino, node.lookups)


def make_table(file_delay: float = FILE_DELAY, dir_grace: float = DIR_GRACE) -> CountingTable:
    """A table on trio's clock, so that the table and the task agree on the time."""
    return CountingTable(
        policy=ReclaimPolicy(file_delay=file_delay, dir_grace=dir_grace),
        clock=trio.current_time,
    )


@asynccontextmanager
async def reclaiming(table: NodeTable) -> AsyncIterator[Kernel]:
    """Run the reclaim task for the duration of the block."""
    kernel = Kernel(table)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reclaim_loop, table, kernel.invalidate)
        yield kernel
        nursery.cancel_scope.cancel()


def test_max_sleep_bounds() -> None:
    """The task sleeps at most half the shortest delay, never over 1 s or under MIN_SLEEP."""
    table = NodeTable(policy=ReclaimPolicy(file_delay=0.5, dir_grace=10.0))
    assert max_sleep(table) == 0.25
    table.policy = ReclaimPolicy(file_delay=30.0, dir_grace=60.0)
    assert max_sleep(table) == 1.0
    table.policy = ReclaimPolicy(file_delay=0.001, dir_grace=10.0)
    assert max_sleep(table) == MIN_SLEEP
    table.policy = ReclaimPolicy(file_delay=5.0, dir_grace=0.2)
    assert max_sleep(table) == pytest.approx(0.1)


@pytest.mark.parametrize("phase", [0.0, 0.01, 0.13, 0.249, 0.37, 1.9])
async def test_idle_file_is_invalidated_in_time(autojump_clock: MockClock, phase: float) -> None:
    """An idle file is invalidated no earlier than its delay and at most max_sleep later."""
    table = make_table()
    bound = FILE_DELAY + max_sleep(table)
    async with reclaiming(table) as kernel:
        await trio.sleep(phase)  # the task is somewhere in its sleep
        created = trio.current_time()
        node = table.mknod(ROOT_INO, b"lock", 0o644, 0, 0)
        await trio.sleep(FILE_DELAY * 0.99)
        assert kernel.calls == []
        await trio.sleep(bound - FILE_DELAY * 0.99)
        assert len(kernel.calls) == 1
        when, parent, name = kernel.calls[0]
        assert (parent, name) == (ROOT_INO, b"lock")
        assert created + FILE_DELAY <= when <= created + bound
        assert node.ino not in table.nodes  # the kernel forgot it, so it was dropped


async def test_nested_entry_is_invalidated_by_parent_and_name(autojump_clock: MockClock) -> None:
    """The callback gets the entry's directory inode and name; the directory follows later."""
    table = make_table()
    bound = max_sleep(table)
    async with reclaiming(table) as kernel:
        d = table.mkdir(ROOT_INO, b"store", 0o755, 0, 0)
        f = table.mknod(d.ino, b"lock", 0o644, 0, 0)
        await trio.sleep(FILE_DELAY + bound)
        assert [(p, n) for _, p, n in kernel.calls] == [(d.ino, b"lock")]
        emptied = kernel.calls[0][0]
        assert f.ino not in table.nodes
        await trio.sleep(emptied + DIR_GRACE + bound - trio.current_time())
        assert [(p, n) for _, p, n in kernel.calls] == [(d.ino, b"lock"), (ROOT_INO, b"store")]
        assert emptied + DIR_GRACE <= kernel.calls[1][0] <= emptied + DIR_GRACE + bound
        assert list(table.nodes) == [ROOT_INO]


async def test_empty_directory_waits_for_its_grace(autojump_clock: MockClock) -> None:
    """An empty directory is invalidated after dir_grace (not the file delay)."""
    table = make_table()
    bound = DIR_GRACE + max_sleep(table)
    async with reclaiming(table) as kernel:
        created = trio.current_time()
        table.mkdir(ROOT_INO, b"store", 0o755, 0, 0)
        await trio.sleep(DIR_GRACE * 0.99)
        assert kernel.calls == []
        await trio.sleep(bound - DIR_GRACE * 0.99)
        assert [(p, n) for _, p, n in kernel.calls] == [(ROOT_INO, b"store")]
        assert created + DIR_GRACE <= kernel.calls[0][0] <= created + bound


async def test_busy_nodes_are_never_invalidated(autojump_clock: MockClock) -> None:
    """Open files, files with data and non-empty directories are left alone."""
    table = make_table()
    async with reclaiming(table) as kernel:
        held = table.create(ROOT_INO, b"held", 0o644, 0, 0)
        journal = table.create(ROOT_INO, b"journal", 0o644, 0, 0)
        table.write(journal.ino, 0, b"entry\n")
        table.release(journal.ino)
        d = table.mkdir(ROOT_INO, b"store", 0o755, 0, 0)
        kept = table.create(d.ino, b"kept", 0o644, 0, 0)
        table.write(kept.ino, 0, b"x")
        table.release(kept.ino)
        await trio.sleep(100 * DIR_GRACE)
        assert kernel.calls == []
        assert {held.ino, journal.ino, d.ino, kept.ino} <= set(table.nodes)


async def test_released_file_is_invalidated_after_release(autojump_clock: MockClock) -> None:
    """The delay of a file that was held counts from its release."""
    table = make_table()
    bound = FILE_DELAY + max_sleep(table)
    async with reclaiming(table) as kernel:
        node = table.create(ROOT_INO, b"lock", 0o644, 0, 0)
        await trio.sleep(7.3)
        assert kernel.calls == []
        released = trio.current_time()
        table.release(node.ino)
        await trio.sleep(bound)
        assert len(kernel.calls) == 1
        assert released + FILE_DELAY <= kernel.calls[0][0] <= released + bound


async def test_truncated_journal_is_invalidated(autojump_clock: MockClock) -> None:
    """A data file emptied by truncate becomes idle and is invalidated after its delay."""
    table = make_table()
    bound = FILE_DELAY + max_sleep(table)
    async with reclaiming(table) as kernel:
        node = table.create(ROOT_INO, b"journal", 0o644, 0, 0)
        table.write(node.ino, 0, b"entry\n")
        table.release(node.ino)
        await trio.sleep(10)
        emptied = trio.current_time()
        table.setattr(node.ino, size=0)
        await trio.sleep(bound)
        assert len(kernel.calls) == 1
        assert emptied + FILE_DELAY <= kernel.calls[0][0] <= emptied + bound


async def test_uses_postpone_invalidation(autojump_clock: MockClock) -> None:
    """A file used more often than its delay is never invalidated; after its last use it is."""
    table = make_table()
    bound = FILE_DELAY + max_sleep(table)
    async with reclaiming(table) as kernel:
        table.mknod(ROOT_INO, b"lock", 0o644, 0, 0)
        for _ in range(20):
            await trio.sleep(FILE_DELAY * 0.9)
            table.lookup(ROOT_INO, b"lock")
        last_use = trio.current_time()
        assert kernel.calls == []
        await trio.sleep(bound)
        assert len(kernel.calls) == 1
        assert last_use + FILE_DELAY <= kernel.calls[0][0] <= last_use + bound


async def test_forgotten_node_is_dropped_without_invalidation(autojump_clock: MockClock) -> None:
    """A node the kernel already forgot is dropped by the task after its delay, silently."""
    table = make_table()
    async with reclaiming(table) as kernel:
        node = table.mknod(ROOT_INO, b"lock", 0o644, 0, 0)
        table.forget(node.ino, 1)
        await trio.sleep(FILE_DELAY * 0.99)
        assert node.ino in table.nodes
        await trio.sleep(FILE_DELAY * 0.01 + max_sleep(table))
        assert node.ino not in table.nodes and kernel.calls == []


async def test_pinned_entry_is_invalidated_once(autojump_clock: MockClock) -> None:
    """If the kernel keeps an invalidated entry, the task does not keep invalidating it."""
    table = make_table()
    async with reclaiming(table) as kernel:
        node = table.mknod(ROOT_INO, b"cwd", 0o644, 0, 0)
        kernel.pinned.add(node.ino)
        await trio.sleep(50)
        assert len(kernel.calls) == 1
        assert table.child(ROOT_INO, b"cwd") is node  # still referenced: the name stays


@pytest.mark.parametrize(
    ("file_delay", "dir_grace"), [(30.0, 60.0), (FILE_DELAY, DIR_GRACE), (0.001, 0.002)]
)
async def test_task_does_not_spin(
    autojump_clock: MockClock, file_delay: float, dir_grace: float
) -> None:
    """Idle or not, the task wakes at most once per MIN_SLEEP and at least once per max_sleep."""
    table = make_table(file_delay, dir_grace)
    async with reclaiming(table):
        for i in range(50):
            table.mknod(ROOT_INO, b"f%d" % i, 0o644, 0, 0)
            await trio.sleep(0.2)
    elapsed = 50 * 0.2
    assert table.polls <= elapsed / MIN_SLEEP + 2
    assert table.polls >= elapsed / max_sleep(table) - 1


async def test_entries_due_together_come_in_one_list(autojump_clock: MockClock) -> None:
    """Files that became idle at the same time are handed over in one list (one queue item
    for the invalidation thread), not one call each."""
    table = make_table()
    async with reclaiming(table) as kernel:
        for i in range(50):
            node = table.create(ROOT_INO, b"f%d" % i, 0o644, 0, 0)
            table.release(node.ino)
        await trio.sleep(FILE_DELAY + max_sleep(table))
        assert len(kernel.calls) == 50
        assert kernel.batches == 1


async def test_steady_stream_is_handed_over_in_few_lists(autojump_clock: MockClock) -> None:
    """Files falling idle one after another (every millisecond, as in a busy sweep) are handed
    over in lists covering about half of max_sleep each, not one list per MIN_SLEEP: every
    list costs wake-ups of the invalidation thread and a burst of FORGETs. Each is still
    invalidated no earlier than its delay and at most max_sleep later."""
    table = make_table()
    longest = max_sleep(table)
    released: dict[bytes, float] = {}
    async with reclaiming(table) as kernel:
        for i in range(2000):
            name = b"f%d" % i
            table.release(table.create(ROOT_INO, name, 0o644, 0, 0).ino)
            released[name] = trio.current_time()
            await trio.sleep(0.001)
        await trio.sleep(FILE_DELAY + longest)
    assert len(kernel.calls) == 2000
    for when, _, name in kernel.calls:
        assert released[name] + FILE_DELAY <= when <= released[name] + FILE_DELAY + longest
    assert kernel.batches <= 2.0 / (longest / 2) + 2  # 2 s of releases, one list per window
