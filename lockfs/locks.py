"""Who holds what: the kernel's /proc/locks (read by lockfs.linux) joined with the daemon's
inode → path map.

The kernel keeps every flock, POSIX and OFD lock and lists them in /proc/locks with pid, mode
and ``major:minor:inode``; lockfs knows which path (or unlinked node) each inode number of its
mount is. Blocked requests appear as ``->`` lines right after the lock that blocks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .humanize import format_duration
from .linux import KernelLock, command_of


@dataclass(slots=True)
class LockRow:
    """One held or awaited lock on the mount, as ``lockfs locks`` shows it."""

    path: str
    unlinked: bool
    ino: int
    kind: str
    mode: str
    state: str
    pid: int | None
    command: str
    waiters: int
    held_for: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lock_rows(
    locks: list[KernelLock],
    nodes: Mapping[int, Mapping[str, Any]],
    ofd_pids: Mapping[int, list[int]] | None = None,
) -> list[LockRow]:
    """Join kernel locks with the daemon's node info (``{ino: {path, linked, open_for}}``),
    sorted for people to read.

    A held lock's ``waiters`` counts the ``->`` lines that follow it; each of those appears as a
    row of its own in state ``waiting``. ``held_for`` is the time since the file was first
    opened (the kernel does not record when a lock was taken; PBS locks right after opening).
    An unlinked file's path is the one it had when it was unlinked.
    """
    rows: list[LockRow] = []
    holder: LockRow | None = None
    for lock in locks:
        node = nodes.get(lock.ino, {})
        pid = lock.pid
        if pid is None and ofd_pids and ofd_pids.get(lock.ino):
            pid = ofd_pids[lock.ino][0]
        row = LockRow(
            path=node.get("path", f"<inode {lock.ino}>"),
            unlinked=not node.get("linked", True),
            ino=lock.ino,
            kind=lock.kind,
            mode="exclusive" if lock.exclusive else "shared",
            state="waiting" if lock.waiting else "held",
            pid=pid,
            command=command_of(pid),
            waiters=0,
            held_for=None if lock.waiting else node.get("open_for"),
        )
        if lock.waiting:
            if holder is not None:
                holder.waiters += 1
        else:
            holder = row
        rows.append(row)

    def order(row: LockRow) -> tuple[bool, str, bool, int, str, bool, int]:
        """By path, inodes the daemon does not know last; on one file by kind, and of a kind
        its holders before its waiters, each by pid. A file unlinked while held comes after
        the live file of the same name; rows of one path on different inodes never mix."""
        pid = -1 if row.pid is None else row.pid
        waiting = row.state == "waiting"
        return (row.ino not in nodes, row.path, row.unlinked, row.ino, row.kind, waiting, pid)

    return sorted(rows, key=order)


def format_table(rows: list[LockRow]) -> str:
    header = ("PATH", "KIND", "MODE", "STATE", "PID", "COMMAND", "WAITERS", "HELD")
    lines = [header]
    for row in rows:
        path = row.path + (" (unlinked)" if row.unlinked else "")
        held = "" if row.held_for is None else format_duration(row.held_for)
        pid = "?" if row.pid is None else str(row.pid)
        lines.append(
            (path, row.kind, row.mode, row.state, pid, row.command, str(row.waiters), held)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
