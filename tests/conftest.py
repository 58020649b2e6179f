"""Fixtures that mount real lockfs filesystems in temporary directories.

Every mount is a real ``lockfs -f`` daemon in a subprocess, driven from real subprocesses, and
is unmounted in teardown even when the test fails. Tests that need FUSE fail (never skip) when
/dev/fuse or root is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockfs.control import ControlError, query_status, remove_stale_sockets, socket_path
from lockfs.logs import log_path
from lockfs.mounts import is_lockfs_mounted
from lockfs.status import MountStatus

REPO = Path(__file__).resolve().parent.parent
#: Fixtures of the Debian package (used by the tests that install it).
pytest_plugins = ["debian_package"]
#: The interpreter that runs the daemon: LOCKFS_DAEMON_PYTHON=/usr/bin/python3 runs it on
#: Debian's python3-pyfuse3/python3-trio instead of the test virtualenv.
DAEMON_PYTHON = os.environ.get("LOCKFS_DAEMON_PYTHON", sys.executable)
HELPERS = Path(__file__).resolve().parent / "helpers"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def require_fuse() -> None:
    """Fail loudly when this machine cannot run the FUSE tests."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the FUSE tests must run as root (they mount filesystems)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is missing (apt-get install fuse3: run mount/setup --dev)")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Processes:
    """The processes a test started; teardown kills whatever is still running."""

    children: list[subprocess.Popen[Any]]

    def spawn(self, *args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process that teardown kills if the test leaves it running."""
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen([str(a) for a in args], **kwargs)
        self.children.append(proc)
        return proc

    def helper(self, *args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``tests/helpers/locker.py`` with ``args``."""
        return self.spawn(sys.executable, HELPERS / "locker.py", *args, **kwargs)

    def kill_children(self) -> None:
        for child in self.children:
            with contextlib.suppress(OSError):
                child.kill()
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


class Mount(Processes):
    """A running lockfs daemon in the foreground and the processes a test started on it."""

    def __init__(self, path: Path, options: str, log: Path, env: dict[str, str]) -> None:
        self.path = path
        self.log = log
        self.children: list[subprocess.Popen[Any]] = []
        cmd = [DAEMON_PYTHON, "-m", "lockfs", str(path), "-f", "-o", options]
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(self._ready, 15, f"lockfs to answer at {path}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"lockfs exited with {self.proc.returncode}:\n{self.log_text()}")
        return is_lockfs_mounted(self.path) and os.stat(self.path).st_ino == 1

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

    def run_helper(self, *args: str | os.PathLike[str], timeout: float = 30) -> str:
        proc = self.helper(*args)
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"locker {args} failed ({proc.returncode}): {err}"
        return out

    def wait_reclaimed(self, timeout: float = 10.0, *, nodes: int = 1) -> MountStatus:
        """Wait until only ``nodes`` nodes (by default the root) are left in the daemon."""
        return wait_for(
            lambda: (s := self.status()).nodes <= nodes and s,
            timeout,
            f"the node table to shrink to {nodes}",
        )

    def stop(self) -> None:
        """Kill the test's processes, stop the daemon, and make sure nothing stays mounted."""
        self.kill_children()
        if self.proc.poll() is None:
            # The daemon unmounts on SIGTERM once nothing is open on the mount.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_lockfs_mounted(self.path):
            subprocess.run(["umount", "-l", str(self.path)], check=False)
        # A daemon that was killed leaves its control socket behind.
        remove_stale_sockets([socket_path(os.path.realpath(self.path))])
        self._log_file.close()


#: The unprivileged user of the tests that need a second, real user.
SECOND_USER = "lockfs-test"


@pytest.fixture(scope="session")
def second_user() -> pwd.struct_passwd:
    """A real unprivileged user, created with useradd if the machine lacks it."""
    try:
        return pwd.getpwnam(SECOND_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SECOND_USER,
            ],
            check=True,
        )
        return pwd.getpwnam(SECOND_USER)


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Factory: ``make_mount(options)`` mounts a fresh lockfs under ``tmp_path``."""
    require_fuse()
    mounts: list[Mount] = []
    cleanup: list[Path] = []

    def make(
        options: str = "reclaim_delay=0.2,dir_grace=1",
        public: bool = False,
        **env_extra: str,
    ) -> Mount:
        """``public``: mount where every user can reach it (pytest's tmp dirs are 0700)."""
        if public:
            path = Path(tempfile.mkdtemp(prefix="lockfs-test-", dir="/tmp"))
            path.chmod(0o755)
            cleanup.append(path)
        else:
            path = Path(tempfile.mkdtemp(prefix="mnt-", dir=tmp_path))
        env = daemon_env()
        env.update(env_extra)
        mount = Mount(path, options, tmp_path / f"lockfs-{len(mounts)}.log", env)
        mounts.append(mount)
        return mount

    yield make
    for mount in reversed(mounts):
        mount.stop()
    for path in cleanup:
        if not is_lockfs_mounted(path):
            path.rmdir()


@pytest.fixture
def mnt(make_mount: Callable[..., Mount]) -> Mount:
    """A lockfs with short reclaim delays (0.2 s files, 1 s directories)."""
    return make_mount()


# --- Daemonized mounts: `lockfs DIR` and `mount -t fuse.lockfs` --------------------------------

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _set_subreaper(on: bool) -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def lockfs_command(*args: str | os.PathLike[str]) -> list[str]:
    """The development ``lockfs`` command (this checkout, on DAEMON_PYTHON)."""
    return [DAEMON_PYTHON, "-m", "lockfs", *(str(a) for a in args)]


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
    status with :meth:`wait_exit`. Teardown, even after a failure, kills the processes the test
    started, unmounts every lockfs left on the test's mountpoints (plain ``umount`` first,
    ``umount -l`` only as a last resort) and reaps the daemons.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.paths: list[Path] = []
        self.children: list[subprocess.Popen[Any]] = []
        self.pids: set[int] = set()
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
        full_env = daemon_env()
        full_env.update(env)
        return self.run(*lockfs_command(*args), env=full_env)

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
            cmd = ["umount", path] if how == "umount" else ["fusermount3", "-u", path]
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
        self.kill_children()
        for path in self.paths:
            for _ in range(10):
                if not is_lockfs_mounted(path):
                    break
                with contextlib.suppress(Exception):
                    self.pids.add(query_status(str(path), timeout=2).pid)
                if subprocess.run(["umount", str(path)], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", str(path)], capture_output=True)
        for pid in self.pids | _orphaned_daemons():
            deadline = time.monotonic() + 10
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(pid, os.WNOHANG)[0] == 0:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        break
                    time.sleep(0.01)
        # Daemons that were killed leave their control sockets behind.
        remove_stale_sockets([socket_path(os.path.realpath(path)) for path in self.paths])
        # Without syslog (as on the test machine) each daemon's lines go to a file under
        # /run/lockfs that outlives it, as it should for an administrator; not for tests.
        for path in self.paths:
            log_file = log_path(os.path.realpath(path))
            for name in (log_file, f"{log_file}.1"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        _set_subreaper(False)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Daemonized lockfs mounts in ``tmp_path``, unmounted and reaped in teardown."""
    require_fuse()
    handle = Daemons(tmp_path)
    try:
        yield handle
    finally:
        handle.cleanup()
