"""``lockfs switch-over`` on a lock directory that ``backup`` can write: nothing ``backup`` does
while it runs makes root read, change or mount anything outside the tree, and the old tree is
never lost.

The layout is PBS's: a parent directory owned by ``backup`` (like /run/proxmox-backup) holding
the plain lock directory, in a public directory (pytest's are 0700) so that the real ``backup``
user (Debian's, uid 34) reaches it. The switch-over runs from this checkout, as root, with a
stand-in mount(8) first on its PATH that runs this checkout's lockfs the way mount.fuse3 runs
/usr/sbin/lockfs: nothing is installed. Races are deterministic where the switch-over can wait
(the ``switch-over-pause`` test hook: it stops at a step, ``backup`` changes the tree, it goes
on); the exchange race while the new mountpoint is made is run with a real spinning process,
several times. Its memory is limited (soft RLIMIT_AS), so a read without bound ends in a
MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    DAEMON_PYTHON,
    REPO,
    Child,
    Daemons,
    as_user,
    daemon_env,
    lockfs_command,
    wait_for,
)
from support.lock_dirs import BACKUP_ID, JOURNAL, plain_lock_dir, snapshot

from lockfs.linux import read_proc_locks
from lockfs.mounts import FSTYPE, entries_at, mount_table
from lockfs.switchover import ASIDE_SUFFIX
from lockfs.testing_hooks import ENV

SECRET = b"root's secret: only root may read this\n"
#: The switch-over's soft address-space limit: far above what it needs, far below a runaway read.
MEMORY_LIMIT = 768 << 20
#: How long a switch-over may take before the test calls it hung.
TIMEOUT = 60
#: The stand-in for mount(8): `mount -t fuse.lockfs lockfs DIR -o OPTIONS` runs this checkout's
#: lockfs as mount.fuse3 would run /usr/sbin/lockfs (anything else goes to the real mount).
STAND_IN_MOUNT = """#!/bin/sh
[ "$1 $2 $3 $5" = "-t fuse.lockfs lockfs -o" ] || exec /bin/mount "$@"
ulimit -S -v unlimited
PYTHONPATH={repo} exec {python} -m lockfs lockfs "$4" -o "$6"
"""
#: Run by `backup` in the parent directory: once the switch-over has moved the old directory
#: aside (argv[3] appears), exchange two names (renameat2 RENAME_EXCHANGE) as fast as it can.
SPINNER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
print("spinning", flush=True)
while not os.path.lexists(sys.argv[3]):
    pass
while True:
    libc.renameat2(-100, a, -100, b, 2)
"""


