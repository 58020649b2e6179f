"""What the self-healing watcher asks of systemd about one mount unit, through systemctl:
the units that require it and which of them run, stopping and starting them, and restarting
the mount.

``run`` (the systemctl runner) is the one seam the tests replace; everything else is the
command line systemctl understands on Debian 12 (systemd 252) and 13 (systemd 257).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence

#: Unit states in which a unit that requires the mount counts as running.
RUNNING_STATES = frozenset({"active", "activating", "reloading"})


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run_command(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL)


def own_unit() -> str | None:
    """The systemd unit this process runs in (from its control group), if any."""
    try:
        with open("/proc/self/cgroup") as cgroup:
            for line in cgroup:
                name = line.rstrip("\n").rpartition("/")[2]
                if name.endswith((".service", ".scope")):
                    return name
    except OSError:
        pass
    return None


class Systemd:
    """What the watcher asks of systemd about the mount unit ``unit``, through systemctl."""

    def __init__(self, unit: str, run: Runner = _run_command) -> None:
        self.unit = unit
        self._run = run

    def _systemctl(self, *args: str) -> str:
        result = self._run(["systemctl", *args])
        if result.returncode != 0:
            raise OSError(
                f"systemctl {shlex.join(args)} failed (exit status {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def show(self, prop: str) -> str:
        return self._systemctl("show", "-P", prop, self.unit).strip()

    def dependents(self) -> list[str]:
        """The units that require the mount (RequiredBy=, BoundBy=), but this process's own."""
        own = own_unit()
        # shlex: Debian 13's systemctl quotes names that hold a backslash.
        names = shlex.split(self.show("RequiredBy")) + shlex.split(self.show("BoundBy"))
        return sorted({name for name in names if name != own})

    def running(self, units: Sequence[str]) -> list[str]:
        """Those of ``units`` that are active (or activating, reloading)."""
        if not units:
            return []
        states = self._run(["systemctl", "is-active", *units]).stdout.split()
        return [unit for unit, state in zip(units, states, strict=False) if state in RUNNING_STATES]

    def stop(self, units: Sequence[str]) -> None:
        if units:
            self._systemctl("stop", *units)

    def start(self, units: Sequence[str]) -> None:
        """Queue the start of ``units``, first forgetting their failures: while the mount
        was dead they may have failed and been restarted by their ``Restart=`` until their
        start limit was hit, which would refuse this start too."""
        if units:
            self._run(["systemctl", "reset-failed", *units])
            self._systemctl("start", "--no-block", *units)

    def remount_then_start(self, units: Sequence[str]) -> None:
        """Queue a restart of the mount unit, then the start of ``units`` (which wait for it).

        The restart stops this watcher too (it is bound to the mount): SIGTERM stays blocked
        until both jobs are queued, and the systemctl children inherit the blocked signal.
        """
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self._systemctl("restart", "--no-block", self.unit)
            self.start(units)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
