"""Real lockfs mounts for the tests: foreground daemons (:class:`Mount`, made by :class:`Mounts`)
and daemonized ones (:class:`Daemons`).

Stopping always cleans up everything, whatever went wrong, and notes what went wrong; the
teardown check (support.daemon_check) then judges the notes against what the test meant to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import pytest

from lockfs import control, harness
from lockfs.control import ControlError, query_status, socket_path
from lockfs.logs import log_path
from lockfs.mirror_dir import mirror_path
from lockfs.mounts import entries_at, is_lockfs_mounted
from lockfs.options import MountOptions
from lockfs.status import MountStatus

from .daemon_check import Expectations, describe_exit, log_problems, report
from .expect import wait_for
from .processes import DAEMON_PYTHON, Processes, daemon_env, lockfs_command, run_lockfs

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2

#: How long a stopping daemon may take to exit, and a plain umount to succeed.
STOP_TIMEOUT = 10.0
UMOUNT_TIMEOUT = 3.0


def require_fuse() -> None:
    """Fail loudly (never skip) when this machine cannot run the FUSE tests."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the FUSE tests must run as root (they mount filesystems)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is missing (apt-get install fuse3: run mount/setup --dev)")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def remove_mirror(path: str | os.PathLike[str], data_dir: str | None = None) -> None:
    """Remove the data a mount at ``path`` kept across restarts (lockfs.persist) in
    ``data_dir`` (default: the option's default): tests mount at temporary paths, and their
    data must not outlive them."""
    data_dir = data_dir or MountOptions().data_dir
    assert data_dir is not None
    shutil.rmtree(mirror_path(data_dir, os.path.realpath(path)), ignore_errors=True)


def umount_lazily(path: str) -> None:
    """umount2(2) with MNT_DETACH: what lockfs itself never does (a lazily detached mount
    lets a second lock file of the same name be created), and teardown's last resort."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount -l {path}: {os.strerror(code)}")


def remove_stale_sockets(paths: Iterable[str]) -> None:
    """Remove the control sockets among ``paths`` that a killed daemon left, the way a new
    daemon does (under the socket directory's lock, so a socket being published is never
    taken for stale); a live daemon's socket is never removed."""
    # No socket directory: no sockets.
    with contextlib.suppress(FileNotFoundError), control.run_dir_locked(control.RUN_DIR):
        control.remove_stale(paths)


def unmount(path: str, notes: list[str]) -> bool:
    """Unmount the topmost mount at ``path``: plainly (lockfs.harness.unmount, retried while
    busy), and lazily only as a last resort, which is noted as a problem. False if it could not
    be unmounted."""
    try:
        harness.unmount(path, UMOUNT_TIMEOUT)
        return True
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            notes.append(str(exc))
            return False
    umount_lazily(path)
    notes.append(f"{path} was still busy: it needed umount -l (a lazy unmount)")
    return True


