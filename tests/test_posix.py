"""POSIX semantics of a real lockfs mount, driven from real processes."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MakeMount, Mount, errno_of, wait_for

from lockfs.linux import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, renameat2
from lockfs.pbs_lock import chunk_path


def test_directories(mnt: Mount) -> None:
    (mnt / "a").mkdir()
    (mnt / "a/b").mkdir()
    assert errno_of(os.mkdir, mnt / "a") == errno.EEXIST
    assert errno_of(os.rmdir, mnt / "a") == errno.ENOTEMPTY
    listing = subprocess.run(["ls", "-a", mnt / "a"], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == [".", "..", "b"]
    (mnt / "a/f").touch()
    assert errno_of(os.rmdir, mnt / "a/f") == errno.ENOTDIR
    assert errno_of(os.unlink, mnt / "a/b") in (errno.EISDIR, errno.EPERM)
    assert os.stat(mnt / "a").st_nlink == 3
    os.rmdir(mnt / "a/b")
    assert os.stat(mnt / "a").st_nlink == 2
    assert errno_of(os.mkdir, mnt / "missing/x") == errno.ENOENT


def test_umask_and_attributes(mnt: Mount) -> None:
    out = subprocess.run(
        ["sh", "-c", f"umask 022 && mkdir {mnt}/d && : > {mnt}/d/keep && stat -c %a {mnt}/d"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "755"
    os.chmod(mnt / "d", 0o2770)
    os.chown(mnt / "d", 34, 34)
    os.utime(mnt / "d", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(mnt / "d")
    assert stat.S_IMODE(st.st_mode) == 0o2770 and stat.S_ISDIR(st.st_mode)
    assert (st.st_uid, st.st_gid) == (34, 34)
    assert st.st_mtime_ns == 2_000_000_456
    # setgid directories hand their group (and the bit, to subdirectories) down
    (mnt / "d/sub").mkdir()
    assert os.stat(mnt / "d/sub").st_gid == 34
    assert os.stat(mnt / "d/sub").st_mode & stat.S_ISGID


def test_mkdir_p_races(mnt: Mount) -> None:
    deep = Path(chunk_path(mnt / "store/ns1:ns2", 0)).parent
    procs = [mnt.spawn("mkdir", "-p", deep) for _ in range(8)]
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert deep.is_dir()


def test_files_create_excl_read_write_truncate(mnt: Mount) -> None:
    path = mnt / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        assert errno_of(os.open, path, os.O_RDWR | os.O_CREAT | os.O_EXCL) == errno.EEXIST
        assert os.write(fd, b"hello ") == 6
        os.fchmod(fd, 0o600)
        os.fchown(fd, 34, 34)
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 34
        assert st.st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)
    with open(path, "ab") as f:
        f.write(b"world\n")
    assert path.read_bytes() == b"hello world\n"
    with open(path, "r+b") as f:
        f.truncate(5)
    assert path.read_bytes() == b"hello"
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"!")
    assert path.read_bytes() == b"hello\0\0\0!"
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        assert os.pread(fd, 10, 0) == b""
    finally:
        os.close(fd)
    os.mknod(mnt / "plain", 0o644 | stat.S_IFREG)
    assert (mnt / "plain").is_file()


def test_unlink_while_held_keeps_inode(mnt: Mount) -> None:
    path = mnt / "held"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        ino = os.fstat(fd).st_ino
        os.write(fd, b"data")
        os.unlink(path)
        assert not path.exists()
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 10, 0) == b"data"
        fd2 = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        assert os.fstat(fd2).st_ino != ino
        os.close(fd2)
    finally:
        os.close(fd)


def test_rename_variants(mnt: Mount) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    ino_a = os.stat(mnt / "a").st_ino
    assert errno_of(renameat2, mnt / "a", mnt / "b", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "a").read_bytes() == b"B" and (mnt / "b").read_bytes() == b"A"
    assert os.stat(mnt / "b").st_ino == ino_a
    assert errno_of(renameat2, mnt / "a", mnt / "nope", RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(renameat2, mnt / "a", mnt / "c", RENAME_WHITEOUT) in (
        errno.EINVAL,
        errno.EPERM,
    )
    renameat2(mnt / "a", mnt / "c", RENAME_NOREPLACE)
    assert not (mnt / "a").exists() and (mnt / "c").read_bytes() == b"B"
    os.rename(mnt / "c", mnt / "b")  # replaces b
    assert (mnt / "b").read_bytes() == b"B"
    (mnt / "d1").mkdir()
    (mnt / "d2/x").mkdir(parents=True)
    assert errno_of(os.rename, mnt / "d1", mnt / "d2") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt / "d1", mnt / "b") == errno.ENOTDIR
    assert errno_of(os.rename, mnt / "b", mnt / "d1") == errno.EISDIR
    assert errno_of(os.rename, mnt / "d2", mnt / "d2/x/y") == errno.EINVAL
    os.rename(mnt / "d1", mnt / "d2/x/d1")
    assert (mnt / "d2/x/d1").is_dir()


def test_unsupported_kinds_get_clear_errors(mnt: Mount) -> None:
    (mnt / "f").write_bytes(b"x")
    assert errno_of(os.link, mnt / "f", mnt / "g") == errno.EPERM
    assert errno_of(os.symlink, "f", mnt / "s") == errno.EPERM
    assert errno_of(os.mkfifo, mnt / "fifo") == errno.EPERM
    assert errno_of(os.mknod, mnt / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3)) == errno.EPERM
    assert errno_of(os.setxattr, mnt / "f", "user.x", b"1") == errno.EOPNOTSUPP
    assert errno_of(os.getxattr, mnt / "f", "user.x") == errno.EOPNOTSUPP
    long_name = "n" * 256
    assert errno_of(os.open, mnt / long_name, os.O_CREAT | os.O_RDWR) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mnt / long_name) == errno.ENAMETOOLONG
    assert errno_of(os.stat, mnt / long_name) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mnt / "f", mnt / long_name) == errno.ENAMETOOLONG
    (mnt / ("n" * 255)).write_bytes(b"ok")  # 255 bytes is fine
    assert os.statvfs(mnt.path).f_namemax == 255
    assert (mnt / "f").read_bytes() == b"x"  # still serving
    assert mnt.status().faults == 0


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
def test_injected_fault_fails_closed(make_mount: MakeMount) -> None:
    """An internal error in a handler is never answered: the daemon logs one line naming the
    request, its arguments and the exception (with its traceback), aborts its connection and
    exits 70; the caller gets ECONNABORTED and everyone after it ENOTCONN."""
    mnt = make_mount(LOCKFS_TEST_HOOKS="fault-entry")
    (mnt / "before").mkdir()
    assert errno_of(os.mkdir, mnt / "__lockfs_fault__") in (errno.ECONNABORTED, errno.ENOTCONN)
    assert mnt.proc.wait(10) == 70
    assert errno_of(os.listdir, mnt / "before") == errno.ENOTCONN
    assert errno_of(os.mkdir, mnt / "after") == errno.ENOTCONN
    log = mnt.log_text()
    assert log.count("internal error in ") == 1
    assert (
        "CRITICAL: internal error in lookup(parent_inode=1, name=b'__lockfs_fault__', ctx=pid "
        in log
    )
    assert "RuntimeError: injected fault in lookup; failing closed: aborting the FUSE" in log
    assert "Traceback (most recent call last)" in log


def test_inode_numbers_never_reused(mnt: Mount) -> None:
    seen = []
    for _ in range(3):
        fd = os.open(mnt / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        seen.append(os.fstat(fd).st_ino)
        os.close(fd)
        wait_for(lambda: not (mnt / "lock").exists() and mnt.status().nodes == 1, 10, "reclaim")
    assert seen == sorted(set(seen))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs, mounted for the test and unmounted afterwards."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


def _truncate_times(path: Path) -> tuple[bool, bool, bool, bool, int]:
    """``: > path`` on an existing empty file: which of its times change (mtime, ctime,
    atime), whether mtime equals ctime afterwards, and the size."""
    path.touch()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # both far in the past
    before = os.stat(path)
    # Let the clock pass the ctime that utime set, so that a new ctime is visibly newer.
    wait_for(lambda: time.time_ns() > before.st_ctime_ns + 20_000_000, 5, "the clock to move")
    subprocess.run(["sh", "-c", ': > "$1"', "sh", path], check=True)
    after = os.stat(path)
    return (
        after.st_mtime_ns > before.st_mtime_ns,
        after.st_ctime_ns > before.st_ctime_ns,
        after.st_atime_ns != before.st_atime_ns,
        after.st_mtime_ns == after.st_ctime_ns,
        after.st_size,
    )


def test_o_trunc_of_an_empty_file_updates_times_like_tmpfs(mnt: Mount, tmpfs: Path) -> None:
    """POSIX: open(O_TRUNC) of an existing regular file marks mtime and ctime for update,
    even when it is empty (the `9>lockfile` idiom). lockfs changes them as tmpfs does."""
    on_tmpfs = _truncate_times(tmpfs / "lock")
    assert on_tmpfs == (True, True, False, True, 0)
    assert _truncate_times(mnt / "lock") == on_tmpfs
