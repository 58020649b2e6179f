"""``lockfs heal``: the self-healing watcher that ``lockfs-heal.service`` runs.

When the daemon of a systemd-mounted lockfs dies or hangs, the watcher fails it closed, stops
the units that require the mount, waits until no process uses the dead mount any more, and has
systemd remount it and start those units again, at most 3 times in 10 minutes
(docs/design.md, "Self-healing under systemd"; the decisions are lockfs.health's).

The invariant it keeps: a new mount appears only through a plain umount of the dead one (which
the kernel refuses while anything on it is in use) and only after every process that used it
is gone, so no lock held on the dead mount can ever be taken a second time on the new one. The
watcher never stats the mount from its own thread: it reads the mount table, the daemon's
process (through a pidfd) and the control socket, and lets a probe thread do the one
``statvfs`` that may wait for a stuck daemon.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shlex
import signal
import threading
import time
from collections.abc import Callable, Sequence

from . import logs, mount_users
from .admin import EXIT_FAILURE, fail, subcommand_parser
from .control import (
    ControlError,
    DaemonUnreachable,
    NoProperAnswer,
    escape_path,
    listener_pid,
    query_status,
)
from .heal_state import HealState, Pending, StateFile
from .health import (
    POLL_INTERVAL,
    QUERY_TIMEOUT,
    RECOVERIES,
    WINDOW,
    FailureBudget,
    Health,
    HealthJudge,
    Sample,
)
from .mounts import FSTYPE, MountEntry, entries_at
from .options import MountOptions
from .systemd_units import Systemd
from .watchdog import abort_connection, fusectl_name

log = logging.getLogger(__name__)

#: errnos of a mount whose daemon is gone (the connection was aborted or ended).
DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})
#: How long the watcher waits for a killed daemon to exit, and for the probe to return.
EXIT_TIMEOUT = 10.0
#: How often the users of a dead mount are looked for again while some remain.
USERS_POLL = 0.5
#: systemd's runtime directory: it exists when systemd is the service manager (sd_booted(3)).
SYSTEMD_RUN_DIR = "/run/systemd/system"


def unit_for(mountpoint: str) -> str:
    """The systemd mount unit of ``mountpoint`` (``systemd-escape --path --suffix=mount``)."""
    return escape_path(mountpoint) + ".mount"


def recovery_command(unit: str) -> str:
    return f"systemctl restart {shlex.quote(unit)}"


def canonical(path: str) -> str:
    """``path`` made absolute with its parent's symlinks resolved, without touching ``path``
    itself (stat'ing a stuck mount would wait for it)."""
    path = os.path.normpath(os.path.abspath(path))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


class DaemonProcess:
    """A daemon's process, held through a pidfd: its pid can never name another process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether it has exited (waiting up to ``timeout`` seconds for it)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))

    def stopped(self) -> bool:
        """Whether it is stopped (SIGSTOP, or a debugger's stop)."""
        try:
            with open(f"/proc/{self.pid}/stat") as proc_stat:
                state = proc_stat.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state in ("T", "t") and not self.exited()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)

    def close(self) -> None:
        os.close(self.fd)


class MountProbe:
    """``statvfs`` of a mountpoint in a thread of its own, one at a time: a stuck daemon blocks
    that thread, never the watcher. A result is None (still waiting), 0 (answered) or the
    errno the mount answered."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._result: int | None = None
        self._done = threading.Event()

    def _run(self) -> None:
        try:
            os.statvfs(self.path)
            self._result = 0
        except OSError as exc:
            self._result = exc.errno or errno.EIO
        self._done.set()

    def check(self, timeout: float) -> int | None:
        """Start a probe unless one is under way; its result within ``timeout`` seconds."""
        if self._thread is None or self._done.is_set():
            self._done.clear()
            self._result = None
            self._thread = threading.Thread(target=self._run, name="lockfs-probe", daemon=True)
            self._thread.start()
        self._done.wait(timeout)
        return self._result if self._done.is_set() else None

    def wait(self, timeout: float) -> bool:
        """Wait for a probe under way to return; whether none is left waiting."""
        return self._thread is None or self._done.wait(timeout)


def _identity(entry: MountEntry) -> tuple[int, int]:
    return entry.mount_id, entry.dev


class Watcher:
    """Watches the lockfs at ``mountpoint`` (absolute, its parent without symlinks), mounted by
    the systemd unit ``systemd.unit``, and heals it (see the module docstring)."""

    def __init__(
        self,
        mountpoint: str,
        systemd: Systemd,
        state: StateFile,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mountpoint = mountpoint
        self.systemd = systemd
        self.state = state
        self.clock = clock
        self.judge = HealthJudge(MountOptions().hang_timeout)
        #: The topmost lockfs at the mountpoint, as last seen.
        self.entry: MountEntry | None = None
        self.daemon: DaemonProcess | None = None
        self.probe = MountProbe(mountpoint)
        #: Whether the current failure was handled (each failure is handled once; a mount
        #: that answers or goes away ends it). Mount IDs are reused, so they cannot tell.
        self.handled = False
        self._last_health: Health | None = None

    # --- Sampling ------------------------------------------------------------------------

    def _mount_entry(self) -> MountEntry | None:
        entries = entries_at(self.mountpoint, resolve_path=False)
        return entries[-1] if entries and entries[-1].fstype == FSTYPE else None

    def _forget_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None

    def _adopt(self, pid: int, still_there: Callable[[], int | None]) -> None:
        """Hold the daemon ``pid`` through a pidfd, once ``still_there()`` names the same pid
        again after the pidfd was opened (the daemon was alive throughout, so the pidfd is
        its own and not a process that took over a freed pid)."""
        if self.daemon is not None and self.daemon.pid == pid:
            return
        self._forget_daemon()
        try:
            daemon = DaemonProcess(pid)
        except OSError:
            return
        if still_there() == pid:
            self.daemon = daemon
        else:
            daemon.close()

    def _status_pid(self) -> int | None:
        try:
            return query_status(self.mountpoint, QUERY_TIMEOUT, resolve=False).pid
        except ControlError:
            return None

    def sample(self) -> Sample:
        """Look once at the mount and its daemon."""
        now = self.clock()
        entry = self._mount_entry()
        if entry is None or self.entry is None or _identity(entry) != _identity(self.entry):
            self._forget_daemon()
            self.probe = MountProbe(self.mountpoint)
        self.entry = entry
        if entry is None:
            return Sample(now, None)
        # The socket first: a mount ID (and device number) freed by an unmount is given to the
        # next mount at once, so only a daemon that answers tells a new mount from the old.
        probe_wait = 0.0
        try:
            status = query_status(self.mountpoint, QUERY_TIMEOUT, resolve=False)
        except DaemonUnreachable:  # nobody listens: dead, or serving without its socket
            status, probe_wait = None, QUERY_TIMEOUT
        except NoProperAnswer:  # it did not answer in time (a probe may have meanwhile)
            status = None
        except ControlError:  # it refused the command: it runs
            return Sample(now, entry.mount_id, answered=True)
        if status is not None:
            self._adopt(status.pid, self._status_pid)
            self.judge.hang_timeout = status.options.hang_timeout
            return Sample(now, entry.mount_id, answered=True)
        if self.daemon is not None and self.daemon.exited():
            return Sample(now, entry.mount_id, gone=True)
        probed = self.probe.check(probe_wait)
        return Sample(
            now,
            entry.mount_id,
            answered=probed == 0,
            gone=probed in DEAD_ERRNOS,
            stopped=self.daemon is not None and self.daemon.stopped(),
        )

    # --- The loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Watch and heal until stopped (SIGTERM)."""
        log.info("heal: watching %s (%s)", self.mountpoint, self.systemd.unit)
        while True:
            self.step()
            daemon = self.daemon
            if daemon is not None and not daemon.exited():
                daemon.exited(POLL_INTERVAL)  # wakes at once when the daemon exits
            else:
                time.sleep(POLL_INTERVAL)

    def observe(self) -> tuple[Health, Sample]:
        """One sample, and its verdict."""
        sample = self.sample()
        return self.judge.judge(sample), sample

    def act(self, health: Health, sample: Sample) -> None:
        """Heal a failure (once); end a pending recovery once a mount answers again."""
        previous, self._last_health = self._last_health, health
        if health in (Health.ALIVE, Health.UNMOUNTED):
            self.handled = False
        if health is Health.ALIVE and previous is not Health.ALIVE:
            self._finish_pending(sample)
        elif health in (Health.DEAD, Health.HUNG) and not self.handled:
            self.handled = True
            self.handle_failure(health, sample)

    def step(self) -> Health:
        health, sample = self.observe()
        self.act(health, sample)
        return health

    # --- Healing -------------------------------------------------------------------------

    def describe(self, health: Health, sample: Sample) -> str:
        who = f"the lockfs daemon of {self.mountpoint}"
        if self.daemon is not None:
            who += f" (pid {self.daemon.pid})"
        if health is Health.DEAD:
            return f"{who} is gone: its mount answers ENOTCONN"
        stopped = ", its process stopped" if sample.stopped else ""
        return (
            f"{who} has not answered for {self.judge.silent_for(sample.at):.1f} s "
            f"(hang_timeout={self.judge.hang_timeout:g}{stopped})"
        )

    def fail_closed(self, health: Health) -> str:
        """Kill the daemon and abort its FUSE connection; what was done, for the log."""
        assert self.entry is not None
        if self.daemon is None and health is Health.HUNG:
            pid = listener_pid(self.mountpoint)
            if pid is not None:
                self._adopt(pid, lambda: listener_pid(self.mountpoint))
        done = []
        if self.daemon is not None and not self.daemon.exited():
            self.daemon.kill()
            done.append(f"killed it (SIGKILL to pid {self.daemon.pid})")
        if abort_connection(fusectl_name(self.entry.dev)):
            done.append("aborted its FUSE connection")
        elif done:  # the kernel aborts it once the killed process has let go of /dev/fuse
            done.append("its FUSE connection ends with the process (fusectl is not available)")
        if self.daemon is not None and not self.daemon.exited(EXIT_TIMEOUT):
            log.error("heal: the daemon (pid %d) has not exited after SIGKILL", self.daemon.pid)
        self.probe.wait(EXIT_TIMEOUT)
        return "; ".join(done) or "its process has exited"

    def handle_failure(self, health: Health, sample: Sample) -> None:
        """Fail the mount closed and, within the rate limit, have systemd remount it."""
        assert self.entry is not None
        what = self.describe(health, sample)
        done = self.fail_closed(health)
        state = self.state.load()
        budget = FailureBudget(state.failures)
        count = len(budget.recent(sample.at)) + 1
        if not budget.allows(sample.at):
            log.critical(
                "heal: %s (%s). %s failed %d times in %d minutes (at most %d are recovered "
                "automatically); staying failed closed; recover with: %s",
                what,
                done,
                self.mountpoint,
                count,
                WINDOW // 60,
                RECOVERIES,
                recovery_command(self.systemd.unit),
            )
            return
        budget.record(sample.at)
        earlier = state.pending
        running = self.systemd.running(self.systemd.dependents())
        units = sorted({*running, *(earlier.units if earlier else [])})
        since = earlier.since if earlier else sample.at
        self.state.save(HealState(budget.failures, Pending(since, units)))
        log.error(
            "heal: %s (%s). Remounting it (failure %d of at most %d in %d minutes recovered "
            "automatically): stopping %s",
            what,
            done,
            count,
            RECOVERIES,
            WINDOW // 60,
            " ".join(running) or "no unit (none that requires the mount runs)",
        )
        self.systemd.stop(running)
        self.wait_unused(self.entry)
        log.warning(
            "heal: remounting %s: %s, then starting %s",
            self.mountpoint,
            recovery_command(self.systemd.unit),
            " ".join(units) or "nothing",
        )
        try:
            self.systemd.remount_then_start(units)
        except OSError as exc:
            log.critical(
                "heal: %s; staying failed closed; recover with: %s",
                exc,
                recovery_command(self.systemd.unit),
            )

    def wait_unused(self, entry: MountEntry) -> None:
        """Return once no process uses the dead mount; name the ones that do, once."""
        since = self.clock()
        users = mount_users.users_of(entry.dev)
        if not users:
            return
        log.error(
            "heal: not remounting %s while these processes still use the dead mount (they may "
            "hold locks there); waiting for them to exit: %s",
            self.mountpoint,
            ", ".join(str(use) for use in users),
        )
        while mount_users.users_of(entry.dev):
            time.sleep(USERS_POLL)
        log.warning(
            "heal: the processes that used the dead mount of %s are gone after %.1f s",
            self.mountpoint,
            self.clock() - since,
        )

    def _finish_pending(self, sample: Sample) -> None:
        """On a mount that answers: end a recovery of an earlier mount, if one is pending."""
        state = self.state.load()
        pending = state.pending
        if pending is None:
            return
        pid = f" (daemon pid {self.daemon.pid})" if self.daemon is not None else ""
        log.warning(
            "heal: %s serves again%s, %.1f s after the failure was noticed",
            self.mountpoint,
            pid,
            sample.at - pending.since,
        )
        try:
            self.systemd.start(
                [u for u in pending.units if u not in self.systemd.running(pending.units)]
            )
        except OSError as exc:
            log.error("heal: %s", exc)
        self.state.save(HealState(state.failures, None))


def heal_main(argv: Sequence[str]) -> int:
    """Remount MOUNTPOINT through systemd when its lockfs daemon dies or hangs.

    Run by lockfs-heal.service, which the mount unit starts. Every second it checks the daemon
    (control socket, process, mount). A daemon that is gone, or has not answered for its
    hang_timeout, is killed and its FUSE connection aborted; then the units that require the
    mount are stopped, and once no process uses the dead mount any more, systemd restarts the
    mount unit and starts those units again. At most 3 failures in 10 minutes are recovered;
    after that the mount stays failed closed and the log says the command that recovers it.
    Needs root and systemd as the service manager.
    """
    parser = subcommand_parser("heal", heal_main)
    parser.add_argument("mountpoint", help="the mount unit's Where= (an absolute path)")
    parser.add_argument(
        "--unit",
        help="the mount unit (default: the mountpoint's systemd name, as from "
        "systemd-escape --path --suffix=mount)",
    )
    args = parser.parse_args(argv)
    mountpoint = canonical(args.mountpoint)
    unit = args.unit or unit_for(mountpoint)
    if os.geteuid() != 0:
        return fail("lockfs heal needs root (it kills daemons and restarts units)")
    if not os.path.isdir(SYSTEMD_RUN_DIR):
        return fail(
            "lockfs heal needs systemd as the service manager: without it a dead lockfs mount "
            f"stays failed closed; recover it by hand: stop the processes using it (fuser -vm "
            f"{mountpoint}), then umount {mountpoint} and mount it again"
        )
    systemd = Systemd(unit)
    where = systemd.show("Where")
    if where != mountpoint:
        return fail(f"{unit} does not mount {mountpoint} (its Where= is {where or 'not set'})")
    logs.detached(False, mountpoint)
    try:
        Watcher(mountpoint, systemd, StateFile(mountpoint)).run()
    except Exception:
        log.exception("heal: the watcher of %s failed", mountpoint)
        return EXIT_FAILURE
    return 0