class Mount(Processes):
    """A running ``lockfs -f`` daemon and the processes a test started on its mount."""

    def __init__(
        self,
        path: Path,
        options: str,
        log: Path,
        env: dict[str, str],
        python: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(os.path.realpath(path))
        self.log = log
        #: Problems seen while stopping (the teardown check reports them), and those it
        #: excuses in a test that kills or breaks its daemon on purpose (``kills_daemon``).
        self.notes: list[str] = []
        self.unresponsive: list[str] = []
        #: ``faults`` in the daemon's status just before it was stopped (None: not read).
        self.faults_at_stop: int | None = None
        #: Our mount, told apart from any mounted later at the same place (once it serves).
        self.mount_id: int | None = None
        self._stopped = False
        #: The daemon (lockfs.harness, shared with lockfs-bench): its process is ``proc``.
        command = lockfs_command(self.path, "-f", "-o", options, python=python or DAEMON_PYTHON)
        self.server = harness.ServerProcess(command, self.path, log, env=env)
        self.proc = self.server.proc
        try:
            self.server.wait_serving(15, lambda: True)
        except (harness.ServerExited, TimeoutError) as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log_text()}") from None
        except BaseException:
            self.stop()
            raise
        self.mount_id = entries_at(self.path, resolve_path=False)[-1].mount_id

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> MountStatus:
        return query_status(str(self.path))

    def wait_reclaimed(self, timeout: float = 10.0, *, nodes: int = 1) -> MountStatus:
        """Wait until only ``nodes`` nodes (by default the root) are left in the daemon."""
        return wait_for(
            lambda: s if (s := self.status()).nodes <= nodes else None,
            timeout,
            f"the node table to shrink to {nodes}",
        )

    def stop(self) -> None:
        """Kill the test's processes, read the daemon's fault count, stop it (SIGTERM), and
        make sure its mount is gone. Never raises; what went wrong is noted. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.kill_children()
            if self.proc.poll() is None:
                self._read_faults()
                self._terminate()
            self._unmount_if_left()
        except Exception as exc:  # noted: teardown must finish
            self.notes.append(f"stopping failed: {type(exc).__name__}: {exc}")
            self.proc.kill()
            self.proc.wait()
            with contextlib.suppress(OSError):
                if is_lockfs_mounted(self.path, resolve_path=False):
                    umount_lazily(str(self.path))
        finally:
            # A daemon that was killed leaves its control socket behind.
            remove_stale_sockets([socket_path(str(self.path))])
            self.server.close_log()

    def _read_faults(self) -> None:
        try:
            self.faults_at_stop = query_status(str(self.path), timeout=5).faults
        except ControlError as exc:
            if self.proc.poll() is None:
                self.unresponsive.append(f"its status could not be read before stopping: {exc}")

    def _terminate(self) -> None:
        # The daemon unmounts on SIGTERM once nothing is open on the mount.
        if not self.server.terminate(STOP_TIMEOUT):
            self.unresponsive.append(f"it did not exit within {STOP_TIMEOUT:g}s of SIGTERM: killed")

    def _unmount_if_left(self) -> None:
        """A killed daemon leaves its (dead) mount: unmount it, unless a newer mount covers it
        (that one belongs to whoever made it)."""
        entries = entries_at(self.path, resolve_path=False)
        if self.mount_id is None:  # it never served: any lockfs here is its own
            if is_lockfs_mounted(self.path, resolve_path=False):
                unmount(str(self.path), self.notes)
            return
        if not any(entry.mount_id == self.mount_id for entry in entries):
            return
        if entries[-1].mount_id != self.mount_id:
            self.notes.append(f"its mount is left covered by a newer mount at {self.path}")
            return
        unmount(str(self.path), self.notes)

    def problems(self, expect: Expectations) -> list[str]:
        """The teardown check, after :meth:`stop`: one report, or none when the daemon ran
        clean (see support.daemon_check)."""
        found = list(self.notes)
        code = self.proc.returncode
        if code is None:
            found.append("it was never stopped")
        elif not expect.killed:
            found += self.unresponsive
            if code != 0:
                found.append(describe_exit(code))
        if self.faults_at_stop and not expect.faults:
            found.append(f"it counted {self.faults_at_stop} fault(s): internal errors")
        log = self.log_text()
        found += log_problems(log, expect)
        return [report(f"lockfs -f at {self.path}", found, log)] if found else []


class MakeMount(Protocol):
    """The ``make_mount`` fixture: ``make_mount(options, public=False, at=None, python=None,
    **env)``."""

    def __call__(
        self,
        options: str = ...,
        public: bool = ...,
        *,
        at: Path | None = ...,
        python: str | None = ...,
        **env_extra: str,
    ) -> Mount: ...


#: The options of ``make_mount()`` and ``mnt``: short reclaim delays.
DEFAULT_OPTIONS = "reclaim_delay=0.2,dir_grace=1"


class Mounts:
    """The foreground mounts of one test (the ``make_mount`` fixture)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Mount] = []
        self.public_dirs: list[Path] = []

    def make(
        self,
        options: str = DEFAULT_OPTIONS,
        public: bool = False,
        *,
        at: Path | None = None,
        python: str | None = None,
        **env_extra: str,
    ) -> Mount:
        """Mount a fresh lockfs with ``options`` and extra environment for the daemon.
        ``public``: where every user can reach it (pytest's tmp dirs are 0700); ``at``: at
        the mountpoint of an earlier mount of this test (a restart); ``python``: the daemon's
        interpreter (default DAEMON_PYTHON)."""
        if at is not None:
            path = at
        elif public:
            path = Path(tempfile.mkdtemp(prefix="lockfs-test-", dir="/tmp"))
            path.chmod(0o755)
            self.public_dirs.append(path)
        else:
            path = Path(tempfile.mkdtemp(prefix="mnt-", dir=self.tmp_path))
        log = self.tmp_path / f"lockfs-{len(self.mounts)}.log"
        mount = Mount(path, options, log, daemon_env(**env_extra), python)
        self.mounts.append(mount)
        return mount

    def stop_all(self, expect: Expectations) -> list[str]:
        """Stop every mount (newest first), remove the public directories; the reports of
        the teardown check."""
        reports = []
        for mount in reversed(self.mounts):
            mount.stop()
            reports += mount.problems(expect)
        for path in {mount.path for mount in self.mounts}:
            remove_mirror(path)
        for path in self.public_dirs:
            if not is_lockfs_mounted(path):
                path.rmdir()
        return reports


