"""The self-healing watcher's decisions, as pure logic: is a daemon alive, dead or hung, and may
one more failure be recovered?

:class:`HealthJudge` turns the watcher's samples (lockfs.heal takes them from the mount table,
the daemon's process and its control socket) into a :class:`Health`; it reads no clock and
touches nothing, so the tests drive it with made-up times. Its rules, which keep a live daemon
from ever being taken for a failed one:

* **dead** only on proof: the daemon's own process has exited while its mount is still in the
  table, or the mount itself answered ENOTCONN;
* **hung** only after ``hang_timeout`` seconds without any answer, counted from the first
  sample that got none: while the process is stopped (SIGSTOP: its own watchdog thread cannot
  run) exactly that, otherwise :func:`running_grace` more, so that the daemon's watchdog fails
  it closed first and logs the stuck request; never with ``hang_timeout`` 0;
* time the watcher itself did not run (more than :data:`LATE_GAP` between two samples) is
  not counted against the daemon: the count starts again;
* a mount that leaves the table is no failure (it was unmounted), and a new mount starts
  afresh.

:class:`FailureBudget` is the rate limit: a failure is recovered only if fewer than
:data:`RECOVERIES` others happened within :data:`WINDOW` seconds before it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .watchdog import LOG_GRACE, check_interval

#: Seconds between two samples of the watcher.
POLL_INTERVAL = 1.0
#: How long one status query may take.
QUERY_TIMEOUT = 1.0
#: A gap between two samples longer than this means the watcher itself did not run.
LATE_GAP = 2 * POLL_INTERVAL + QUERY_TIMEOUT + 1.0
#: Failures recovered automatically within :data:`WINDOW` seconds; one more stays failed closed.
RECOVERIES = 3
WINDOW = 600.0


class Health(enum.Enum):
    """What the watcher concluded from one sample."""

    #: No lockfs at the mountpoint: nothing to watch (not mounted yet, or unmounted).
    UNMOUNTED = "unmounted"
    ALIVE = "alive"
    #: No answer, not for long enough to call it hung.
    SILENT = "silent"
    DEAD = "dead"
    HUNG = "hung"


@dataclass(frozen=True)
class Sample:
    """What the watcher saw at monotonic time ``at``."""

    at: float
    #: The mount ID of the topmost lockfs at the mountpoint; None: no lockfs there.
    mount_id: int | None
    #: The daemon answered: its control socket, or its mount (the probe).
    answered: bool = False
    #: Proof the daemon is gone: its process exited, or its mount answered ENOTCONN.
    gone: bool = False
    #: The daemon's process is stopped (SIGSTOP).
    stopped: bool = False


def running_grace(hang_timeout: float) -> float:
    """How much longer than ``hang_timeout`` a daemon that still runs may stay silent: the
    daemon's watchdog fires within two sampling intervals after ``hang_timeout`` and logs its
    line within LOG_GRACE, before it aborts; one more second for it to exit."""
    return 2 * check_interval(hang_timeout) + LOG_GRACE + 1.0


class HealthJudge:
    """Judges the samples of one watcher, in time order (see the module docstring)."""

    def __init__(self, hang_timeout: float) -> None:
        #: The daemon's ``hang_timeout`` (the watcher updates it from the daemon's status).
        self.hang_timeout = hang_timeout
        self._mount_id: int | None = None
        self._last_at: float | None = None
        #: When the current silence began (the first sample without an answer), or None.
        self._silent_since: float | None = None

    def silent_for(self, now: float) -> float:
        """Seconds without an answer as of ``now`` (0 while the daemon answers)."""
        return 0.0 if self._silent_since is None else now - self._silent_since

    def hang_limit(self, stopped: bool) -> float:
        """Seconds of silence after which a daemon counts as hung (inf: never)."""
        if not self.hang_timeout:
            return float("inf")
        return self.hang_timeout + (0.0 if stopped else running_grace(self.hang_timeout))

    def judge(self, sample: Sample) -> Health:
        late = self._last_at is not None and sample.at - self._last_at > LATE_GAP
        self._last_at = sample.at
        if sample.mount_id != self._mount_id:
            self._mount_id = sample.mount_id
            self._silent_since = None
        if sample.mount_id is None:
            return Health.UNMOUNTED
        if sample.gone:
            return Health.DEAD
        if sample.answered:
            self._silent_since = None
            return Health.ALIVE
        if self._silent_since is None or late:
            self._silent_since = sample.at
        if self.silent_for(sample.at) >= self.hang_limit(sample.stopped):
            return Health.HUNG
        return Health.SILENT


class FailureBudget:
    """The rate limit over the times of earlier failures (monotonic seconds): the watcher's
    recoveries, and the invalidation thread's restarts (lockfs.invalidator)."""

    def __init__(self, failures: Iterable[float], limit: int = RECOVERIES, window: float = WINDOW):
        self.failures = sorted(failures)
        self.limit = limit
        self.window = window

    def recent(self, now: float) -> list[float]:
        """The failures within the window before ``now``."""
        return [at for at in self.failures if now - self.window < at <= now]

    def allows(self, now: float) -> bool:
        """Whether a failure at ``now`` may be recovered."""
        return len(self.recent(now)) < self.limit

    def record(self, now: float) -> None:
        """Count a failure at ``now``; failures that left the window are forgotten."""
        self.failures = [*self.recent(now), now]
