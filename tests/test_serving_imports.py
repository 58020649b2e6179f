"""A running daemon never imports anything after start-up.

A package upgrade replaces the Python files under a running daemon; old code in memory must
never mix with new code on disk. So the daemon imports every module it will ever need before it
reports ready, and this test proves it: it runs a daemon (daemonized, as ``mount`` starts it)
from a copy of the package under an import audit hook, replaces that copy with modules that
fail to import once the mount answers, and then drives every serving path — PBS's lock
sequence and the other lock kinds, every kind of request and error reply, reclaim, the control
commands behind ``status``/``locks``/``metrics``, the metrics file, SIGHUP,
a SIGTERM refused while a lock is held, and the clean unmount. The daemon must keep serving,
exit 0, and have loaded no module after it was ready (not from lockfs, trio, pyfuse3 or the
standard library). A second daemon fails closed on an injected fault (exit 70), again
without loading a module.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support import DAEMON_PYTHON, HELPERS, REPO, Daemons, wait_for

from lockfs.control import ControlError, query


def errno_of(call: object, *args: object) -> int:
    try:
        call(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def replace_with_broken_copy(package: Path) -> None:
    """What an upgrade does to the files under a running daemon, made loud: every module of
    the package now fails to import."""
    shutil.rmtree(package)
    package.mkdir()
    for module in (REPO / "lockfs").glob("*.py"):
        (package / module.name).write_text(
            'raise ImportError("lockfs was replaced under the running daemon")\n'
        )


def start_watched(
    daemons: Daemons, tmp_path: Path, options: str
) -> tuple[Path, int, Callable[[], list[str]]]:
    """Start a daemon from a copy of the package under the import probe, wait until it
    serves, and break the copy. Its mountpoint, its pid, and what lists the modules it
    loaded since then."""
    copy = tmp_path / "installed"
    shutil.copytree(REPO / "lockfs", copy / "lockfs", ignore=shutil.ignore_patterns("__pycache__"))
    log = tmp_path / "imports.log"
    path = daemons.mountpoint()
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOCKFS_IMPORT_LOG": str(log),
        "LOCKFS_TEST_HOOKS": "fault-entry",
    }
    watched: list[str | os.PathLike[str]] = [
        DAEMON_PYTHON,
        HELPERS / "import_watch.py",
        path,
        "-o",
        options,
    ]
    started = daemons.run(*watched, env=env)
    assert started.returncode == 0, started.stderr
    os.statvfs(path)  # answered by pyfuse3's request loop: start-up is over
    ready_at = log.stat().st_size
    pid = daemons.daemon_pid(path)  # the first control command
    start_up = log.read_text().splitlines()
    # The probe sees imports made inside functions (cli._run imports lockfs.daemon).
    assert f"{pid} lockfs.daemon" in start_up
    replace_with_broken_copy(copy / "lockfs")

    def late_imports() -> list[str]:
        with open(log) as imports:
            imports.seek(ready_at)
            return [line for line in imports.read().splitlines() if line.startswith(f"{pid} ")]

    return path, pid, late_imports


def test_the_daemon_imports_nothing_after_start_up(daemons: Daemons, tmp_path: Path) -> None:
    metrics = tmp_path / "lockfs.prom"
    options = (
        "reclaim_delay=0.1,dir_grace=0.2,max_entries=40,max_file_size=16,max_depth=3,"
        f"metrics_file={metrics},metrics_interval=0.1"
    )
    path, pid, late_imports = start_watched(daemons, tmp_path, options)

    # Locks of every kind, held and released; PBS's full sequence.
    (path / "store1").mkdir()
    holder = daemons.helper("pbs", path / "store1" / "vm-100")
    assert holder.stdout is not None and holder.stdout.readline().startswith("locked ")
    for mode in ("pbs", "guard", "plain", "posix", "ofd"):
        lock = daemons.helper(mode, path / "store1" / f"{mode}-lock", "--release")
        assert lock.wait(timeout=10) == 0, mode
    assert daemons.helper("pbs", path / "store1" / "vm-100", "--release").wait(timeout=10) == 3
    # Requests and error replies.
    (path / "store1" / "a" / "b").mkdir(parents=True)
    os.rename(path / "store1" / "a", path / "store1" / "a2")
    sorted(os.listdir(path / "store1"))
    journal = path / "store1" / "move-journal"
    journal.write_bytes(b"line\n")
    moved = path / "store1" / "a2" / "journal"
    os.rename(journal, moved)  # a data file and its directory move in the data mirror
    os.rename(path / "store1" / "a2", path / "store1" / "a3")
    os.rename(path / "store1" / "a3", path / "store1" / "a2")
    os.rename(moved, journal)
    os.chmod(journal, 0o640)
    os.chown(journal, 34, 34)
    os.truncate(journal, 0)
    os.unlink(journal)
    assert errno_of(journal.write_bytes, b"x" * 100) == errno.EFBIG
    assert errno_of(os.mkdir, path / "store1" / "a2" / "b" / "c") == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", path / "link") == errno.EPERM
    assert errno_of(os.open, path / ("n" * 256), os.O_CREAT | os.O_RDWR) == errno.ENAMETOOLONG
    assert errno_of(os.rmdir, path / "store1") == errno.ENOTEMPTY
    for i in range(40):  # max_entries: ENOSPC, logged
        if errno_of(lambda p: Path(p).touch(), path / f"f{i}") == errno.ENOSPC:
            break
    else:
        raise AssertionError("max_entries=40 never answered ENOSPC")
    # The control commands, from the checkout's CLI (its own process).
    cli = [DAEMON_PYTHON, "-m", "lockfs"]
    cli_env = {**os.environ, "PYTHONPATH": str(REPO)}
    commands: tuple[list[str | os.PathLike[str]], ...] = (
        ["status", path],
        ["locks", path],
        ["metrics", path],
        ["status", path, "--json"],
    )
    for command in commands:
        result = daemons.run(*cli, *command, env=cli_env)
        assert result.returncode == 0, (command, result.stderr)
    try:
        query(str(path), "bogus")
    except ControlError as exc:
        assert "unknown command" in str(exc)
    # Reclaim: everything but the held lock and its directory goes.
    wait_for(lambda: query(str(path), "status")["nodes"] <= 3, 20, "reclaim")
    # The metrics file keeps being rewritten.
    first = metrics.stat().st_mtime_ns
    wait_for(lambda: metrics.stat().st_mtime_ns != first, 10, "a rewritten metrics file")
    # Signals: SIGHUP is ignored; SIGTERM is refused while the lock is held.
    os.kill(pid, signal.SIGHUP)
    os.kill(pid, signal.SIGTERM)
    assert daemons.helper("pbs", path / "store1" / "vm-100", "--release").wait(timeout=10) == 3
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
    os.kill(pid, signal.SIGTERM)
    assert daemons.wait_exit(pid) == 0

    assert late_imports() == [], "the daemon imported modules after start-up"


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
def test_failing_closed_imports_nothing(daemons: Daemons, tmp_path: Path) -> None:
    """An internal error after an upgrade: the daemon logs it, aborts its connection and
    exits 70 with the code it started with (a traceback reads source lines, imports none)."""
    path, pid, late_imports = start_watched(daemons, tmp_path, "reclaim_delay=0.1")
    (path / "store1").mkdir()
    assert errno_of(os.stat, path / "store1" / "__lockfs_fault__") == errno.ECONNABORTED
    assert daemons.wait_exit(pid) == 70
    assert errno_of(os.listdir, path) == errno.ENOTCONN
    assert late_imports() == [], "the daemon imported modules after start-up"