# --- Daemonized mounts: `lockfs DIR` and `mount -t fuse.lockfs` --------------------------------

PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _orphaned_daemons() -> set[int]:
    """Children of this process that lead their own session: daemons that were reparented
    here (the foreground daemons of :class:`Mount` never call setsid)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, session = int(fields[1]), int(fields[3])
        if ppid == os.getpid() and session == int(entry):
            found.add(int(entry))
    return found


class Daemons(Processes):
    """Daemonized lockfs mounts of one test, and their cleanup.

    While a test uses it, the test process is a child subreaper: a daemon forked by ``lockfs``
    or ``mount`` (which then exit) becomes its child, so the test can read the daemon's exit
    status with :meth:`wait_exit`. :meth:`cleanup`, even after a failure, kills the processes
    the test started, reads the fault count of every lockfs left on the test's mountpoints,
    unmounts them (plain ``umount``; ``umount -l`` only as a last resort, noted as a problem)
    and reaps the daemons the test did not wait for, noting their exit status.
    """

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.tmp_path = tmp_path
        self.paths: list[Path] = []
        self.pids: set[int] = set()
        #: Problems seen in cleanup (and those excused by ``kills_daemon``), exit codes of the
        #: daemons it reaped, faults it read.
        self.notes: list[str] = []
        self.unresponsive: list[str] = []
        self.exit_codes: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        #: What the daemons logged to their fallback files under /run/lockfs (read, then
        #: removed, by :meth:`cleanup`), by mountpoint.
        self.logs: dict[str, str] = {}
        _set_subreaper(True)

    def mountpoint(self, name: str = "mnt") -> Path:
        """A new empty directory that teardown unmounts. Its name is short and has no "-"
        (escaped as four bytes): the daemon's control socket name grows with the path."""
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.tmp_path))
        self.paths.append(path)
        return path

    def missing_mountpoint(self) -> Path:
        path = self.mountpoint()
        path.rmdir()
        return path

    def non_empty_mountpoint(self) -> Path:
        """A directory holding a lock file, as a plain lock directory would."""
        path = self.mountpoint()
        (path / "store1").mkdir()
        (path / "store1" / "vm-100").touch()
        return path

    def mounted_mountpoint(self) -> Path:
        """A directory with a live lockfs mount on it."""
        path = self.mountpoint()
        result = self.lockfs(path)
        assert result.returncode == 0, result.stderr
        return path

    def dead_mountpoint(self) -> Path:
        """A lockfs mount whose daemon was killed: it answers ENOTCONN."""
        path = self.mounted_mountpoint()
        pid = self.daemon_pid(path)
        os.kill(pid, signal.SIGKILL)
        assert self.wait_exit(pid) == -signal.SIGKILL
        return path

    def track(self, path: Path) -> None:
        """Let teardown clean up a mountpoint the test made itself."""
        self.paths.append(path)

    def run(
        self, *cmd: str | os.PathLike[str], timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command from ``tmp_path``: mount(8) turns a source such as ``lockfs`` into a
        path when the working directory happens to hold an entry of that name."""
        kwargs.setdefault("cwd", self.tmp_path)
        return subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def lockfs(self, *args: str | os.PathLike[str], **env: str) -> subprocess.CompletedProcess[str]:
        """Run the development ``lockfs`` with ``args`` (and extra environment)."""
        return run_lockfs(*args, env=daemon_env(**env), cwd=self.tmp_path)

    def daemon_pid(self, path: Path) -> int:
        """The pid of the daemon serving ``path`` (it must be reparented here). The control
        socket may be bound a moment after the mount answers, so this polls."""

        def status() -> MountStatus | None:
            try:
                return query_status(str(path), timeout=2)
            except ControlError:
                return None

        pid = wait_for(status, 10, f"the control socket of {path}").pid
        self.pids.add(pid)
        return pid

    def end(self, path: Path, pid: int, how: str) -> None:
        """End daemon ``pid`` at ``path`` by ``SIGTERM``, ``umount`` or ``fusermount3``; it
        must exit with status 0."""
        if how == "SIGTERM":
            os.kill(pid, signal.SIGTERM)
        else:
            cmd: list[str | os.PathLike[str]] = (
                ["umount", path] if how == "umount" else ["fusermount3", "-u", path]
            )
            assert self.run(*cmd).returncode == 0
        assert self.wait_exit(pid) == 0

    def wait_exit(self, pid: int, timeout: float = 10.0) -> int:
        """Wait for daemon ``pid`` to exit; its exit code (negative: killed by a signal)."""

        def reaped() -> list[int] | None:
            got, status = os.waitpid(pid, os.WNOHANG)
            return [os.waitstatus_to_exitcode(status)] if got == pid else None

        code = wait_for(reaped, timeout, f"lockfs daemon {pid} to exit")[0]
        self.pids.discard(pid)
        return int(code)

    def cleanup(self) -> None:
        """Kill the test's processes, unmount every lockfs left on its mountpoints, reap the
        daemons; note what went wrong. Never raises; safe to call again."""
        try:
            self.kill_children()
            for path in self.paths:
                self._unmount_all(str(path))
            for pid in self.pids | _orphaned_daemons():
                self._reap(pid)
            self.pids.clear()
        except Exception as exc:  # noted: teardown must finish
            self.notes.append(f"cleanup failed: {type(exc).__name__}: {exc}")
        finally:
            # Daemons that were killed leave their control sockets behind.
            remove_stale_sockets([socket_path(os.path.realpath(path)) for path in self.paths])
            # Without syslog (as on the test machine) each daemon's lines go to a file under
            # /run/lockfs that outlives it, as it should for an administrator; not for tests.
            for path in self.paths:
                remove_mirror(path)
                log_file = log_path(os.path.realpath(path))
                for name in (f"{log_file}.1", log_file):
                    with contextlib.suppress(FileNotFoundError):
                        with open(name, errors="replace") as log:
                            self.logs[str(path)] = self.logs.get(str(path), "") + log.read()
                        os.unlink(name)
            _set_subreaper(False)

    def _unmount_all(self, path: str) -> None:
        for _ in range(10):
            if not is_lockfs_mounted(path):
                return
            with contextlib.suppress(ControlError):
                status = query_status(path, timeout=2)
                self.pids.add(status.pid)
                self.faults[path] = self.faults.get(path, 0) + status.faults
            if not unmount(path, self.notes):
                return

    def _reap(self, pid: int) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        with contextlib.suppress(ChildProcessError):
            while True:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == pid:
                    self.exit_codes[pid] = os.waitstatus_to_exitcode(status)
                    return
                if time.monotonic() > deadline:
                    self.unresponsive.append(f"daemon {pid} did not exit once unmounted: killed")
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return
                time.sleep(0.01)

    def problems(self, expect: Expectations) -> list[str]:
        """The teardown check, after :meth:`cleanup`: one report, or none when every daemon
        it reaped ran clean (see support.daemon_check)."""
        found = list(self.notes)
        if not expect.killed:
            found += self.unresponsive
            found += [
                f"daemon {pid}: {describe_exit(code)}"
                for pid, code in self.exit_codes.items()
                if code != 0
            ]
        if not expect.faults:
            found += [
                f"lockfs at {path} counted {faults} fault(s): internal errors"
                for path, faults in self.faults.items()
                if faults
            ]
        for text in self.logs.values():
            found += log_problems(text, expect)
        if not found:
            return []
        logs = "".join(f"=== {path}\n{text}" for path, text in self.logs.items() if text)
        return [report(f"daemonized lockfs mounts in {self.tmp_path}", found, logs or None)]