def _limit_memory() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Site:
    """A PBS-like lock directory that ``backup`` can write, and root's things beside it."""

    daemons: Daemons
    backup: pwd.struct_passwd
    #: Public, root's: /tmp/lockfs-sw-XXXX.
    top: Path
    #: Owned by backup, like /run/proxmox-backup.
    pbs: Path
    #: pbs/locks, as PBS leaves it (support.lock_dirs.plain_lock_dir).
    locks: Path
    #: Root's alone (0700): what backup must never read or change.
    private: Path
    bin: Path

    @property
    def aside(self) -> Path:
        return self.pbs / f".locks{ASIDE_SUFFIX}"

    def start(self, *args: str | os.PathLike[str], pause: str | None = None) -> Child:
        """Start ``lockfs switch-over ARGS`` (pausing at step ``pause``)."""
        env = daemon_env(PATH=f"{self.bin}:{os.environ['PATH']}")
        if pause is not None:
            env[ENV] = f"switch-over-pause={pause}"
        return self.daemons.spawn(
            *lockfs_command("switch-over", *args), env=env, cwd="/", preexec_fn=_limit_memory
        )

    def wait_paused(self, proc: Child, step: str) -> None:
        timer = threading.Timer(TIMEOUT, proc.kill)
        timer.start()
        try:
            line = proc.stderr.readline()
        finally:
            timer.cancel()
        assert line == f"lockfs switch-over: paused at {step}\n", line + proc.stderr.read()

    def finish(self, proc: Child, go_on: bool = False) -> Outcome:
        """Let a paused switch-over go on (``go_on``) and wait for its end; it must not hang."""
        try:
            out, err = proc.communicate("\n" if go_on else None, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the switch-over hung for {TIMEOUT}s:\n{err}") from None
        return Outcome(proc.returncode, out, err)

    def run(self, *args: str | os.PathLike[str]) -> Outcome:
        return self.finish(self.start(*args))

    def run_paused(self, *args: str | os.PathLike[str], step: str, attack: str) -> Outcome:
        """Run the switch-over; at ``step``, ``backup`` runs the shell command ``attack``."""
        proc = self.start(*args, pause=step)
        self.wait_paused(proc, step)
        self.as_backup(attack)
        return self.finish(proc, go_on=True)

    def as_backup(self, script: str) -> str:
        """Run ``sh -c script`` as backup; it must succeed. Its output."""
        done = subprocess.run(
            [*as_user(self.backup), "sh", "-c", script],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=30,
        )
        assert done.returncode == 0, f"backup's {script!r} failed: {done.stderr}"
        return done.stdout

    def backup_reads(self, path: Path) -> bytes:
        """What backup gets reading ``path`` (empty if it may not)."""
        return subprocess.run(
            [*as_user(self.backup), "cat", str(path)], capture_output=True, cwd="/", timeout=30
        ).stdout

    def root_only(self, name: str, content: bytes = SECRET) -> Path:
        """A root 0600 file in root's 0700 directory (outside the tree)."""
        path = self.private / name
        path.write_bytes(content)
        path.chmod(0o600)
        return path

    def mounted(self) -> list[str]:
        """Mountpoints of lockfs mounts in this site or in root's private directory."""
        return [
            e.mountpoint
            for e in mount_table()
            if e.fstype == FSTYPE and e.mountpoint.startswith((f"{self.top}/", f"{self.private}/"))
        ]


@pytest.fixture
def site(daemons: Daemons, tmp_path: Path) -> Iterator[Site]:
    backup = pwd.getpwnam("backup")
    assert (backup.pw_uid, backup.pw_gid) == (BACKUP_ID, BACKUP_ID)
    top = Path(tempfile.mkdtemp(prefix="lockfs-sw-", dir="/tmp"))
    top.chmod(0o755)
    pbs = top / "pbs"
    pbs.mkdir()
    os.chown(pbs, BACKUP_ID, BACKUP_ID)
    locks = plain_lock_dir(pbs)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "mount"
    stand_in.write_text(STAND_IN_MOUNT.format(repo=REPO, python=DAEMON_PYTHON))
    stand_in.chmod(0o755)
    daemons.track(locks)
    site = Site(daemons, backup, top, pbs, locks, private, bin_dir)
    yield site
    _unmount_all(site)
    shutil.rmtree(top)


def assert_nothing_mounted(site: Site) -> None:
    assert site.mounted() == [], "a lockfs mount was left behind"


def assert_clean_refusal(result: Outcome, *names: object) -> None:
    """Refused (exit status 1) with a message, not a crash, naming each of ``names``."""
    assert result.returncode == 1, result
    assert result.stderr.startswith("lockfs switch-over: "), result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr
    for name in names:
        assert str(name) in result.stderr, result.stderr


def test_a_plain_directory_others_can_write_is_switched_over(site: Site) -> None:
    """The way it must keep working: the journal carried with its owner, mode and content,
    the stale lock files and the old tree gone, the mountpoint left changeable."""
    result = site.run(site.locks)
    assert result.returncode == 0, result.stderr
    assert "Carried over: store1/move-journal (62 bytes)" in result.stdout
    assert result.stderr == ""
    (entry,) = entries_at(site.locks)
    assert entry.fstype == FSTYPE
    st = site.locks.stat()
    assert (st.st_ino, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 34, 34, 0o755)
    journal = site.locks / "store1" / "move-journal"
    jst = journal.stat()
    assert (jst.st_uid, jst.st_gid, stat.S_IMODE(jst.st_mode)) == (34, 34, 0o640)
    assert site.backup_reads(journal) == JOURNAL
    assert sorted(os.listdir(site.pbs)) == ["locks"]
    site.daemons.end(site.locks, site.daemons.daemon_pid(site.locks), "umount")
    # The mountpoint below is a plain directory again: backup may rename it (nothing pinned).
    site.as_backup(f"mv {site.locks} {site.pbs}/renamed && mv {site.pbs}/renamed {site.locks}")


def test_check_only_tells(site: Site) -> None:
    """``--check`` tells what would be carried over and changes nothing."""
    before = snapshot(site.pbs)
    result = site.run(site.locks, "--check")
    assert result.returncode == 0, result.stderr
    assert "would carry over: store1/move-journal; leave behind 3 empty lock files" in (
        result.stdout
    )
    assert snapshot(site.pbs) == before
    assert_nothing_mounted(site)


def test_a_failure_after_the_move_puts_everything_back(site: Site) -> None:
    """The journal cannot be carried (max_depth=1 refuses its directory level): the new mount
    and its mountpoint go, and the old directory, with its inodes, is back."""
    before = snapshot(site.pbs)
    result = site.run(site.locks, "--options", "max_depth=1")
    assert_clean_refusal(result, "carrying the data into the new mount failed")
    assert "the old directory is back in place; nothing was changed." in result.stderr
    assert_nothing_mounted(site)
    assert snapshot(site.pbs) == before


def test_a_lock_taken_after_the_check_is_found_by_the_second_check(site: Site) -> None:
    """A process that locks a file once everything was checked is found after the move
    aside; the old directory goes back, nothing is mounted."""
    proc = site.start(site.locks, pause="checked")
    site.wait_paused(proc, "checked")
    holder = site.daemons.spawn("flock", site.locks / "store1" / "vm" / "100.lck", "cat")
    wait_for(lambda: _locked(site.locks / "store1" / "vm" / "100.lck"), 10, "flock's lock")
    result = site.finish(proc, go_on=True)
    assert_clean_refusal(result, "is in use", f"pid {holder.pid} (flock) holds an exclusive")
    assert result.stderr.rstrip().endswith(
        "run the switch-over again. The old directory is back in place; nothing was changed."
    ), result.stderr
    assert_nothing_mounted(site)
    assert (site.locks / "store1" / "move-journal").read_bytes() == JOURNAL
    assert holder.poll() is None


def _locked(path: Path) -> bool:
    """Whether /proc/locks shows a lock on ``path``."""
    ino = path.stat().st_ino
    return any(lock.ino == ino for lock in read_proc_locks(path.stat().st_dev))


def test_a_journal_swapped_for_a_symlink_is_not_followed(site: Site) -> None:
    """Attack: once the tree is aside and checked, backup replaces move-journal by a symlink
    to a root-only file. Root must not copy it into the mount (backup would read it there)."""
    secret = site.root_only("secret")
    journal = site.aside / "store1" / "move-journal"
    result = site.run_paused(
        site.locks, step="before-copy", attack=f"rm {journal} && ln -s {secret} {journal}"
    )
    assert SECRET not in site.backup_reads(site.locks / "store1" / "move-journal")
    assert_clean_refusal(result, site.locks / "store1" / "move-journal", "symlink")
    assert "the old directory is back" in result.stderr
    assert_nothing_mounted(site)
    assert os.readlink(site.locks / "store1" / "move-journal") == str(secret)
    assert secret.read_bytes() == SECRET


def test_a_directory_swapped_for_a_symlink_is_not_followed(site: Site) -> None:
    """Attack: backup replaces the journal's directory by a symlink to a root-only directory
    holding a file of the same name."""
    elsewhere = site.private / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "move-journal").write_bytes(SECRET)
    store1 = site.aside / "store1"
    result = site.run_paused(
        site.locks,
        step="before-copy",
        attack=f"mv {store1} {site.aside}/moved && ln -s {elsewhere} {store1}",
    )
    assert SECRET not in site.backup_reads(site.locks / "store1" / "move-journal")
    assert_clean_refusal(result, site.locks / "store1", "symlink")
    assert_nothing_mounted(site)
    assert (site.locks / "moved" / "move-journal").read_bytes() == JOURNAL


