"""Limits on a real mount: clear errnos, nothing held is disturbed, recovery after release."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess

from support import MakeMount, errno_of, wait_for


def test_entry_limit_gives_enospc_and_recovers(make_mount: MakeMount) -> None:
    mnt = make_mount("max_entries=20,reclaim_delay=0.2,dir_grace=1")
    (mnt / "busy").mkdir()
    held = [os.open(mnt / f"busy/l{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(18)]
    fcntl.flock(held[0], fcntl.LOCK_EX)
    try:
        assert errno_of(os.open, mnt / "busy/one-too-many", os.O_RDWR | os.O_CREAT) == errno.ENOSPC
        assert errno_of(os.mkdir, mnt / "newdir") == errno.ENOSPC
        log = mnt.log_text()
        assert log.count("entry limit reached") == 1 and "busiest directory: /busy (18" in log
        # Held locks are not disturbed: same inodes, still locked against others.
        assert os.fstat(held[0]).st_ino == os.stat(mnt / "busy/l0").st_ino
        assert subprocess.run(["flock", "-n", mnt / "busy/l0", "true"]).returncode == 1
        assert os.statvfs(mnt.path).f_ffree == 0
    finally:
        for fd in held:
            os.close(fd)
    wait_for(lambda: mnt.status().nodes <= 2, 10, "the released files to be reclaimed")
    fd = os.open(mnt / "busy/after", os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)


def test_file_size_limit_gives_efbig(make_mount: MakeMount) -> None:
    mnt = make_mount("max_file_size=4k")
    fd = os.open(mnt / "journal", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        assert os.write(fd, b"x" * 4096) == 4096
        assert errno_of(os.write, fd, b"y") == errno.EFBIG
        assert errno_of(os.ftruncate, fd, 8192) == errno.EFBIG
        assert os.pread(fd, 10, 0) == b"x" * 10  # what was written is intact
    finally:
        os.close(fd)
    assert os.stat(mnt / "journal").st_size == 4096


def test_depth_limit_gives_enametoolong(make_mount: MakeMount) -> None:
    mnt = make_mount("max_depth=3")
    (mnt / "a/b/c").mkdir(parents=True)
    assert errno_of(os.mkdir, mnt / "a/b/c/d") == errno.ENAMETOOLONG
    assert errno_of(os.open, mnt / "a/b/c/f", os.O_CREAT | os.O_RDWR) == errno.ENAMETOOLONG
    (mnt / "x/y").mkdir(parents=True)
    assert errno_of(os.rename, mnt / "x", mnt / "a/b/x") == errno.ENAMETOOLONG
    (mnt / "a/b/f").touch()
