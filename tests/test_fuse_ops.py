"""What the adapter (lockfs.fuse_ops) decides itself, on a real mount: the FUSE protocol side.

Every rule about names, references and reclaim is the node table's, tested in test_nodes.py
and test_nodes_model.py. What is left to the adapter is how requests and replies travel:
FLUSH is answered ENOSYS once so that the kernel stops sending it, O_TRUNC arrives with the
OPEN, file handles are inode numbers, and STATFS shows the table's capacity.
"""

from __future__ import annotations

import fcntl
import os

from support import MakeMount, Mount


def request_counts(mnt: Mount) -> dict[str, int]:
    return dict(mnt.status().requests)


def test_lock_cycle_is_open_and_release(mnt: Mount) -> None:
    """A lock cycle on an existing file costs OPEN + RELEASE, with or without O_TRUNC: the
    first close's FLUSH is answered ENOSYS and the kernel sends none after it, and O_TRUNC
    comes with the OPEN instead of a SETATTR."""
    path = mnt / "lock"
    held = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # open: never idle, never invalidated
    try:
        os.close(os.open(path, os.O_RDWR))
        assert request_counts(mnt)["flush"] == 1
        before = request_counts(mnt)
        cycles = [os.O_RDWR, os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_TRUNC, os.O_RDONLY]
        for flags in cycles:
            fd = os.open(path, flags)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.close(fd)
        after = request_counts(mnt)
    finally:
        os.close(held)
    sent = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: n for name, n in sent.items() if n} == {
        "open": len(cycles),
        "release": len(cycles),
    }


def test_truncating_open_empties_the_file(mnt: Mount) -> None:
    """The O_TRUNC the kernel passes with OPEN reaches the table: data and size are gone."""
    path = mnt / "journal"
    path.write_bytes(b"entry\n")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b""


def test_statfs_shows_the_entry_limit(make_mount: MakeMount) -> None:
    """STATFS counts entries: the entry limit in total, what is left of it free (as blocks
    and as inodes), and names up to 255 bytes."""
    mnt = make_mount("max_entries=50")
    (mnt / "d").mkdir()
    held = os.open(mnt / "d/lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        vfs = os.statvfs(mnt.path)
        assert mnt.status().nodes == 3
    finally:
        os.close(held)
    assert (vfs.f_files, vfs.f_blocks) == (50, 50)
    assert (vfs.f_ffree, vfs.f_favail, vfs.f_bfree, vfs.f_bavail) == (47, 47, 47, 47)
    assert vfs.f_namemax == 255
