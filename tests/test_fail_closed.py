"""All or nothing (issue 17.1) on a real mount: after an exception injected at a line of the
table code while it serves a request, the change is complete, or the mount answers ENOTCONN;
and a PBS-style temporary file + ``renameat2(RENAME_NOREPLACE)`` onto the held name never
gives a second holder while the first holds its lock.

Each case mounts with ``raise-at=HANDLER:N`` (lockfs.testing_hooks) for a sample of N (the
in-process version, tests/test_all_or_nothing.py, tries every line), holds a lock with PBS's
sequence on ``d/held``, arms the hook, sends the request, and then:

* the daemon failed closed: it exited 70 with one log line naming the request and the
  injected fault, the request got ECONNABORTED or ENOTCONN, every later request ENOTCONN, and
  PBS's lock on the held name cannot be taken; or
* no fault hit (N beyond the lines the request ran): the change is complete, the daemon's
  table names the held inode where the kernel does, and PBS's lock on that name is busy.

Before the all-or-nothing rule (faults answered EIO), a rename or unlink that failed half way
left the kernel's name on the held inode and the table without it, and PBS's sequence then
created a second inode under the held name and locked it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import MakeMount, Mount, errno_of, wait_for

from lockfs.control import ControlError, query
from lockfs.linux import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from lockfs.pbs_lock import LockBusy, LockFileModified, lock_helper

#: The lines faults are injected at: early, middle, late, and beyond any request (no fault).
LINES = (1, 5, 20, 60, 10**6)
#: Errnos of a request the daemon never answered because it failed closed.
DEAD = (errno.ECONNABORTED, errno.ENOTCONN)
EXIT_FAULT = 70


@dataclass(frozen=True)
class Case:
    """A request on ``d``: the handler that serves it, the system call, and where the held
    inode's name is once it completed (None: it has none)."""

    handler: str
    call: Callable[[Path], object]
    held_at: str | None = "held"


def _create(d: Path) -> None:
    os.close(os.open(d / "new", os.O_RDWR | os.O_CREAT, 0o644))


def _release(d: Path) -> None:
    os.close(os.open(d / "other", os.O_RDWR))


CASES = {
    "rename": Case("rename", lambda d: os.rename(d / "held", d / "moved"), held_at="moved"),
    "rename over the held name": Case(
        "rename", lambda d: os.rename(d / "other", d / "held"), held_at=None
    ),
    # Onto a name the kernel knows, it answers EEXIST itself; onto a new one, the daemon does
    # the renaming (and PBS's own NOREPLACE onto the held name follows every case).
    "rename noreplace": Case(
        "rename", lambda d: renameat2(d / "other", d / "fresh", RENAME_NOREPLACE)
    ),
    "rename exchange": Case(
        "rename", lambda d: renameat2(d / "held", d / "other", RENAME_EXCHANGE), held_at="other"
    ),
    "unlink": Case("unlink", lambda d: os.unlink(d / "held"), held_at=None),
    "rmdir": Case("rmdir", lambda d: os.rmdir(d / "sub")),
    "create": Case("create", _create),
    "mkdir": Case("mkdir", lambda d: os.mkdir(d / "newdir")),
    "setattr": Case("setattr", lambda d: os.truncate(d / "other", 3)),
    "release": Case("release", _release),
    "forget": Case("forget", lambda d: None),
}


def handled(mnt: Mount, handler: str, before: int) -> bool:
    """Wait until the daemon has served the request: it failed closed (exited: True), or it
    still answers and its counter for ``handler`` moved past ``before`` (False; one thread
    serves requests and the control socket, so the handler ran in between). For FORGET:
    until both idle entries (``other`` and ``sub``) were reclaimed."""

    def state() -> list[bool] | None:
        if mnt.proc.poll() is not None:
            return [True]
        try:
            status = mnt.status()
        except ControlError:
            return None  # exiting: ask again
        if handler == "forget":
            done = status.reclaimed >= 2
        else:
            done = status.requests.get(handler, 0) > before
        return [False] if done and mnt.proc.poll() is None else None

    return wait_for(state, 15, f"the daemon to serve {handler}")[0]


def pbs_lock_is_refused(path: Path) -> bool:
    """PBS's sequence (open, else mkostemp + renameat2(RENAME_NOREPLACE); flock LOCK_NB; the
    double-stat check) on ``path``: True when it does not end up holding a lock."""
    try:
        fd = lock_helper(str(path), (os.getuid(), os.getgid()))
    except (LockBusy, LockFileModified):
        return True
    except OSError as exc:
        assert exc.errno in DEAD, exc
        return True
    os.close(fd)
    return False


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
@pytest.mark.parametrize("name", list(CASES))
def test_a_fault_leaves_the_change_complete_or_the_mount_closed(
    make_mount: MakeMount, name: str
) -> None:
    case = CASES[name]
    # Nothing is reclaimed under the request, except where the request is the reclaim.
    forget = case.handler == "forget"
    delays = "reclaim_delay=0.2,dir_grace=1" if forget else "reclaim_delay=600,dir_grace=600"
    for line in LINES:
        where = f"{name}, fault at line {line}"
        mnt = make_mount(delays, LOCKFS_TEST_HOOKS=f"raise-at={case.handler}:{line}")
        d = mnt / "d"
        d.mkdir()
        (d / "sub").mkdir()
        (d / "other").write_bytes(b"")
        holder, held_ino = mnt.hold("pbs", d / "held")
        assert errno_of(os.stat, mnt / "__lockfs_arm__") == errno.ENOENT  # set-up done
        before = mnt.status().requests.get(case.handler, 0)
        got = _errno_or_zero(case.call, d)
        dead = handled(mnt, case.handler, before)
        if line == 1:
            assert dead, f"{where}: no fault"
        if line == LINES[-1]:
            assert not dead, f"{where}: a fault"
        if dead:
            assert mnt.proc.wait(10) == EXIT_FAULT, where
            assert got in DEAD or case.handler in ("release", "forget"), (where, got)  # async
            assert errno_of(os.listdir, d) == errno.ENOTCONN, where
            assert errno_of(os.mkdir, mnt / "after") == errno.ENOTCONN, where
            log = mnt.log_text()
            assert log.count("internal error in ") == 1, where
            assert f"CRITICAL: internal error in {case.handler}(" in log, where
            assert f"RuntimeError: injected fault in {case.handler} at " in log, where
            assert pbs_lock_is_refused(d / "held"), where
        else:
            assert got == 0, (where, got)
            info = query(str(mnt.path), f"nodes {held_ino}")[str(held_ino)]
            if case.held_at is None:
                assert not info["linked"], (where, info)
            else:
                assert info["linked"] and info["path"] == f"d/{case.held_at}", (where, info)
                assert os.stat(d / case.held_at).st_ino == held_ino, where
                assert pbs_lock_is_refused(d / case.held_at), where
        assert holder.poll() is None, f"{where}: the holder let go"
        mnt.stop()


def _errno_or_zero(call: Callable[[Path], object], d: Path) -> int:
    try:
        call(d)
    except OSError as exc:
        return exc.errno or 0
    return 0
