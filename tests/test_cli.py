"""The ``lockfs`` command on real mounts: readiness, failures, exit status and shutdown.

Daemonized mounts (``lockfs DIR``) use the ``daemons`` fixture, which makes the test process
the daemons' subreaper so their exit status can be checked; foreground mounts (``lockfs -f``)
use ``make_mount``. Every mount is removed in teardown, even when a test fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    EXIT_BUSY,
    Daemons,
    MakeMount,
    as_user,
    daemon_env,
    errno_of,
    lockfs_command,
    release,
    wait_for,
)

from lockfs.cli import COMMANDS
from lockfs.control import query_status, socket_path
from lockfs.mounts import FSTYPE, entries_at, is_lockfs_mounted, mount_table


def mount_ids(path: Path) -> list[int]:
    return [entry.mount_id for entry in entries_at(path)]


def assert_serving(path: Path) -> None:
    """The mount answers right now (statvfs is never answered from a cache)."""
    assert is_lockfs_mounted(path)
    assert os.stat(path).st_ino == 1
    os.statvfs(path)


# --- Readiness and the arguments mount.fuse3 passes ------------------------------------------


@pytest.mark.parametrize("end", ["umount", "fusermount3", "SIGTERM"])
def test_returns_once_the_mount_answers_and_the_daemon_exits_0(daemons: Daemons, end: str) -> None:
    path = daemons.mountpoint()
    result = daemons.lockfs(path, "-o", "uid=backup,gid=backup,mode=0750")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # No waiting: the command returned only once the mount served requests.
    assert_serving(path)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (34, 34)
    pid = daemons.daemon_pid(path)
    daemons.end(path, pid, end)
    assert mount_ids(path) == []


def test_accepts_what_mount_fuse3_passes(daemons: Daemons) -> None:
    """mount.fuse3 runs ``lockfs SOURCE MOUNTPOINT -o OPTIONS`` (no SOURCE when it is empty)."""
    path = daemons.mountpoint()
    result = daemons.lockfs("lockfs", path, "-o", "rw,nosuid,nodev,noexec,uid=34,gid=34,mode=0755")
    assert result.returncode == 0, result.stderr
    (entry,) = entries_at(path)
    assert (entry.fstype, entry.source) == (FSTYPE, "lockfs")
    assert {"rw", "nosuid", "nodev", "noexec"} <= set(entry.options.split(","))
    assert daemons.run("umount", path).returncode == 0

    result = daemons.lockfs(path, "-o", "rw,dev,suid")
    assert result.returncode == 0, result.stderr
    (entry,) = entries_at(path)
    assert "nosuid" not in entry.options.split(",") and "nodev" not in entry.options.split(",")


def test_mount_fuse3_runs_lockfs_and_mounts(daemons: Daemons) -> None:
    """The real mount.fuse3, with ``lockfs`` found on the PATH it passes to ``/bin/sh -c``:
    it always adds ``-o`` (here just ``dev,suid``), even for a SOURCE named like a command."""
    bin_dir = daemons.tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "lockfs"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(lockfs_command())} "$@"\n')
    wrapper.chmod(0o755)
    env = {**daemon_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for source in ("lockfs", "status"):
        path = daemons.mountpoint()
        result = daemons.run("mount.fuse3", source, path, "-t", "fuse.lockfs", env=env)
        assert result.returncode == 0, result.stderr
        (entry,) = entries_at(path)
        assert (entry.fstype, entry.source) == (FSTYPE, source)
        assert_serving(path)


def test_mount_command(daemons: Daemons) -> None:
    """``lockfs mount [SOURCE] MOUNTPOINT`` mounts without -o; options may come first."""
    path = daemons.mountpoint()
    result = daemons.lockfs("mount", "store-locks", path)
    assert (result.returncode, result.stderr) == (0, "")
    (entry,) = entries_at(path)
    assert (entry.fstype, entry.source) == (FSTYPE, "store-locks")
    assert daemons.run("umount", path).returncode == 0
    result = daemons.lockfs("-o", "mode=0700", path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["frobnicate", "{dir}"], "unknown command 'frobnicate'"),
        (["lock", "{dir}"], "unknown command 'lock' (did you mean 'locks'?)"),
        (["stauts", "{dir}", "--json"], "unknown command 'stauts' (did you mean 'status'?)"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["-f", "frobnicate"], "unknown command 'frobnicate'"),
        (["{dir}", "{dir}"], "SOURCE MOUNTPOINT without -o is not a mount"),
        (["--json", "status", "{dir}"], "the command 'status' must come first"),
    ],
    ids=["unknown", "lock", "stauts", "word-alone", "word-with-f", "two-paths", "late-command"],
)
def test_a_mistyped_command_never_mounts(daemons: Daemons, words: list[str], message: str) -> None:
    """Refused with a usage error (exit status 2), even where the typed word is a directory
    in the working directory, and nothing is mounted anywhere."""
    path = daemons.mountpoint()
    (daemons.tmp_path / "lock").mkdir()  # `lockfs lock DIR` must not mount at ./lock either
    daemons.track(daemons.tmp_path / "lock")
    args = [word.format(dir=path) for word in words]
    result = daemons.run(*lockfs_command(*args), env=daemon_env(), timeout=20)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: lockfs COMMAND"), result.stderr
    assert f"lockfs: error: {message}" in result.stderr
    assert result.stdout == ""
    with open("/proc/self/mountinfo") as mountinfo:
        mounts = mountinfo.read()
    assert f" {path} " not in mounts and f" {daemons.tmp_path / 'lock'} " not in mounts
    assert not [e for e in mount_table() if e.fstype == FSTYPE and e.source in words]


def test_help_lists_every_command_in_plain_text(daemons: Daemons) -> None:
    result = daemons.lockfs("--help")
    assert result.returncode == 0
    listed = {
        line.split()[0]
        for line in result.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()
    }
    assert listed == set(COMMANDS) >= {"mount", "status", "locks", "metrics"}
    for command in COMMANDS:
        result = daemons.lockfs(command, "--help")
        assert result.returncode == 0 and f"usage: lockfs {command}" in result.stdout
        assert "`" not in result.stdout, result.stdout


def test_relative_mountpoint(daemons: Daemons) -> None:
    path = daemons.mountpoint()
    result = daemons.run(*lockfs_command(path.name), cwd=path.parent, env=daemon_env())
    assert result.returncode == 0, result.stderr
    assert_serving(path)
    assert entries_at(path)[-1].mountpoint == str(path)


def test_concurrent_starts_mount_once(daemons: Daemons) -> None:
    """The mountpoint claim: of several lockfs started at once, exactly one mounts."""
    path = daemons.mountpoint()
    procs = [daemons.spawn(*lockfs_command(path), env=daemon_env()) for _ in range(4)]
    results = [(p.wait(timeout=30), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1], results
    assert all("already a lockfs mount" in err for code, err in results if code), results
    assert [e.fstype for e in entries_at(path)] == [FSTYPE]
    assert_serving(path)


# --- Failures: non-zero, a clear message, and no mount left behind ----------------------------


def _file(daemons: Daemons) -> Path:
    path = daemons.mountpoint()
    path.rmdir()
    path.touch()
    return path


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (Daemons.missing_mountpoint, [], "does not exist"),
        (_file, [], "is not a directory"),
        (Daemons.non_empty_mountpoint, [], "is not empty: lock files in it could be held"),
        (Daemons.mounted_mountpoint, [], "is already a lockfs mount"),
        (
            Daemons.dead_mountpoint,
            [],
            "is a dead lockfs mount: its daemon is gone and it answers ENOTCONN",
        ),
        (Daemons.mountpoint, ["-o", "uid=backup,bogus"], "unknown mount option: bogus"),
        (Daemons.mountpoint, ["-o", "mode=0999"], "mode=0999: not an octal number"),
        (Daemons.mountpoint, ["-o", "auto_unmount"], "auto_unmount would unmount"),
        (Daemons.mountpoint, ["-f", "-o", "nonempty"], "never mounts over a non-empty"),
    ],
    ids=[
        "missing", "file", "not-empty", "mounted", "dead", "unknown-option", "bad-mode",
        "auto_unmount", "nonempty",
    ],
)  # fmt: skip
def test_failures(
    daemons: Daemons, make: Callable[[Daemons], Path], args: list[str], message: str
) -> None:
    path = make(daemons)
    before = mount_ids(path)
    result = daemons.lockfs(path, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("lockfs: ") and message in result.stderr, result.stderr
    assert mount_ids(path) == before


def test_usage_error(daemons: Daemons) -> None:
    result = daemons.lockfs()
    assert result.returncode == 2 and "usage: lockfs" in result.stderr


def test_no_dev_fuse(daemons: Daemons) -> None:
    """Without /dev/fuse (here: hidden in a private mount namespace) nothing is mounted."""
    path = daemons.mountpoint()
    script = 'mount -t tmpfs none /dev && exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    result = daemons.run(*cmd, *lockfs_command(path), env=daemon_env())
    assert result.returncode == 1, result.stderr
    expected = "lockfs: cannot open /dev/fuse: No such file or directory: load the fuse module"
    assert expected in result.stderr
    assert mount_ids(path) == []


def test_an_ordinary_user_is_told_that_mounting_needs_root(
    daemons: Daemons, second_user: pwd.struct_passwd
) -> None:
    """As a real unprivileged user: the message says what is wrong (not the fuse module)."""
    path = Path(tempfile.mkdtemp(prefix="lockfs-user-", dir="/tmp"))
    daemons.track(path)
    os.chown(path, second_user.pw_uid, second_user.pw_gid)
    try:
        forms: tuple[list[str | os.PathLike[str]], ...] = (
            ["mount", path],
            [path, "-f"],
            ["lockfs", path, "-o", "rw,nosuid,nodev"],
        )
        for args in forms:
            cmd = [*as_user(second_user), *lockfs_command(*args)]
            result = daemons.run(*cmd, env=daemon_env(), timeout=20)
            assert result.returncode == 1, result.stderr
            expected = (
                f"lockfs: mounting lockfs needs root (CAP_SYS_ADMIN), and this is uid "
                f"{second_user.pw_uid}."
            )
            assert result.stderr.startswith(expected), result.stderr
            assert "fusermount3" in result.stderr and "fuse module" not in result.stderr
            assert mount_ids(path) == []
    finally:
        path.rmdir()


def test_drop_privileges_descriptor_is_refused(daemons: Daemons) -> None:
    """mount.fuse3's drop_privileges hands over /dev/fd/N instead of a mountpoint."""
    result = daemons.lockfs("lockfs", "/dev/fd/3", "-o", "rw")
    assert result.returncode == 1
    assert "drop_privileges): not supported" in result.stderr


