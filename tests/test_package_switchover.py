"""``lockfs switch-over``: a plain lock directory becomes a lockfs mount without losing data.

Runs the packaged command (the switch-over mounts through mount(8), which finds the installed
/usr/sbin/lockfs), so it belongs to the package tests. The old directories live in temporary
directories; the ``daemons`` fixture unmounts whatever a test mounted.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from debian_package import COMMAND, Deb
from support import Daemons
from support.lock_dirs import BACKUP_ID, JOURNAL, plain_lock_dir, snapshot

from lockfs import switchover
from lockfs.control import escape_path
from lockfs.mounts import FSTYPE, entries_at
from lockfs.switchover import ASIDE_SUFFIX


def switch_over(
    daemons: Daemons, *args: str | os.PathLike[str]
) -> subprocess.CompletedProcess[str]:
    """The packaged ``lockfs switch-over ARGS``."""
    return daemons.run(COMMAND, "switch-over", *args)


def test_switch_over_carries_the_journal_and_drops_stale_locks(
    installed: Deb, daemons: Daemons
) -> None:
    parent = daemons.mountpoint("pbs")
    locks = plain_lock_dir(parent)
    result = switch_over(daemons, locks)
    daemons.track(locks)
    assert result.returncode == 0, result.stderr
    assert "Carried over: store1/move-journal (62 bytes)" in result.stdout, result.stdout
    # A lockfs mount, shown as `lockfs` in the mount table, owned like the old directory.
    (entry,) = entries_at(locks)
    assert (entry.fstype, entry.source) == (FSTYPE, "lockfs")
    assert {"nosuid", "nodev", "noexec"} <= set(entry.options.split(","))
    st = os.stat(locks)
    assert st.st_ino == 1
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (BACKUP_ID, BACKUP_ID, 0o755)
    # The journal: same lines, owner and mode; its directory keeps its owner and mode.
    journal = locks / "store1" / "move-journal"
    assert journal.read_bytes() == JOURNAL
    jst = journal.stat()
    assert (jst.st_uid, jst.st_gid, stat.S_IMODE(jst.st_mode)) == (BACKUP_ID, BACKUP_ID, 0o640)
    dst = (locks / "store1").stat()
    assert (dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode)) == (BACKUP_ID, BACKUP_ID, 0o750)
    # The stale lock files and the empty directory stayed behind, and the old tree is gone.
    assert sorted(os.listdir(locks)) == ["store1"]
    assert sorted(os.listdir(locks / "store1")) == ["move-journal"]
    assert sorted(os.listdir(parent)) == ["locks"]
    # It serves: PBS's lock sequence works, and appending to the journal keeps it.
    pid = daemons.daemon_pid(locks)
    assert daemons.helper("pbs", locks / "store1" / "vm-100", "--release").wait(timeout=10) == 0
    with open(journal, "ab") as out:
        out.write(b"move 89ab store1 -> store3\n")
    assert journal.read_bytes().count(b"\n") == 3
    # Run again: it is a lockfs mount already, so nothing happens.
    again = switch_over(daemons, locks)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert [e.mount_id for e in entries_at(locks)] == [entry.mount_id]
    daemons.end(locks, pid, "umount")


@pytest.mark.parametrize("user", ["flock", "posix", "open", "cwd"])
def test_switch_over_refuses_while_the_old_directory_is_in_use(
    installed: Deb, daemons: Daemons, user: str
) -> None:
    parent = daemons.mountpoint("pbs")
    locks = plain_lock_dir(parent)
    target = locks / "store1" / "vm" / "100.lck"
    if user == "flock":
        holder = daemons.helper("pbs", target)
    elif user == "posix":
        holder = daemons.helper("posix", target)
    elif user == "open":  # open, no lock (yet)
        holder = daemons.spawn("sh", "-c", f"exec 3<'{target}'; echo locked; read x")
    else:  # a shell working in the directory
        holder = daemons.spawn("sh", "-c", "echo locked; read x", cwd=locks / "store1")
    assert holder.stdout is not None and holder.stdout.readline().startswith("locked")
    before = snapshot(parent)
    result = switch_over(daemons, locks)
    assert result.returncode == 1
    assert "is in use" in result.stderr and f"pid {holder.pid} " in result.stderr, result.stderr
    assert "Nothing was changed" in result.stderr
    assert snapshot(parent) == before
    assert entries_at(locks) == []
    assert holder.poll() is None
    holder.communicate("\n", timeout=10)


def test_switch_over_refuses_a_mountpoint_and_a_leftover(installed: Deb, daemons: Daemons) -> None:
    parent = daemons.mountpoint("pbs")
    locks = plain_lock_dir(parent)
    before = snapshot(parent)
    # An earlier, failed switch-over left its old directory beside it.
    (parent / f".locks{ASIDE_SUFFIX}").mkdir()
    result = switch_over(daemons, locks)
    assert result.returncode == 1 and "earlier switch-over" in result.stderr, result.stderr
    (parent / f".locks{ASIDE_SUFFIX}").rmdir()
    assert snapshot(parent) == before
    # Something else is mounted there.
    tmpfs = daemons.mountpoint("tmpfs")
    assert daemons.run("mount", "-t", "tmpfs", "none", tmpfs).returncode == 0
    try:
        result = switch_over(daemons, tmpfs)
        assert result.returncode == 1 and "is a mountpoint (tmpfs)" in result.stderr
    finally:
        assert daemons.run("umount", tmpfs).returncode == 0


def test_a_failure_after_the_move_puts_the_old_directory_back(
    installed: Deb, daemons: Daemons
) -> None:
    """The journal cannot be carried (max_depth=1 refuses its directory level): the new mount
    goes and the old directory, with its inodes, is back."""
    parent = daemons.mountpoint("pbs")
    locks = plain_lock_dir(parent)
    before = snapshot(parent)
    result = switch_over(daemons, locks, "--options", "max_depth=1")
    daemons.track(locks)
    assert result.returncode == 1
    assert "carrying the data into the new mount failed" in result.stderr, result.stderr
    assert "the old directory is back" in result.stderr
    assert entries_at(locks) == []
    assert snapshot(parent) == before


def test_users_are_found_by_inode_after_a_rename(tmp_path: Path) -> None:
    """The check after moving the directory aside sees a file opened before the move."""
    old = tmp_path / "locks"
    (old / "store1").mkdir(parents=True)
    (old / "store1" / "vm-100").touch()
    fd = os.open(old / "store1" / "vm-100", os.O_RDONLY)
    try:
        os.rename(old, tmp_path / "aside")
        # This process is skipped by design (it runs the switch-over): ask from a child.
        found = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, sys; from lockfs.dirfd_tree import scan; "
                "from lockfs.switchover import users_of; "
                "root = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
                "print('\\n'.join(users_of(scan(root, sys.argv[1]))))",
                str(tmp_path / "aside"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert f"pid {os.getpid()} " in found.stdout, found.stderr
        assert found.stdout.strip().endswith("/aside/store1/vm-100")
    finally:
        os.close(fd)


def test_switch_over_mounts_through_the_systemd_unit_where_there_is_one(
    installed: Deb, daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where systemd runs and has a mount unit for the directory, ``systemctl start UNIT``
    mounts it (the daemon then belongs to the unit). This machine runs no systemd: a stand-in
    ``systemctl`` answers ``show`` and mounts for ``start`` with the unit's options."""
    parent = daemons.mountpoint("pbs")
    locks = plain_lock_dir(parent)
    daemons.track(locks)
    unit = escape_path(str(locks)) + ".mount"
    runtime, bin_dir, log = tmp_path / "systemd", tmp_path / "bin", tmp_path / "systemctl.log"
    runtime.mkdir()
    bin_dir.mkdir()
    stand_in = bin_dir / "systemctl"
    stand_in.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1" in\n'
        "  show) echo loaded ;;\n"
        f"  start) cd / && exec mount -t fuse.lockfs lockfs {locks} -o uid=0,gid=0,mode=0750 ;;\n"
        "esac\n"
    )
    stand_in.chmod(0o755)
    monkeypatch.setattr(switchover, "SYSTEMD_RUNTIME", str(runtime))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    refused = switchover.main([str(locks), "--options", "debug"])
    assert refused == 1 and not entries_at(locks)
    assert switchover.main([str(locks)]) == 0
    calls = log.read_text().splitlines()
    assert calls[-2:] == [f"show --property=LoadState --value {unit}", f"start {unit}"]
    st = os.stat(locks)
    assert (st.st_ino, st.st_uid, stat.S_IMODE(st.st_mode)) == (1, 0, 0o750)  # the unit's
    assert (locks / "store1" / "move-journal").read_bytes() == JOURNAL
    daemons.end(locks, daemons.daemon_pid(locks), "umount")