@pytest.mark.parametrize("what", ["symlink to /dev/zero", "symlink to a FIFO", "FIFO"])
def test_endless_and_blocking_files_are_refused(site: Site, what: str) -> None:
    """Attack: the journal becomes something that never ends or blocks the reader: a clear
    refusal, no hang, no MemoryError."""
    journal = site.aside / "store1" / "move-journal"
    fifo = site.pbs / "fifo"
    attack = {
        "symlink to /dev/zero": f"rm {journal} && ln -s /dev/zero {journal}",
        "symlink to a FIFO": f"mkfifo {fifo} && rm {journal} && ln -s {fifo} {journal}",
        "FIFO": f"rm {journal} && mkfifo {journal}",
    }[what]
    result = site.run_paused(site.locks, step="before-copy", attack=attack)
    assert_clean_refusal(result, site.locks / "store1" / "move-journal", what.split()[0])
    assert_nothing_mounted(site)


@pytest.mark.parametrize("target", ["file", "directory"])
def test_an_exchange_spinning_during_the_switch_over_changes_nothing_outside(
    site: Site, target: str
) -> None:
    """Attack: from the moment the old directory is aside, backup exchanges `locks` with a
    symlink to a root 0600 file (or a root 0700 empty directory) outside the tree as fast as it
    can, while the switch-over makes the new mountpoint and mounts; five times. Root never
    changes the owner or mode of what the symlink points to, never mounts there, and the
    journal is never lost."""
    if target == "file":
        canary = site.root_only("canary")
    else:
        canary = site.private / "canary"
        canary.mkdir(mode=0o700)
    before = canary.lstat()
    outcomes = []
    for _ in range(5):
        site.as_backup(f"ln -s {canary} {site.pbs}/evil")
        spinner = site.daemons.spawn(
            *as_user(site.backup),
            "/usr/bin/python3",
            "-c",
            SPINNER,
            "evil",
            "locks",
            site.aside.name,
            cwd=site.pbs,
        )
        assert spinner.stdout.readline() == "spinning\n"
        try:
            result = site.run(site.locks)
        finally:
            spinner.send_signal(signal.SIGKILL)
            spinner.wait()
        outcomes.append(result.returncode)
        print(result.stderr.strip() or result.stdout.strip())
        after = canary.lstat()
        assert (after.st_uid, after.st_gid, after.st_mode) == (0, 0, before.st_mode), result
        assert site.mounted() in ([], [str(site.locks)]), (site.mounted(), result)
        if target == "file":
            assert canary.read_bytes() == SECRET
        assert "Traceback" not in result.stderr, result.stderr
        assert _journal_somewhere(site), result
        _fresh_lock_dir(site)
    print(f"exit statuses of the five switch-overs: {outcomes}")


