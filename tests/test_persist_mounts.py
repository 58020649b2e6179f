"""Data files across restarts of real mounts (lockfs.persist), driven by real processes.

What PBS's ``move-journal`` holds survives a clean unmount and mount at the same path (what
``systemctl restart`` of the mount unit does), a restart on another Python (an upgrade: Debian's
pyfuse3 and trio after the pinned ones, and back), ``kill -9`` of the daemon and the recovery
after it (every acknowledged write is there); an emptied, removed or renamed file comes back as
it is now; and a mirror that cannot be written (a full or immutable tmpfs: real failures) fails
the write with an errno and the file keeps what it had.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Daemons, MakeMount, Mount, daemon_env, errno_of

from lockfs.linux import RENAME_EXCHANGE, renameat2
from lockfs.mirror_dir import mirror_path
from lockfs.mounts import is_lockfs_mounted
from lockfs.options import MountOptions

#: PBS's only data file, and its owner (backup:backup).
JOURNAL = "store1/move-journal"
BACKUP = 34
#: Debian's interpreter, with python3-pyfuse3 and python3-trio (an upgraded host's daemon).
SYSTEM_PYTHON = "/usr/bin/python3"
DEFAULT_DATA_DIR = str(MountOptions().data_dir)

#: Append one line to the journal as PBS does: open_file_locked (create_dir_all, open or
#: mkostemp + fchmod + fchown + renameat2), flock, write, close.
APPEND = """
import os, sys
from lockfs import pbs_lock
fd = pbs_lock.open_file_locked(sys.argv[1], (34, 34), timeout=10)
os.lseek(fd, 0, os.SEEK_END)
os.write(fd, sys.argv[2].encode() + b"\\n")
os.close(fd)
"""

#: Append numbered lines until a write fails; print each number once its write returned.
APPEND_UNTIL_FAILURE = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
n = 0
try:
    while True:
        os.write(fd, b"line %d\\n" % n)
        print(n, flush=True)
        n += 1
except OSError as exc:
    print("failed", exc.errno, flush=True)
"""


def append(mountpoint: Path | Mount, line: str, name: str = JOURNAL) -> None:
    subprocess.run(
        [sys.executable, "-c", APPEND, str(Path(mountpoint) / name), line],
        env=daemon_env(),
        check=True,
        timeout=30,
    )