@pytest.mark.parametrize("fault", ["kill-after-mount", "kill-when-ready"])
def test_daemon_death_during_start_leaves_no_mount(daemons: Daemons, fault: str) -> None:
    path = daemons.mountpoint()
    result = daemons.lockfs(path, LOCKFS_TEST_HOOKS=f"startup={fault}")
    assert result.returncode == 1
    expected = "was killed by SIGKILL" if fault == "kill-after-mount" else "does not answer"
    assert expected in result.stderr, result.stderr
    assert mount_ids(path) == []
    # The directory is usable again at once.
    assert daemons.lockfs(path).returncode == 0
    assert_serving(path)


# --- Shutdown: fail closed -------------------------------------------------------------------


def test_sigterm_during_start_is_acted_on_once_serving(daemons: Daemons) -> None:
    """A SIGTERM between mount(2) and the signal handler is held back, not fatal: the daemon
    comes up, then unmounts cleanly and exits 0 (default handling would leave a dead mount)."""
    path = daemons.mountpoint()
    env = {**daemon_env(), "LOCKFS_TEST_HOOKS": "startup=term-after-mount"}
    proc = daemons.spawn(*lockfs_command(path, "-f"), env=env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "SIGTERM received: unmounting" in err and "stopped" in err
    assert mount_ids(path) == []


@pytest.mark.parametrize("end", ["SIGTERM", "SIGINT", "umount", "fusermount3"])
def test_foreground_exit_status_0(make_mount: MakeMount, end: str) -> None:
    mnt = make_mount()
    if end.startswith("SIG"):
        mnt.proc.send_signal(getattr(signal, end))
    else:
        cmd: list[str | os.PathLike[str]] = (
            ["umount", mnt.path] if end == "umount" else ["fusermount3", "-u", mnt.path]
        )
        subprocess.run(cmd, check=True)
    assert mnt.proc.wait(timeout=10) == 0, mnt.log_text()
    assert not is_lockfs_mounted(mnt.path)
    assert "stopped" in mnt.log_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_a_lock_is_held_keeps_serving(
    make_mount: MakeMount, signum: signal.Signals
) -> None:
    mnt = make_mount()
    lock = mnt / "store1" / "vm-100"
    lock.parent.mkdir()
    holder, _ = mnt.hold("pbs", lock)
    mnt.proc.send_signal(signum)
    wait_for(lambda: "not unmounting" in mnt.log_text(), what="the refusal to be logged")
    assert "it is busy (" in mnt.log_text()
    assert mnt.proc.poll() is None
    assert_serving(mnt.path)
    assert mnt.attempt("pbs", lock) == EXIT_BUSY  # the lock is still held, and still exclusive
    release(holder)
    mnt.proc.send_signal(signal.SIGTERM)
    assert mnt.proc.wait(timeout=10) == 0, mnt.log_text()
    assert not is_lockfs_mounted(mnt.path)


def test_plain_umount_is_refused_while_a_lock_is_held(make_mount: MakeMount) -> None:
    mnt = make_mount()
    holder, _ = mnt.hold("pbs", mnt / "lock")
    result = subprocess.run(["umount", mnt.path], capture_output=True, text=True)
    assert result.returncode != 0 and "target is busy" in result.stderr
    assert_serving(mnt.path)
    assert mnt.attempt("pbs", mnt / "lock") == EXIT_BUSY
    release(holder)
    subprocess.run(["umount", mnt.path], check=True)
    assert mnt.proc.wait(timeout=10) == 0


def test_lazy_umount_breaks_mutual_exclusion(make_mount: MakeMount) -> None:
    """Why ``umount -l`` is documented as unsafe: the old holder keeps its lock on the
    detached mount while a new caller takes "the same" lock in the directory underneath."""
    mnt = make_mount()
    holder, _ = mnt.hold("pbs", mnt / "lock")
    subprocess.run(["umount", "-l", mnt.path], check=True)
    assert not is_lockfs_mounted(mnt.path)
    assert mnt.attempt("pbs", mnt / "lock") == 0  # a second holder of the same lock
    (mnt / "lock").unlink()  # a plain file in the directory underneath
    assert mnt.proc.poll() is None  # still serving the old holder
    release(holder)
    assert mnt.proc.wait(timeout=10) == 0, mnt.log_text()


def test_a_lazily_detached_daemon_leaves_a_newer_mount_alone(
    make_mount: MakeMount, daemons: Daemons
) -> None:
    """After ``umount -l`` and a new mount at the same place, SIGTERM to the old daemon and
    its exit must not unmount the new one (the daemon knows its own mount ID)."""
    old = make_mount()
    daemons.track(old.path)
    holder, _ = old.hold("pbs", old / "lock")
    subprocess.run(["umount", "-l", old.path], check=True)
    assert daemons.lockfs(old.path).returncode == 0
    new_ids = mount_ids(old.path)
    old.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "was unmounted lazily" in old.log_text(), what="the old daemon's answer")
    release(holder)
    assert old.proc.wait(timeout=10) == 0, old.log_text()
    assert mount_ids(old.path) == new_ids
    assert_serving(old.path)


