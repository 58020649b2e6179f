"""Reclaim on a real mount: entries vanish once nobody refers to them, data is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from support import Mount, wait_for


def gone(path: os.PathLike[str]) -> bool:
    return not os.path.lexists(path)


def test_empty_file_vanishes_after_last_close(mnt: Mount) -> None:
    (mnt / "store").mkdir()
    fd = os.open(mnt / "store/lock", os.O_RDWR | os.O_CREAT, 0o644)
    ino = os.fstat(fd).st_ino
    assert os.stat(mnt / "store/lock").st_ino == ino  # held: the name stays
    os.close(fd)
    wait_for(lambda: gone(mnt / "store/lock"), 5, "the lock file to vanish")
    status = mnt.wait_reclaimed(5)  # the directory follows after its grace period
    assert status.reclaimed >= 2 and status.open == 0
    assert os.listdir(mnt.path) == []


def test_data_file_is_kept_until_emptied(mnt: Mount) -> None:
    journal = mnt / "move-journal"
    with open(journal, "ab") as f:
        f.write(b"line 1\n")
    (mnt / "probe").touch()  # closed at the same moment, but empty
    # The probe was closed after the journal: once the probe is reclaimed, the journal's
    # delay has passed too, and only the journal (and the root) may be left.
    wait_for(lambda: mnt.status().reclaimed >= 1, 5, "the empty probe to be reclaimed")
    assert gone(mnt / "probe")
    assert mnt.status().nodes == 2
    assert journal.read_bytes() == b"line 1\n"
    with open(journal, "ab") as f:
        f.write(b"line 2\n")
    assert journal.read_bytes() == b"line 1\nline 2\n"
    with open(journal, "r+b") as f:
        f.truncate(0)
    wait_for(lambda: gone(journal), 5, "the emptied journal to vanish")


def test_unlinked_held_file_is_dropped_after_close(mnt: Mount) -> None:
    fd = os.open(mnt / "held", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"data survives unlink while held")
    os.unlink(mnt / "held")
    assert mnt.status().nodes == 2
    os.close(fd)
    mnt.wait_reclaimed(5)


def test_killed_holder_releases_lock_and_file_vanishes(mnt: Mount) -> None:
    holder = mnt.helper("plain", mnt / "lock")
    assert holder.stdout.readline().startswith("locked")
    busy = subprocess.run(["flock", "-n", mnt / "lock", "true"])
    assert busy.returncode == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert subprocess.run(["flock", "-n", mnt / "lock", "true"]).returncode == 0
    wait_for(lambda: gone(mnt / "lock"), 5, "the lock file to vanish")


def test_flock_command(mnt: Mount) -> None:
    lock = mnt / "group-lock"
    holder = mnt.spawn("flock", "-x", lock, "-c", "echo locked; read line || true")
    assert holder.stdout.readline().strip() == "locked"
    assert subprocess.run(["flock", "-n", lock, "true"]).returncode == 1
    assert subprocess.run(["flock", "-s", "-w", "0.2", lock, "true"]).returncode == 1
    holder.stdin.close()
    assert holder.wait(10) == 0
    assert subprocess.run(["flock", "-n", lock, "true"]).returncode == 0
    wait_for(lambda: gone(lock), 5, "the lock file to vanish")


OPATH_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    pin = os.open(sys.argv[1], os.O_PATH)
    print("pinned", os.fstat(pin).st_ino, flush=True)
    sys.stdin.readline()
    fd = os.open(f"/proc/self/fd/{pin}", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", os.fstat(fd).st_ino, flush=True)
    sys.stdin.readline()
    """
)


