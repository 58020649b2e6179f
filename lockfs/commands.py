"""What a running mount answers on its control socket; none of the commands changes anything.

``status``
    the mount's :class:`~lockfs.status.MountStatus`, as JSON;
``nodes INO...``
    path, link state and open time of those inode numbers (``lockfs locks`` joins them with the
    kernel's /proc/locks); numbers the table does not know are left out.

An empty command (a client that connected and hung up, such as the stale-socket check) gets
``None``; anything else is an error for that connection only.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from typing import Any

from . import logs
from .fuse_ops import LockOperations
from .invalidator import EntryInvalidator
from .nodes import NodeTable
from .options import MountOptions
from .status import MountStatus


class ControlCommands:
    """Read-only views of one mount's node table, request counters and options."""

    def __init__(
        self,
        mountpoint: str,
        table: NodeTable,
        ops: LockOperations,
        options: MountOptions,
        invalidator: EntryInvalidator | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.table = table
        self.ops = ops
        self.options = options
        #: The invalidation thread's keeper: its faults and stuck invalidations.
        self.invalidator = invalidator
        self._started = time.monotonic()

    def __call__(self, command: str) -> Any:
        """Answer one command line (the control socket's handler)."""
        verb, _, rest = command.partition(" ")
        if not command:
            return None
        if verb == "status" and not rest:
            return self.status().to_json()
        if verb == "nodes":
            return self.node_info(int(word) for word in rest.split())
        raise ValueError(f"unknown command {command!r}")

    def status(self) -> MountStatus:
        """The mount's counters right now (O(1): the table keeps its counts as it changes)."""
        table = self.table
        dirs = table.dir_count
        with open("/proc/self/statm") as statm:
            rss_pages = int(statm.read().split()[1])
        invalidator = self.invalidator
        now = time.monotonic()
        stuck = invalidator.stuck() if invalidator is not None else []
        return MountStatus(
            mountpoint=self.mountpoint,
            pid=os.getpid(),
            uptime_s=round(time.monotonic() - self._started, 3),
            nodes=len(table.nodes),
            files=len(table.nodes) - dirs,
            dirs=dirs,
            open=table.open_count,
            referenced=table.referenced_count,
            reclaim_backlog=table.idle_count,
            created=table.stats.created,
            reclaimed=table.stats.reclaimed,
            invalidations=table.stats.invalidations,
            requests=dict(self.ops.requests),
            faults=self.ops.faults,
            rss_bytes=rss_pages * resource.getpagesize(),
            options=self.options,
            log=logs.destination(),
            thread_faults=invalidator.faults if invalidator is not None else 0,
            invalidations_stuck=len(stuck),
            invalidations_stuck_total=invalidator.stuck_total if invalidator is not None else 0,
            stuck_directories={s.directory: round(now - s.since, 1) for s in stuck},
        )

    def node_info(self, inos: Iterable[int]) -> dict[str, dict[str, Any]]:
        """Path, link state, open count and open time of the given inode numbers."""
        now = self.table.clock()
        info = {}
        for ino in inos:
            node = self.table.nodes.get(ino)
            if node is None:
                continue
            info[str(ino)] = {
                "path": node.path().decode("utf-8", "backslashreplace"),
                "linked": node.parent is not None,
                "opens": node.opens,
                "open_for": round(now - node.open_since, 3) if node.opens else None,
            }
        return info