@pytest.mark.kills_daemon
def test_sigkill_leaves_enotconn_until_umount(make_mount: MakeMount, daemons: Daemons) -> None:
    mnt = make_mount()
    daemons.track(mnt.path)
    lock = mnt / "lock"
    holder, _ = mnt.hold("pbs", lock)
    mnt.proc.kill()
    mnt.proc.wait(timeout=10)
    # Fail closed: the mount stays, nobody gets a second copy of the held lock.
    assert is_lockfs_mounted(mnt.path)
    assert errno_of(os.statvfs, mnt.path) == errno.ENOTCONN
    assert errno_of(os.open, lock, os.O_RDWR) == errno.ENOTCONN
    again = daemons.lockfs(mnt.path)
    assert again.returncode == 1 and "dead lockfs mount" in again.stderr
    # Recovery as documented: stop the holders, umount, mount again.
    busy = subprocess.run(["umount", mnt.path], capture_output=True, text=True)
    assert busy.returncode != 0 and "target is busy" in busy.stderr
    holder.kill()
    holder.wait(timeout=10)
    subprocess.run(["umount", mnt.path], check=True)
    assert not is_lockfs_mounted(mnt.path)
    assert os.listdir(mnt.path) == []
    result = daemons.lockfs(mnt.path)
    assert result.returncode == 0, result.stderr
    assert_serving(mnt.path)
    pid = daemons.daemon_pid(mnt.path)
    subprocess.run(["umount", mnt.path], check=True)
    assert daemons.wait_exit(pid) == 0


