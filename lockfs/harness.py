"""Starting a FUSE server in a subprocess and waiting until its mount serves: what lockfs-bench
and the test suite (tests/support/mounts.py) share.

:class:`ServerProcess` runs a server in the foreground (``python -m lockfs MOUNTPOINT -f -o
OPTIONS`` by default) with its output in a log file. It keeps one invariant: a server is called
serving only once its mountpoint is mounted with the expected type and answers with the root
inode (``st_ino == 1``), and a server that exits before that is reported at once, with its log,
instead of being waited for. :func:`unmount` never falls back to a lazy unmount: a mount that
stays busy is the caller's problem to report. Nothing here imports FUSE; the daemon never
imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .mounts import entries_at, is_lockfs_mounted, resolve, umount

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], timeout: float, max_delay: float = 0.1
) -> tuple[T, float] | None:
    """Poll ``condition`` until it returns something truthy: ``(result, seconds waited)``.

    Polls fast at first (5 ms), backing off to ``max_delay``. Returns ``None`` once ``timeout``
    seconds have passed: the caller decides whether a timeout is an error.
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result, time.monotonic() - start
        if time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def lockfs_command(mountpoint: str | os.PathLike[str], options: str) -> list[str]:
    """``lockfs MOUNTPOINT -f -o OPTIONS`` on this interpreter: the installed package or, run
    from a checkout, the checkout (the child inherits the working directory and environment)."""
    return [sys.executable, "-m", "lockfs", str(mountpoint), "-f", "-o", options]


class ServerExited(Exception):
    """The server exited before its mount served; the message holds its exit status and log."""


#: Seconds between the SIGTERMs of :meth:`ServerProcess.terminate`.
TERM_RETRY = 0.5


class ServerProcess:
    """A FUSE server in a subprocess, serving at ``mountpoint`` once :meth:`serving`.

    ``mounted(mountpoint)`` tells whether the server's kind of filesystem is mounted there (by
    default a lockfs). Extra ``popen`` arguments (``env``, ``preexec_fn``,
    ``start_new_session``) go to :class:`subprocess.Popen`.
    """

    def __init__(
        self,
        command: Sequence[str],
        mountpoint: str | os.PathLike[str],
        log_path: str | os.PathLike[str],
        *,
        mounted: Callable[[str], bool] = is_lockfs_mounted,
        name: str = "lockfs",
        **popen: object,
    ) -> None:
        self.mountpoint = str(mountpoint)
        #: The mounts at the mountpoint before the server started: any other is the server's.
        #: (Read now, while the path is a plain directory: resolving it later would stat the
        #: mount, which waits for a stuck server.)
        self._resolved = resolve(mountpoint)
        self._mounts_before = {e.mount_id for e in entries_at(self._resolved, resolve_path=False)}
        self.log_path = str(log_path)
        self.mounted = mounted
        self.name = name
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in close_log()
        self.proc = subprocess.Popen(
            list(command),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **popen,  # type: ignore[call-overload]
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, lines: int = 20) -> str:
        return "".join(self.log_text().splitlines(keepends=True)[-lines:])

    def serving(self) -> bool:
        """True once the mount answers with the root inode; raises :class:`ServerExited` if the
        server has exited."""
        if self.proc.poll() is not None:
            raise ServerExited(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        return self.mounted(self.mountpoint) and os.stat(self.mountpoint).st_ino == 1

    def wait_serving(self, timeout: float, ready: Callable[[], T | None]) -> T:
        """Wait until :meth:`serving` and then ``ready()`` returns something truthy (such as
        the server's status, or ``True``), and return that. Raises :class:`ServerExited`, or
        :class:`TimeoutError` after ``timeout`` seconds."""
        polled = wait_until(lambda: ready() if self.serving() else None, timeout)
        if polled is None:
            raise TimeoutError(f"{self.name} did not answer at {self.mountpoint} in {timeout}s")
        return polled[0]

    def terminate(self, timeout: float) -> bool:
        """SIGTERM and wait up to ``timeout`` s; kill it if it is still running then. False if
        it had to be killed.

        lockfs unmounts on SIGTERM only once nothing is open on the mount, and refuses (keeps
        serving) otherwise. Processes that were just killed close their files at exit, but
        the RELEASE requests may still be queued when the first SIGTERM arrives, so SIGTERM
        is sent again every :data:`TERM_RETRY` seconds until the deadline, as long as the
        server's mount is still there: once it is gone the server is on its way out, and a
        second SIGTERM (its handler gone) would kill it instead of letting it exit."""
        deadline = time.monotonic() + timeout
        signalled = False
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                return False
            if not signalled or self._still_mounted():
                self.proc.send_signal(signal.SIGTERM)
                signalled = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=min(TERM_RETRY, left))
        return True

    def _still_mounted(self) -> bool:
        """Whether a mount that appeared since the server started is still at its mountpoint
        (read from the mount table: never waits for the server)."""
        mounts = {e.mount_id for e in entries_at(self._resolved, resolve_path=False)}
        return bool(mounts - self._mounts_before)

    def close_log(self) -> None:
        self._log_file.close()


def unmount(path: str, timeout: float) -> None:
    """Unmount the topmost mount at ``path``, retrying while it is busy for up to ``timeout``
    seconds. Never lazily: raises the last :class:`OSError` (EBUSY) if it stays busy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            umount(path)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.05)
