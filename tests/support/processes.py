"""Real processes of a test: the ``lockfs`` command and lock holders (tests/helpers/locker.py),
each started from here and killed by teardown if the test leaves it running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

# The locker's exit statuses, re-exported: defined once, in the locker.
from helpers.locker import EXIT_BUSY as EXIT_BUSY
from helpers.locker import EXIT_MODIFIED as EXIT_MODIFIED

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
#: The interpreter that runs the daemon: LOCKFS_DAEMON_PYTHON=/usr/bin/python3 runs it on
#: Debian's python3-pyfuse3/python3-trio instead of the test virtualenv.
DAEMON_PYTHON = os.environ.get("LOCKFS_DAEMON_PYTHON", sys.executable)

StrPath = str | os.PathLike[str]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment of a ``lockfs`` process: this one's, with the checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def lockfs_command(*args: StrPath, python: str = DAEMON_PYTHON) -> list[str]:
    """The development ``lockfs`` command (this checkout, on DAEMON_PYTHON or ``python``)."""
    return [python, "-m", "lockfs", *(str(a) for a in args)]


def run_lockfs(
    *args: StrPath, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the development ``lockfs`` with ``args`` to its end; output captured as text."""
    return subprocess.run(
        lockfs_command(*args),
        capture_output=True,
        text=True,
        env=daemon_env() if env is None else env,
        timeout=timeout,
        **kwargs,
    )


class Child(subprocess.Popen[str]):
    """A process started by :meth:`Processes.spawn`: its standard streams are text pipes
    unless the caller redirected them (then the redirected ones are ``None``)."""

    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]


class Processes:
    """The processes a test started; :meth:`kill_children` (teardown) kills what still runs."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []

    def spawn(self, *args: StrPath, **kwargs: Any) -> Child:
        """Start a process (pipes for stdin, stdout and stderr, text mode by default)."""
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = Child([str(a) for a in args], **kwargs)
        self.children.append(proc)
        return proc

    def helper(self, *args: StrPath, **kwargs: Any) -> Child:
        """Start ``tests/helpers/locker.py`` with ``args`` (see its docstring)."""
        return self.spawn(sys.executable, HELPERS / "locker.py", *args, **kwargs)

    def run_helper(self, *args: StrPath, timeout: float = 30) -> str:
        """Run the locker to its end; it must exit 0. Its output."""
        proc = self.helper(*args)
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"locker {args} failed ({proc.returncode}): {err}"
        return out

    def hold(self, *args: StrPath) -> tuple[Child, int]:
        """Start a locker that takes its lock and holds it until :func:`release`; the
        process and the inode number it locked."""
        proc = self.helper(*args)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "locked":
            proc.kill()
            _out, err = proc.communicate(timeout=10)
            raise AssertionError(f"locker {args}: {line}, exit {proc.returncode}: {err}")
        return proc, int(line[1])

    def attempt(self, *args: StrPath) -> int:
        """Try to lock and release at once: 0 when the lock was free, EXIT_BUSY when held."""
        proc = self.helper(*args)
        _out, err = proc.communicate(timeout=30)  # closes stdin: the locker lets go at once
        assert proc.returncode in (0, EXIT_BUSY), f"locker {args}: exit {proc.returncode}: {err}"
        return proc.returncode

    def kill_children(self) -> None:
        """Kill every process the test started and reap it; close their pipes."""
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


def release(holder: subprocess.Popen[str]) -> None:
    """Tell a holding locker to let go (a line on stdin); it must exit 0."""
    _out, err = holder.communicate("\n", timeout=10)
    assert holder.returncode == 0, f"locker exited {holder.returncode}: {err}"


def waiters(mount: StrPath, ino: int) -> int:
    """Processes blocked on a lock of inode ``ino`` of the filesystem at ``mount``, from
    /proc/locks."""
    dev = os.stat(mount).st_dev
    key = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and key in line.split())