def snapshot(path: Path) -> tuple[bytes, int, int, int, int]:
    """What must survive: content, owner, group, mode, mtime."""
    st = os.stat(path)
    return path.read_bytes(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns


def mirror_of(mountpoint: Path | Mount, data_dir: str = DEFAULT_DATA_DIR) -> Path:
    return Path(mirror_path(data_dir, os.path.realpath(mountpoint)))


def mirrored_files(mountpoint: Path | Mount, data_dir: str = DEFAULT_DATA_DIR) -> list[str]:
    root = mirror_of(mountpoint, data_dir)
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


def write_journal(mountpoint: Path | Mount, lines: int = 3) -> tuple[bytes, int, int, int, int]:
    for n in range(lines):
        append(mountpoint, f"move {n}")
    os.chmod(Path(mountpoint) / "store1", 0o750)
    return snapshot(Path(mountpoint) / JOURNAL)


def restart(
    make_mount: MakeMount, mnt: Mount, options: str | None = None, python: str | None = None
) -> Mount:
    """A clean unmount (SIGTERM: the daemon unmounts) and a new mount at the same path, with
    ``options`` (default: make_mount's)."""
    mnt.stop()
    assert mnt.proc.returncode == 0 and not is_lockfs_mounted(mnt.path)
    if options is None:
        return make_mount(at=mnt.path, python=python)
    return make_mount(options, at=mnt.path, python=python)


# --- Restarts -----------------------------------------------------------------------------------


def test_a_restart_keeps_the_journal(daemons: Daemons) -> None:
    """``systemctl restart`` of the mount unit: umount, then mount again (the daemonized
    lockfs mount.fuse3 starts), with content, owner, mode and mtime as they were."""
    path = daemons.mountpoint()
    assert daemons.lockfs(path).returncode == 0
    before = write_journal(path)
    assert before[:4] == (b"move 0\nmove 1\nmove 2\n", BACKUP, BACKUP, 0o660)
    store = os.stat(path / "store1")
    daemons.end(path, daemons.daemon_pid(path), "umount")
    assert mirrored_files(path) == [JOURNAL]  # kept in data_dir while nothing is mounted
    again = daemons.lockfs(path)
    assert again.returncode == 0, again.stderr
    assert snapshot(path / JOURNAL) == before
    st = os.stat(path / "store1")
    assert (st.st_uid, st.st_gid, st.st_mode) == (store.st_uid, store.st_gid, store.st_mode)
    append(path, "move 3")  # PBS goes on where it was
    assert (path / JOURNAL).read_bytes() == before[0] + b"move 3\n"
    daemons.end(path, daemons.daemon_pid(path), "SIGTERM")
    assert daemons.lockfs(path).returncode == 0
    assert (path / JOURNAL).read_bytes() == before[0] + b"move 3\n"


def test_the_restored_file_is_not_reclaimed_and_its_directory_stays(make_mount: MakeMount) -> None:
    mnt = make_mount()
    before = write_journal(mnt)
    mnt = restart(make_mount, mnt)
    assert "restored 1 data files (21 bytes, 1 directories)" in mnt.log_text()
    # Entries made after the restore, and gone: the restored ones are older, nobody holds or
    # looks at them, but their data keeps them, as on tmpfs (delays 0.2 s and 1 s).
    (mnt / "probe").touch()
    (mnt / "probe-dir").mkdir()
    status = mnt.wait_reclaimed(nodes=3)
    assert (status.files, status.dirs) == (1, 2)  # the root counts
    assert snapshot(mnt / JOURNAL) == before


def test_an_upgrade_restores_what_the_old_version_wrote(make_mount: MakeMount) -> None:
    """A restart onto another interpreter and library versions (the pinned pyfuse3/trio, then
    Debian's python3-pyfuse3/python3-trio, then back) keeps the journal both ways."""
    mnt = make_mount(python=sys.executable)
    before = write_journal(mnt)
    mnt = restart(make_mount, mnt, python=SYSTEM_PYTHON)
    assert snapshot(mnt / JOURNAL) == before
    append(mnt, "move 3")
    after = snapshot(mnt / JOURNAL)
    mnt = restart(make_mount, mnt, python=sys.executable)
    assert snapshot(mnt / JOURNAL) == after
    assert after[0] == b"move 0\nmove 1\nmove 2\nmove 3\n"


@pytest.mark.kills_daemon
def test_kill_9_and_recovery_keep_every_acknowledged_write(daemons: Daemons) -> None:
    """A writer appends lines while the daemon is killed: after the recovery (umount of the
    dead mount, mount again) every line whose write returned is there."""
    path = daemons.mountpoint()
    assert daemons.lockfs(path).returncode == 0
    append(path, "first")
    pid = daemons.daemon_pid(path)
    writer = daemons.spawn(sys.executable, "-c", APPEND_UNTIL_FAILURE, path / JOURNAL)
    started = [writer.stdout.readline() for _ in range(200)]  # let it get going
    os.kill(pid, signal.SIGKILL)
    assert daemons.wait_exit(pid) == -signal.SIGKILL
    out, _err = writer.communicate(timeout=30)
    acknowledged = [int(line) for line in [*started, *out.splitlines()] if line.strip().isdigit()]
    assert "failed" in out and len(acknowledged) >= 200, out
    assert errno_of(os.stat, path / JOURNAL) == errno.ENOTCONN
    # The documented recovery: the holders are gone, umount, mount again.
    assert daemons.run("umount", path).returncode == 0
    assert daemons.lockfs(path).returncode == 0
    lines = (path / JOURNAL).read_bytes().splitlines()
    expected = [b"first"] + [b"line %d" % n for n in range(max(acknowledged) + 1)]
    assert lines[: len(expected)] == expected
    assert len(lines) <= len(expected) + 1  # at most the one write that got no answer
    assert os.stat(path / JOURNAL).st_uid == BACKUP


# --- What comes back is what there is now -------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "open O_TRUNC"])
def test_an_emptied_journal_leaves_no_mirror_and_does_not_come_back(
    make_mount: MakeMount, how: str
) -> None:
    mnt = make_mount()
    write_journal(mnt)
    if how == "truncate":
        os.truncate(mnt / JOURNAL, 0)
    else:
        os.close(os.open(mnt / JOURNAL, os.O_WRONLY | os.O_TRUNC))
    assert mirrored_files(mnt) == []
    assert not (mirror_of(mnt) / "store1").exists()  # its directory holds nothing either
    mnt.wait_reclaimed()  # an empty file vanishes as always
    mnt = restart(make_mount, mnt)
    assert errno_of(os.stat, mnt / "store1") == errno.ENOENT


def test_renamed_and_removed_files_come_back_as_they_are_now(make_mount: MakeMount) -> None:
    mnt = make_mount()
    write_journal(mnt)
    append(mnt, "other", "store1/other")
    append(mnt, "gone", "store1/gone")
    os.rename(mnt / JOURNAL, mnt / "store1" / "renamed")
    os.rename(mnt / "store1", mnt / "store2")
    os.makedirs(mnt / "store3" / "ns")
    os.rename(mnt / "store2" / "other", mnt / "store3" / "ns" / "other")
    os.unlink(mnt / "store2" / "gone")
    append(mnt, "exchanged", "store3/ns/x")
    renameat2(mnt / "store3" / "ns" / "x", mnt / "store3" / "ns" / "other", RENAME_EXCHANGE)
    expected = {
        "store2/renamed": (mnt / "store2" / "renamed").read_bytes(),
        "store3/ns/other": b"exchanged\n",
        "store3/ns/x": b"other\n",
    }
    assert mirrored_files(mnt) == sorted(expected)
    mnt = restart(make_mount, mnt)
    found = {
        os.path.relpath(os.path.join(d, f), mnt.path): Path(d, f).read_bytes()
        for d, _, files in os.walk(mnt.path)
        for f in files
    }
    assert found == expected
    assert expected["store2/renamed"] == b"move 0\nmove 1\nmove 2\n"


def test_with_data_dir_none_nothing_is_kept(make_mount: MakeMount) -> None:
    mnt = make_mount("reclaim_delay=0.2,dir_grace=1,data_dir=none")
    write_journal(mnt)
    assert not mirror_of(mnt).exists()
    mnt = restart(make_mount, mnt, "reclaim_delay=0.2,dir_grace=1,data_dir=none")
    assert errno_of(os.stat, mnt / "store1") == errno.ENOENT


def test_a_mount_without_data_leaves_nothing_in_data_dir(make_mount: MakeMount) -> None:
    mnt = make_mount()
    (mnt / "lock").touch()
    assert mirror_of(mnt).is_dir()  # locked by the daemon while it runs
    mnt.stop()
    assert not mirror_of(mnt).exists()


def test_an_unsafe_data_dir_fails_the_mount(daemons: Daemons, tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir(mode=0o777)
    data_dir.chmod(0o777)
    path = daemons.mountpoint()
    result = daemons.lockfs(path, "-o", f"data_dir={data_dir}")
    assert result.returncode == 1
    assert "is not safe for data kept across restarts" in result.stderr
    assert not is_lockfs_mounted(path)


# --- A mirror that cannot be written fails the request ------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A root-only tmpfs of 64 KiB and 8 inodes, as a data_dir that runs out of space. Tests
    ask for it before ``make_mount``, so that it is unmounted after their daemons stopped."""
    path = tmp_path / "small"
    path.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=8,mode=0700", "tmpfs", path],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", path], capture_output=True)
        subprocess.run(["umount", path], check=True)


def test_a_write_the_mirror_has_no_room_for_fails_and_changes_nothing(
    small_tmpfs: Path, make_mount: MakeMount
) -> None:
    options = f"reclaim_delay=0.2,dir_grace=1,data_dir={small_tmpfs}"
    mnt = make_mount(options)
    append(mnt, "x" * 16383)  # 16 KiB: fits
    before = snapshot(mnt / JOURNAL)
    fd = os.open(mnt / JOURNAL, os.O_WRONLY | os.O_APPEND)
    try:
        assert errno_of(os.write, fd, b"y" * 60_000) == errno.ENOSPC
    finally:
        os.close(fd)
    assert snapshot(mnt / JOURNAL) == before  # the file did not take it either
    assert "cannot keep /store1/move-journal across restarts" in mnt.log_text()
    mnt = restart(make_mount, mnt, options)
    assert snapshot(mnt / JOURNAL) == before


def test_no_inode_for_the_mirror_fails_the_first_write_and_a_rename(
    small_tmpfs: Path, make_mount: MakeMount
) -> None:
    options = f"reclaim_delay=0.2,dir_grace=1,data_dir={small_tmpfs}"
    mnt = make_mount(options)
    write_journal(mnt)
    # Fill the tmpfs's inodes (root, the mount's directory, store1, the journal, and these).
    filler = [small_tmpfs / f"fill{n}" for n in range(8)]
    for path in filler:
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
    (mnt / "new").touch()
    fd = os.open(mnt / "new", os.O_WRONLY)
    try:
        assert errno_of(os.write, fd, b"data") == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.stat(mnt / "new").st_size == 0
    os.mkdir(mnt / "elsewhere")
    assert errno_of(os.rename, mnt / JOURNAL, mnt / "elsewhere" / "j") == errno.ENOSPC
    assert (mnt / JOURNAL).read_bytes() == b"move 0\nmove 1\nmove 2\n"
    assert errno_of(os.stat, mnt / "elsewhere" / "j") == errno.ENOENT
    for path in filler:
        path.unlink(missing_ok=True)
    os.rename(mnt / JOURNAL, mnt / "elsewhere" / "j")  # room again: it works
    mnt = restart(make_mount, mnt, options)
    assert (mnt / "elsewhere" / "j").read_bytes() == b"move 0\nmove 1\nmove 2\n"


def test_an_immutable_mirror_fails_the_write_with_eio(
    small_tmpfs: Path, make_mount: MakeMount
) -> None:
    """A failure other than space (root cannot write an immutable file): EIO, nothing kept."""
    options = f"reclaim_delay=0.2,dir_grace=1,data_dir={small_tmpfs}"
    mnt = make_mount(options)
    before = write_journal(mnt)
    mirror_file = mirror_of(mnt, str(small_tmpfs)) / JOURNAL
    subprocess.run(["chattr", "+i", mirror_file], check=True)
    fd = os.open(mnt / JOURNAL, os.O_WRONLY | os.O_APPEND)
    try:
        assert errno_of(os.write, fd, b"lost\n") == errno.EIO
    finally:
        os.close(fd)
    assert errno_of(os.truncate, mnt / JOURNAL, 0) == errno.EIO
    assert snapshot(mnt / JOURNAL) == before
    subprocess.run(["chattr", "-i", mirror_file], check=True)
    append(mnt, "move 3")
    mnt = restart(make_mount, mnt, options)
    assert (mnt / JOURNAL).read_bytes() == before[0] + b"move 3\n"