# --- Control sockets: a killed daemon's is removed, a live one's never ------------------------


def socket_of(path: Path) -> str:
    return socket_path(os.path.realpath(path))


def is_refused(sock_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(sock_path)
        except ConnectionRefusedError:
            return True
    return False


def test_a_new_daemon_removes_stale_control_sockets_only(daemons: Daemons) -> None:
    live = daemons.mounted_mountpoint()
    live_pid = daemons.daemon_pid(live)
    dead = daemons.dead_mountpoint()
    assert is_refused(socket_of(dead))  # SIGKILL left its socket behind
    # A socket whose owner closed it, and one that listens but is never answered.
    closed_dir, busy_dir = daemons.mountpoint(), daemons.mountpoint()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as closed:
        closed.bind(socket_of(closed_dir))
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        busy.bind(socket_of(busy_dir))
        busy.listen(1)
        assert is_refused(socket_of(closed_dir))

        daemons.mounted_mountpoint()  # the next daemon to start cleans up

        assert not os.path.exists(socket_of(dead))
        assert not os.path.exists(socket_of(closed_dir))
        assert os.path.exists(socket_of(busy_dir))
        assert query_status(str(live), timeout=5).pid == live_pid
    finally:
        busy.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_of(busy_dir))


@pytest.mark.kills_daemon
def test_fixture_teardown_removes_the_socket_of_a_killed_daemon(
    make_mount: MakeMount,
) -> None:
    mnt = make_mount()
    sock = socket_of(mnt.path)
    mnt.proc.kill()
    mnt.proc.wait(timeout=10)
    assert is_refused(sock)
    mnt.stop()
    assert not os.path.exists(sock) and not is_lockfs_mounted(mnt.path)