def test_o_path_pin_locks_the_same_inode_as_a_fresh_open(mnt: Mount) -> None:
    lock = mnt / "pinned"
    lock.touch()
    holder = mnt.spawn(sys.executable, "-c", OPATH_HOLDER, lock)
    pinned_ino = int(holder.stdout.readline().split()[1])
    # Let the daemon ask the kernel to drop the idle entry; the O_PATH fd keeps the inode.
    wait_for(lambda: mnt.status().invalidations >= 1, 5, "the entry to be invalidated")
    assert mnt.status().files == 1
    holder.stdin.write("\n")
    holder.stdin.flush()
    line = holder.stdout.readline().split()
    assert line[0] == "locked" and int(line[1]) == pinned_ino
    assert os.stat(lock).st_ino == pinned_ino
    assert subprocess.run(["flock", "-n", lock, "true"]).returncode == 1
    holder.stdin.close()
    holder.wait(10)
    wait_for(lambda: gone(lock), 5, "the lock file to vanish")


def test_listing_does_not_make_entries_immortal(mnt: Mount) -> None:
    (mnt / "d").mkdir()
    for i in range(50):
        (mnt / f"d/f{i}").touch()
    listing = subprocess.run(["ls", "-la", mnt / "d"], capture_output=True, text=True, check=True)
    assert "f49" in listing.stdout or gone(mnt / "d/f49")
    mnt.wait_reclaimed(10)
    assert os.listdir(mnt.path) == []


#: Lists $1 and $2 every 100 ms, printing how many entries $2 had.
LS_LOOP = 'while :; do ls "$1" > /dev/null && ls "$2" | wc -l || exit 1; sleep 0.1; done'


def test_listing_every_100ms_does_not_keep_entries(mnt: Mount) -> None:
    """`watch -n 0.1 ls`: every readdirplus entry is a kernel reference, but not a use, so
    closed files vanish within their bound while the directory is listed over and over. The
    listed directory itself is used by the walk into it and stays; an empty directory that
    is only listed as an entry of its parent goes after its grace period."""
    (mnt / "d").mkdir()
    (mnt / "e").mkdir()
    for i in range(20):
        (mnt / f"d/lock{i:02d}").touch()
    lister = mnt.spawn("sh", "-c", LS_LOOP, "sh", mnt.path, mnt / "d")
    assert int(lister.stdout.readline()) == 20  # the first listing saw them all
    readdirs = mnt.status().requests["readdir"]
    # Bound: reclaim_delay + half of it (0.3 s) after the last use, plus one more delay
    # when a listing races with the invalidation; the lister keeps going meanwhile.
    wait_for(lambda: mnt.status().files == 0, 2, "the listed files to vanish")
    # Dir grace 1 s (+0.5 s): e, only ever an entry of the listed root, goes too.
    wait_for(lambda: mnt.status().dirs == 2, 3, "the unused, listed directory to vanish")
    assert lister.poll() is None
    assert mnt.status().requests["readdir"] > readdirs + 10  # still listing
    assert os.listdir(mnt.path) == ["d"] and os.listdir(mnt / "d") == []
    lister.kill()
    out, _ = lister.communicate(timeout=10)
    assert int(out.split()[-1]) == 0  # its last listing found d empty
    mnt.wait_reclaimed(5)


def test_directory_in_use_as_cwd_is_kept(mnt: Mount) -> None:
    (mnt / "a/b").mkdir(parents=True)
    script = textwrap.dedent(
        """
        import os, sys
        print(os.stat(".").st_ino, flush=True)
        sys.stdin.readline()
        fd = os.open("x", os.O_CREAT | os.O_RDWR)
        os.write(fd, b"1")
        print("ok", flush=True)
        """
    )
    proc = mnt.spawn(sys.executable, "-c", script, cwd=mnt / "a/b")
    cwd_ino = int(proc.stdout.readline())
    start = mnt.status().invalidations
    wait_for(lambda: mnt.status().invalidations >= start + 1, 10, "b to be invalidated")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ok"
    assert os.stat(mnt / "a/b").st_ino == cwd_ino
    assert (mnt / "a/b/x").read_bytes() == b"1"


def test_many_distinct_locks_leave_nothing(mnt: Mount) -> None:
    mnt.run_helper("bulk", mnt / "store", "3000", timeout=120)
    status = mnt.wait_reclaimed(30)
    assert status.created > 3000
    assert os.listdir(mnt.path) == []