def _journal_somewhere(site: Site) -> bool:
    """The journal is in the mount, the old tree or the tree moved aside (under any of the
    names the attacker's exchange may have left it)."""
    for top in (site.locks, site.pbs / "evil", site.aside):
        if top.is_symlink() or not top.is_dir():
            continue
        journal = top / "store1" / "move-journal"
        if not journal.is_symlink() and journal.is_file() and journal.read_bytes() == JOURNAL:
            return True
    return False


def _unmount_all(site: Site) -> None:
    """Unmount every lockfs in the site (plainly: nothing may still be open there)."""
    for point in site.mounted():
        assert site.daemons.run("umount", point).returncode == 0, f"umount {point}"


def _fresh_lock_dir(site: Site) -> None:
    """Unmount what the last try mounted and start again from a plain lock directory."""
    _unmount_all(site)
    for entry in os.scandir(site.pbs):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    plain_lock_dir(site.pbs)


def test_a_symlink_for_the_directory_is_refused(site: Site) -> None:
    """Attack: backup points `locks2` at a directory of root's; `switch-over locks2` must not
    mount over it, copy from it or empty it. A path through a symlink is refused too."""
    rootdir = site.private / "rootdir"
    (rootdir / "store1").mkdir(parents=True, mode=0o700)
    (rootdir / "store1" / "move-journal").write_bytes(SECRET)
    (rootdir / "stale").touch()
    before = snapshot(rootdir)
    site.as_backup(f"ln -s {rootdir} {site.pbs}/locks2")
    result = site.run(site.pbs / "locks2")
    assert_clean_refusal(result, site.pbs / "locks2", "symlink")
    assert snapshot(rootdir) == before
    assert_nothing_mounted(site)
    (site.top / "alias").symlink_to(site.pbs)
    result = site.run(site.top / "alias" / "locks")
    assert_clean_refusal(result, site.top / "alias", "symlink")
    assert_nothing_mounted(site)


