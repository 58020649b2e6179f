"""flock, POSIX and OFD locks across processes on a real mount, with PBS's lock sequence."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import Mount, wait_for

BUSY = 3


def hold(mnt: Mount, *args: str | os.PathLike[str]) -> tuple[subprocess.Popen[str], int]:
    """Start a locker that holds its lock; return it and the locked inode number."""
    proc = mnt.helper(*args)
    line = proc.stdout.readline().split()
    assert line and line[0] == "locked", f"{args}: {line} {proc.stderr.read()}"
    return proc, int(line[1])


def release(proc: subprocess.Popen[str]) -> None:
    proc.stdin.close()
    assert proc.wait(10) == 0


def waiters(mnt: Mount, ino: int) -> int:
    """Processes blocked on a lock of inode ``ino`` of this mount, from /proc/locks."""
    dev = os.stat(mnt.path).st_dev
    key = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and key in line.split())


def attempt(mnt: Mount, *args: str | os.PathLike[str]) -> int:
    proc = mnt.helper(*args)
    _, err = proc.communicate(timeout=30)  # closes stdin: the locker releases at once
    assert proc.returncode in (0, BUSY), err
    return proc.returncode


@pytest.mark.parametrize("mode", ["pbs", "guard", "plain", "posix", "ofd"])
def test_exclusive_lock_excludes_other_processes(mnt: Mount, mode: str) -> None:
    path = mnt / "store/vm-100"
    path.parent.mkdir()
    holder, ino = hold(mnt, mode, path)
    assert attempt(mnt, mode, path) == BUSY
    assert attempt(mnt, "pbs" if mode in ("posix", "ofd") else mode, path, "--shared") in (
        BUSY,
        0,  # flock and fcntl locks are independent of each other
    )
    assert os.stat(path).st_ino == ino
    release(holder)
    assert attempt(mnt, mode, path, "--release") == 0


def test_flock_and_record_locks_are_independent_but_each_exclusive(mnt: Mount) -> None:
    path = mnt / "lock"
    flock_holder, _ = hold(mnt, "plain", path)
    posix_holder, _ = hold(mnt, "posix", path)  # fcntl locks don't see flock locks
    assert attempt(mnt, "ofd", path) == BUSY  # but OFD and POSIX locks conflict
    assert attempt(mnt, "pbs", path) == BUSY
    release(flock_holder)
    release(posix_holder)


def test_shared_locks_coexist_and_block_exclusive(mnt: Mount) -> None:
    path = mnt / "ns-lock"
    first, ino1 = hold(mnt, "pbs", path, "--shared")
    second, ino2 = hold(mnt, "pbs", path, "--shared")
    assert ino1 == ino2
    assert attempt(mnt, "pbs", path) == BUSY
    release(first)
    assert attempt(mnt, "pbs", path) == BUSY
    release(second)
    assert attempt(mnt, "pbs", path, "--release") == 0


def test_pbs_timer_timeout_interrupts_a_blocked_flock(mnt: Mount) -> None:
    path = mnt / "manifest.lck"
    holder, _ = hold(mnt, "pbs", path)
    assert attempt(mnt, "pbs", path, "--timeout", "0.3") == BUSY
    release(holder)
    assert attempt(mnt, "pbs", path, "--timeout", "5", "--release") == 0


def test_blocked_waiter_gets_the_lock_when_the_holder_closes(mnt: Mount) -> None:
    path = mnt / "chunk"
    holder, ino = hold(mnt, "pbs", path)
    waiter = mnt.helper("pbs", path, "--timeout", "30")
    # The waiter is blocked in flock on the same inode (the kernel shows it in /proc/locks).
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)
    line = waiter.stdout.readline().split()
    assert line == ["locked", str(ino)]  # the name was never detached while referenced
    release(waiter)


def test_pbs_sequence_creates_via_rename_and_files_vanish(mnt: Mount) -> None:
    chunk = "ab" * 32
    path = mnt / f"store1/.chunks/{chunk[:4]}/{chunk}"
    holder, ino = hold(mnt, "pbs", path, "--uid", "34", "--gid", "34")
    st = os.stat(path)
    assert st.st_ino == ino and (st.st_uid, st.st_gid) == (34, 34)
    assert oct(st.st_mode & 0o777) == oct(0o660)
    assert os.listdir(path.parent) == [chunk]  # no temporary file left behind
    release(holder)
    mnt.wait_reclaimed(10)


def test_unlink_before_unlock_callers_retry_onto_the_new_inode(mnt: Mount) -> None:
    path = mnt / "chunk"
    holder, ino = hold(mnt, "guard", path, "--unlink")
    waiter = mnt.helper("guard", path, "--timeout", "30")
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)  # unlinks the name, then closes
    line = waiter.stdout.readline().split()
    assert line[0] == "locked" and int(line[1]) != ino
    assert os.stat(path).st_ino == int(line[1])
    release(waiter)


def test_pbs_double_stat_detects_an_unlinked_lock(mnt: Mount) -> None:
    path = mnt / "snapshot"
    holder, ino = hold(mnt, "pbs", path, "--unlink")
    waiter = mnt.helper("pbs", path, "--timeout", "30")
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)
    out, _ = waiter.communicate(timeout=10)
    assert waiter.returncode == 4 and out.strip() == "modified"
