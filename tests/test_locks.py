"""flock, POSIX and OFD locks across processes on a real mount, with PBS's lock sequence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import EXIT_BUSY, EXIT_MODIFIED, Mount, release, wait_for, waiters

from lockfs.pbs_lock import chunk_path


@pytest.mark.parametrize("mode", ["pbs", "guard", "plain", "posix", "ofd"])
def test_exclusive_lock_excludes_other_processes(mnt: Mount, mode: str) -> None:
    path = mnt / "store/vm-100"
    path.parent.mkdir()
    holder, ino = mnt.hold(mode, path)
    assert mnt.attempt(mode, path) == EXIT_BUSY
    assert mnt.attempt("pbs" if mode in ("posix", "ofd") else mode, path, "--shared") in (
        EXIT_BUSY,
        0,  # flock and fcntl locks are independent of each other
    )
    assert os.stat(path).st_ino == ino
    release(holder)
    assert mnt.attempt(mode, path, "--release") == 0


def test_flock_and_record_locks_are_independent_but_each_exclusive(mnt: Mount) -> None:
    path = mnt / "lock"
    flock_holder, _ = mnt.hold("plain", path)
    posix_holder, _ = mnt.hold("posix", path)  # fcntl locks don't see flock locks
    assert mnt.attempt("ofd", path) == EXIT_BUSY  # but OFD and POSIX locks conflict
    assert mnt.attempt("pbs", path) == EXIT_BUSY
    release(flock_holder)
    release(posix_holder)


def test_shared_locks_coexist_and_block_exclusive(mnt: Mount) -> None:
    path = mnt / "ns-lock"
    first, ino1 = mnt.hold("pbs", path, "--shared")
    second, ino2 = mnt.hold("pbs", path, "--shared")
    assert ino1 == ino2
    assert mnt.attempt("pbs", path) == EXIT_BUSY
    release(first)
    assert mnt.attempt("pbs", path) == EXIT_BUSY
    release(second)
    assert mnt.attempt("pbs", path, "--release") == 0


def test_pbs_timer_timeout_interrupts_a_blocked_flock(mnt: Mount) -> None:
    path = mnt / "manifest.lck"
    holder, _ = mnt.hold("pbs", path)
    assert mnt.attempt("pbs", path, "--timeout", "0.3") == EXIT_BUSY
    release(holder)
    assert mnt.attempt("pbs", path, "--timeout", "5", "--release") == 0


def test_blocked_waiter_gets_the_lock_when_the_holder_closes(mnt: Mount) -> None:
    path = mnt / "chunk"
    holder, ino = mnt.hold("pbs", path)
    waiter = mnt.helper("pbs", path, "--timeout", "30")
    # The waiter is blocked in flock on the same inode (the kernel shows it in /proc/locks).
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)
    line = waiter.stdout.readline().split()
    assert line == ["locked", str(ino)]  # the name was never detached while referenced
    release(waiter)


def test_pbs_sequence_creates_via_rename_and_files_vanish(mnt: Mount) -> None:
    path = Path(chunk_path(mnt / "store1", 1))
    holder, ino = mnt.hold("pbs", path, "--uid", "34", "--gid", "34")
    st = os.stat(path)
    assert st.st_ino == ino and (st.st_uid, st.st_gid) == (34, 34)
    assert oct(st.st_mode & 0o777) == oct(0o660)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    release(holder)
    mnt.wait_reclaimed(10)


def test_unlink_before_unlock_callers_retry_onto_the_new_inode(mnt: Mount) -> None:
    path = mnt / "chunk"
    holder, ino = mnt.hold("guard", path, "--unlink")
    waiter = mnt.helper("guard", path, "--timeout", "30")
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)  # unlinks the name, then closes
    line = waiter.stdout.readline().split()
    assert line[0] == "locked" and int(line[1]) != ino
    assert os.stat(path).st_ino == int(line[1])
    release(waiter)


def test_pbs_double_stat_detects_an_unlinked_lock(mnt: Mount) -> None:
    path = mnt / "snapshot"
    holder, ino = mnt.hold("pbs", path, "--unlink")
    waiter = mnt.helper("pbs", path, "--timeout", "30")
    wait_for(lambda: waiters(mnt, ino), 10, "the waiter to block")
    release(holder)
    out, _ = waiter.communicate(timeout=10)
    assert waiter.returncode == EXIT_MODIFIED and out.strip() == "modified"