def test_a_parent_others_could_replace_is_refused(site: Site) -> None:
    """If backup owned a directory above the lock directory's parent (here the one holding
    it, in sticky /tmp), it could swap the parent for a symlink after the checks: refused
    before anything changes."""
    before = snapshot(site.pbs)
    os.chown(site.top, BACKUP_ID, BACKUP_ID)
    result = site.run(site.locks)
    assert_clean_refusal(result, f"{site.top} can be renamed or replaced by uid 34")
    assert snapshot(site.pbs) == before
    assert_nothing_mounted(site)


def test_the_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    site: Site,
) -> None:
    """Attack: everything checked, backup replaces `locks` by a symlink to a directory of
    root's before the switch-over moves it aside."""
    rootdir = site.private / "rootdir"
    (rootdir / "store1").mkdir(parents=True, mode=0o700)
    (rootdir / "store1" / "move-journal").write_bytes(SECRET)
    before = snapshot(rootdir)
    result = site.run_paused(
        site.locks,
        step="checked",
        attack=f"mv {site.locks} {site.pbs}/real && ln -s {rootdir} {site.locks}",
    )
    assert_clean_refusal(result, site.locks, "replaced")
    assert snapshot(rootdir) == before
    assert_nothing_mounted(site)
    assert os.readlink(site.locks) == str(rootdir)
    assert (site.pbs / "real" / "store1" / "move-journal").read_bytes() == JOURNAL


def test_data_beyond_max_file_size_is_refused(site: Site) -> None:
    """A journal over max_file_size is refused before anything changes."""
    before = snapshot(site.pbs)
    result = site.run(site.locks, "--options", "max_file_size=16")
    assert_clean_refusal(result, site.locks / "store1" / "move-journal", "max_file_size")
    assert snapshot(site.pbs) == before
    assert_nothing_mounted(site)


def test_data_grown_beyond_max_file_size_is_read_no_further(site: Site) -> None:
    """Attack: once the tree is checked, backup grows the journal (sparse) to 8 GiB: the
    switch-over reads no more than max_file_size of it and refuses."""
    journal = site.aside / "store1" / "move-journal"
    result = site.run_paused(
        site.locks,
        "--options",
        "max_file_size=1M",
        step="before-copy",
        attack=f"truncate -s 8G {journal}",
    )
    assert_clean_refusal(result, site.locks / "store1" / "move-journal", "max_file_size")
    assert_nothing_mounted(site)
    assert (site.locks / "store1" / "move-journal").stat().st_size == 8 << 30


def test_an_old_tree_that_cannot_be_removed_is_a_warning(site: Site) -> None:
    """The switch-over is done once the data is in the mount: a stale lock file that cannot be
    removed (immutable) leaves the old tree with a warning that says where, exit status 0."""
    stale = site.locks / "store1" / "vm" / "100.lck"
    subprocess.run(["chattr", "+i", stale], check=True)
    try:
        result = site.run(site.locks)
        assert result.returncode == 0, result.stderr
        assert "Carried over: store1/move-journal" in result.stdout
        assert "warning" in result.stderr and str(site.aside) in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert (site.locks / "store1" / "move-journal").read_bytes() == JOURNAL
        assert (site.aside / "store1" / "vm" / "100.lck").exists()
    finally:
        subprocess.run(["chattr", "-i", site.aside / "store1" / "vm" / "100.lck"], check=False)
        subprocess.run(["chattr", "-i", stale], check=False)


def test_site_helpers_run_as_backup(site: Site) -> None:
    """The premise of the attacks: backup can write the parent and the tree, and cannot read
    root's files."""
    secret = site.root_only("premise")
    assert site.backup_reads(secret) == b""
    site.as_backup(f"touch {site.pbs}/mine {site.locks}/store1/mine")
    assert (site.pbs / "mine").stat().st_uid == BACKUP_ID
