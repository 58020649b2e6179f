"""The filesystems under test (tmpfs, lockfs, reference servers) and their daemons' counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..control import query
from ..harness import wait_until
from .machine import cpu_seconds, remove_contents
from .progress import progress

#: Seconds between status queries while waiting for reclaim to finish, at most. A query costs
#: the daemon about 1 ms of CPU (an idle daemon wakes up for it), which the bench counts as
#: reclaim cost: at 0.25 s that was 4 ms per second of waiting, twice the idle daemon's own.
SETTLE_POLL = 1.0


@dataclass
class Target:
    """One filesystem under test and the directory the bench works in."""

    name: str
    mountpoint: str
    root: str
    #: Node-table size when idle (lockfs): reclaim is complete once it is back to this.
    idle_nodes: int = 1
    reclaim_delay: float = 0.0
    dir_grace: float = 0.0
    daemon_pid: int | None = None
    #: False for a reference server (bench.reference): it keeps its entries, nothing to wait for.
    reclaims: bool = True
    #: Reads the status where there is no control socket (the C reference server).
    read_status: Callable[[], dict[str, Any]] | None = None

    @property
    def is_lockfs(self) -> bool:
        return self.daemon_pid is not None

    def status(self) -> dict[str, Any]:
        """The daemon's status (lockfs and the reference servers)."""
        if self.read_status is not None:
            return self.read_status()
        return query(self.mountpoint, "status")

    def settle_timeout(self) -> float:
        """How long reclaim may take: file delay, then one grace period per directory level."""
        return self.reclaim_delay + 4 * self.dir_grace + 60

    def settle(self) -> dict[str, Any]:
        """Wait until lockfs has reclaimed everything the bench left (tmpfs: delete it)."""
        if not self.is_lockfs:
            remove_contents(self.root)
            return {}
        if not self.reclaims:
            return {"settled": None, "reclaim_s": None, "status": self.status()}
        polled = wait_until(
            lambda: (s := self.status())["nodes"] <= self.idle_nodes and s,
            self.settle_timeout(),
            max_delay=SETTLE_POLL,
        )
        if polled is None:
            status = self.status()
            progress(
                f"warning: lockfs still has {status['nodes']} nodes after "
                f"{self.settle_timeout():.0f}s (idle: {self.idle_nodes})"
            )
            return {"settled": False, "reclaim_s": None, "status": status}
        status, seconds = polled
        return {"settled": True, "reclaim_s": seconds, "status": status}


@dataclass
class Snapshot:
    """The daemon's request counters, CPU time and status at one moment."""

    requests: dict[str, int]
    cpu_s: float
    status: dict[str, Any]


def snapshot(target: Target, *, cpu_first: bool) -> Snapshot | None:
    """Counters and CPU of the lockfs daemon; the status query stays outside the CPU window.

    Before a run pass ``cpu_first=False`` (query, then read CPU), after it ``cpu_first=True``.
    """
    if not target.is_lockfs:
        return None
    assert target.daemon_pid is not None
    if cpu_first:
        cpu = cpu_seconds(target.daemon_pid)
        status = target.status()
    else:
        status = target.status()
        cpu = cpu_seconds(target.daemon_pid)
    return Snapshot(dict(status["requests"]), cpu, status)


def table_state(status: dict[str, Any]) -> dict[str, int]:
    """The node-table figures of a status reply."""
    keys = ("nodes", "files", "dirs", "open", "rss_bytes", "reclaimed", "invalidations")
    return {key: status[key] for key in keys}
