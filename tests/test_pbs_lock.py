"""PBS's lock sequence (lockfs.pbs_lock) on the test machine's own filesystem, without FUSE.

The same code takes the locks of the real-mount tests (tests/helpers/locker.py) and of the
benchmark's cold cycle; here it is checked against a plain directory, as PBS uses tmpfs.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from pathlib import Path

import pytest

from lockfs.linux import RENAME_EXCHANGE, RENAME_NOREPLACE, mkostemp, renameat2
from lockfs.pbs_lock import (
    LockBusy,
    LockFileModified,
    chunk_digest,
    chunk_path,
    create_dir_all,
    lock_helper,
    open_file_locked,
)

OWNER = (34, 34)


def test_renameat2_flags(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    with pytest.raises(FileExistsError):
        renameat2(tmp_path / "a", tmp_path / "b", RENAME_NOREPLACE)
    renameat2(tmp_path / "a", tmp_path / "b", RENAME_EXCHANGE)
    assert (tmp_path / "a").read_bytes() == b"B" and (tmp_path / "b").read_bytes() == b"A"
    with pytest.raises(OSError) as info:
        renameat2(tmp_path / "missing", tmp_path / "c", 0)
    assert info.value.errno == errno.ENOENT and info.value.filename == tmp_path / "c"
    renameat2(str(tmp_path / "a"), os.fsencode(tmp_path / "c"), RENAME_NOREPLACE)
    assert not (tmp_path / "a").exists() and (tmp_path / "c").read_bytes() == b"B"


def test_mkostemp_makes_a_new_private_file(tmp_path: Path) -> None:
    fd, name = mkostemp(tmp_path / "lock.tmp_")
    try:
        assert re.fullmatch(rb".*/lock\.tmp_[A-Za-z0-9]{6}", name)
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_ino == os.stat(name).st_ino
        assert not os.get_inheritable(fd)  # O_CLOEXEC
    finally:
        os.close(fd)


def test_create_dir_all(tmp_path: Path) -> None:
    deep = tmp_path / "store/ns1:ns2/.chunks/abcd"
    create_dir_all(str(deep))
    create_dir_all(str(deep))  # existing: fine
    assert deep.is_dir()
    (tmp_path / "file").touch()
    with pytest.raises(FileExistsError):
        create_dir_all(str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError):
        create_dir_all(str(tmp_path / "file/below"))


def test_a_new_lock_file_is_renamed_into_place(tmp_path: Path) -> None:
    """No temporary file is left, and the lock file gets mode 0660 and its owner."""
    path = chunk_path(tmp_path / "store1", 7)
    fd = lock_helper(path, OWNER)
    try:
        st = os.fstat(fd)
        assert st.st_ino == os.stat(path).st_ino
        assert stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == OWNER
        assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
        flags = os.get_blocking(fd), os.get_inheritable(fd)
        assert flags == (True, False)
    finally:
        os.close(fd)
    again = lock_helper(path, OWNER)  # the existing file is opened, not replaced
    assert os.fstat(again).st_ino == st.st_ino
    os.close(again)


def test_timeout_0_is_busy_at_once_and_a_timeout_waits(tmp_path: Path) -> None:
    path = str(tmp_path / "vm-100")
    holder = open_file_locked(path, OWNER)  # flock locks belong to the open file description
    try:
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(LockBusy):
            open_file_locked(path, OWNER)
        assert len(os.listdir("/proc/self/fd")) == fds  # a lock not taken leaves no fd open
        start = time.monotonic()
        with pytest.raises(LockBusy):
            open_file_locked(path, OWNER, timeout=0.2)
        assert time.monotonic() - start >= 0.2
    finally:
        os.close(holder)
    fd = open_file_locked(path, OWNER, timeout=5)
    os.close(fd)


def test_shared_locks_coexist(tmp_path: Path) -> None:
    path = str(tmp_path / "ns-lock")
    first = open_file_locked(path, OWNER, exclusive=False)
    second = open_file_locked(path, OWNER, exclusive=False)
    try:
        with pytest.raises(LockBusy):
            open_file_locked(path, OWNER)
    finally:
        os.close(first)
        os.close(second)


def test_double_stat_check_fails_when_the_name_was_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process unlinking (or replacing) the name between open and the check."""
    path = str(tmp_path / "snapshot")
    real_stat = os.stat
    replaced = {"done": False}

    def stat_after_replacement(target: str, *args: object, **kwargs: object) -> os.stat_result:
        if target == path and not replaced["done"]:
            replaced["done"] = True
            os.unlink(path)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY))  # a new inode, the old name
        return real_stat(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat_after_replacement)
    with pytest.raises(LockFileModified, match="replaced the lock file"):
        lock_helper(path, OWNER)


def test_chunk_paths_are_laid_out_like_pbs() -> None:
    path = chunk_path("/run/locks/store1", 0)
    prefix, digest = path.split("/")[-2:]
    assert path == f"/run/locks/store1/.chunks/{prefix}/{digest}"
    assert re.fullmatch("[0-9a-f]{64}", digest) and prefix == digest[:4]
    assert digest == chunk_digest(0) != chunk_digest(1)
    assert chunk_path(Path("store"), 5) == chunk_path("store", 5)  # the same everywhere
    assert len({chunk_path("s", i).split("/")[-2] for i in range(200)}) > 190  # spread out
