"""The self-healing watcher (lockfs.heal) on real mounts, without systemd: it sees a killed
daemon at once and a stopped one after hang_timeout, fails it closed, stops the units that
require the mount, and asks for the remount only once no process uses the dead mount any more
(in any mount namespace, by descriptor, working directory or mapping). systemctl is a recording
stand-in here; tests/test_system_heal.py runs the same watcher under systemd as PID 1."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import Daemons, errno_of, lockfs_command, wait_for

from lockfs import mount_users
from lockfs.control import escape_path
from lockfs.heal import DaemonProcess, Watcher, canonical, unit_for
from lockfs.heal_state import HealState, Pending, StateFile
from lockfs.health import POLL_INTERVAL, WINDOW, Health, Sample, running_grace
from lockfs.mounts import entries_at, is_lockfs_mounted
from lockfs.rootfiles import UnsafePath
from lockfs.systemd_units import Systemd

ABORTED = {errno.ENOTCONN, errno.ECONNABORTED}
UNIT = "run-proxmox\\x2dbackup-locks.mount"


class FakeSystemctl:
    """Answers systemctl like systemd for a mount unit that two services require, and records
    every call with its time."""

    def __init__(self, active: Sequence[str] = ("api.service", "proxy.service")) -> None:
        self.required_by = ["api.service", "proxy.service", "idle.service"]
        self.bound_by = ["lockfs-heal.service"]
        self.active = set(active)
        self.calls: list[tuple[float, list[str]]] = []

    def __call__(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(cmd[1:])
        self.calls.append((time.monotonic(), args))
        out = ""
        if args[:3] == ["show", "-P", "RequiredBy"]:
            out = " ".join(self.required_by)
        elif args[:3] == ["show", "-P", "BoundBy"]:
            out = " ".join(self.bound_by)
        elif args[0] == "is-active":
            out = "\n".join("active" if u in self.active else "inactive" for u in args[1:])
        elif args[0] == "stop":
            self.active -= set(args[1:])
        elif args[0] == "start":
            self.active |= set(args[2:])
        return subprocess.CompletedProcess(cmd, 0, out + "\n", "")

    def actions(self) -> list[list[str]]:
        """The calls that change something (stop, restart, reset-failed, start)."""
        verbs = ("stop", "restart", "reset-failed", "start")
        return [args for _, args in self.calls if args[0] in verbs]

    def when(self, verb: str) -> float:
        return next(at for at, args in self.calls if args[0] == verb)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def watcher_of(path: Path, systemctl: FakeSystemctl, state_dir: Path) -> Watcher:
    mountpoint = canonical(str(path))
    return Watcher(mountpoint, Systemd(UNIT, systemctl), StateFile(mountpoint, str(state_dir)))


def observe_until(watcher: Watcher, wanted: Health, timeout: float) -> tuple[Sample, list[Health]]:
    """Let the watcher look every POLL_INTERVAL (acting on nothing) until it judges
    ``wanted``; that sample, and the verdicts."""
    start, seen = time.monotonic(), []
    while True:
        health, sample = watcher.observe()
        seen.append(health)
        if health is wanted:
            return sample, seen
        assert time.monotonic() - start < timeout, seen
        time.sleep(POLL_INTERVAL)


def start_daemon(daemons: Daemons, path: Path, *options: str) -> int:
    result = daemons.lockfs(path, *(("-o", ",".join(options)) if options else ()))
    assert result.returncode == 0, result.stderr
    return daemons.daemon_pid(path)


def statfs_count(daemons: Daemons, path: Path) -> int:
    requests = json.loads(daemons.lockfs("status", path, "--json").stdout)["requests"]
    return int(requests.get("statfs", 0))


def test_a_live_daemon_is_watched_through_its_socket_and_pidfd(
    daemons: Daemons, state_dir: Path
) -> None:
    path = daemons.mountpoint()
    pid = start_daemon(daemons, path, "hang_timeout=7")
    statfs_before = statfs_count(daemons, path)
    watcher = watcher_of(path, FakeSystemctl(), state_dir)
    assert [watcher.step() for _ in range(3)] == [Health.ALIVE] * 3
    assert watcher.daemon is not None and watcher.daemon.pid == pid
    assert watcher.judge.hang_timeout == 7
    assert watcher.entry is not None and watcher.entry == entries_at(path)[-1]
    # A daemon that answers its socket is never probed through its mount.
    assert statfs_count(daemons, path) == statfs_before


@pytest.mark.kills_daemon
def test_kill_9_is_seen_at_once_and_healed_once_nothing_uses_the_mount(
    daemons: Daemons, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lockfs.heal")
    path = daemons.mountpoint()
    pid = start_daemon(daemons, path)
    systemctl = FakeSystemctl()
    watcher = watcher_of(path, systemctl, state_dir)
    assert watcher.step() is Health.ALIVE
    holder, _ino = daemons.hold("pbs", path / "store1" / "vm-100")
    os.kill(pid, signal.SIGKILL)
    assert daemons.wait_exit(pid) == -signal.SIGKILL
    killed = time.monotonic()
    health, sample = watcher.observe()
    assert health is Health.DEAD  # the pidfd: no timeout involved
    assert time.monotonic() - killed < 1.5
    healing = threading.Thread(target=watcher.act, args=(health, sample))
    healing.start()
    # The services are stopped, but the remount waits for the holder outside them.
    wait_for(lambda: "still use the dead mount" in caplog.text or None, 10, "the waiting line")
    assert systemctl.actions() == [["stop", "api.service", "proxy.service"]]
    assert f"pid {holder.pid} (" in caplog.text and ", fd " in caplog.text
    time.sleep(1.5)
    assert healing.is_alive() and systemctl.actions() == [["stop", "api.service", "proxy.service"]]
    assert is_lockfs_mounted(path) and errno_of(os.statvfs, path) == errno.ENOTCONN
    released = time.monotonic()
    holder.kill()
    holder.wait()
    healing.join(10)
    assert not healing.is_alive()
    assert systemctl.actions() == [
        ["stop", "api.service", "proxy.service"],
        ["restart", "--no-block", UNIT],
        ["reset-failed", "api.service", "proxy.service"],
        ["start", "--no-block", "api.service", "proxy.service"],
    ]
    assert systemctl.when("restart") >= released
    state = StateFile(canonical(str(path)), str(state_dir)).load()
    assert state.pending is not None and state.pending.units == ["api.service", "proxy.service"]
    assert len(state.failures) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "lockfs.heal"]
    assert any(f"(pid {pid}) is gone: its mount answers ENOTCONN" in line for line in lines)
    assert any("failure 1 of at most 3 in 10 minutes" in line for line in lines)

    # What systemd's restart does: the dead mount goes (nothing uses it), a new one comes.
    assert daemons.run("umount", path).returncode == 0
    new_pid = start_daemon(daemons, path)
    systemctl.calls.clear()
    assert watcher.step() is Health.ALIVE
    assert watcher.daemon is not None and watcher.daemon.pid == new_pid
    assert any("serves again (daemon pid" in r.getMessage() for r in caplog.records)
    # The units' queued jobs started them (the stand-in says so): nothing to start again.
    assert systemctl.actions() == []
    assert StateFile(canonical(str(path)), str(state_dir)).load().pending is None


HOLD_IN_OWN_NAMESPACE = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
    """
)
MAP_AND_CLOSE = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(sys.argv[1], os.O_RDONLY)
    address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)  # the mapping alone keeps the file (Python's mmap would keep a dup)
    print("mapped", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.kills_daemon
def test_every_user_of_a_dead_mount_is_found_without_touching_it(daemons: Daemons) -> None:
    """A descriptor, a working directory, a mapping without a descriptor, and a lock held in a
    private mount namespace (which the kernel's umount check does not cover)."""
    path = daemons.mountpoint()
    pid = start_daemon(daemons, path)
    (path / "dir").mkdir()
    (path / "journal").write_bytes(b"x" * 4096)
    fd_holder, _ = daemons.hold("pbs", path / "vm-100")
    in_dir = daemons.spawn("sleep", "600", cwd=path / "dir")
    mapper = daemons.spawn(sys.executable, "-c", MAP_AND_CLOSE, path / "journal")
    assert mapper.stdout is not None and mapper.stdout.readline() == "mapped\n"
    private = daemons.spawn(
        "unshare", "--mount", "--propagation", "private",
        sys.executable, "-c", HOLD_IN_OWN_NAMESPACE, path / "vm-200",
    )  # fmt: skip
    assert private.stdout is not None and private.stdout.readline() == "locked\n"
    dev = entries_at(path)[-1].dev
    live = {(use.pid, use.what) for use in mount_users.users_of(dev)}
    os.kill(pid, signal.SIGKILL)
    daemons.wait_exit(pid)
    started = time.monotonic()
    found = mount_users.users_of(dev)
    took = time.monotonic() - started
    uses = {(use.pid, use.what.split()[0]) for use in found}
    assert uses == {
        (fd_holder.pid, "fd"),
        (in_dir.pid, "cwd"),
        (mapper.pid, "mapping"),
        (private.pid, "fd"),
    }, found
    assert live == {(use.pid, use.what) for use in found}  # the same on the live mount
    assert took < 2, took
    assert mount_users.mount_ids(dev) > {entries_at(path)[-1].mount_id}  # the private copy
    for child in (fd_holder, in_dir, mapper, private):
        child.kill()
        child.wait()
    assert mount_users.users_of(dev) == []
    assert daemons.run("umount", path).returncode == 0  # and the kernel agrees


@pytest.mark.kills_daemon
def test_a_stopped_daemon_fails_closed_after_hang_timeout(
    daemons: Daemons, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP: the daemon's own watchdog cannot run; the watcher kills it after hang_timeout,
    and a caller that was waiting on the mount gets an error instead of hanging for ever."""
    caplog.set_level(logging.INFO, logger="lockfs.heal")
    path = daemons.mountpoint()
    pid = start_daemon(daemons, path, "hang_timeout=1")
    systemctl = FakeSystemctl()
    watcher = watcher_of(path, systemctl, state_dir)
    assert watcher.step() is Health.ALIVE
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    waiting = daemons.spawn(sys.executable, "-c", f"import os; os.listdir({str(path)!r})")
    sample, seen = observe_until(watcher, Health.HUNG, 10)
    assert set(seen[:-1]) == {Health.SILENT}
    assert 1 <= time.monotonic() - stopped < 1 + 3 * POLL_INTERVAL, seen
    watcher.act(Health.HUNG, sample)
    assert daemons.wait_exit(pid) == -signal.SIGKILL
    assert waiting.wait(timeout=5) != 0 and "Errno 10" in (waiting.communicate()[1] or "")
    assert errno_of(os.statvfs, path) in ABORTED and is_lockfs_mounted(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "lockfs.heal"]
    hung = [line for line in lines if "has not answered for" in line]
    assert len(hung) == 1 and "(hang_timeout=1, its process stopped)" in hung[0], lines
    assert f"killed it (SIGKILL to pid {pid})" in hung[0]
    assert systemctl.actions()[-3:] == [
        ["restart", "--no-block", UNIT],
        ["reset-failed", "api.service", "proxy.service"],
        ["start", "--no-block", "api.service", "proxy.service"],
    ]


def test_a_running_daemon_that_stops_answering_gets_its_own_watchdog_first(
    daemons: Daemons, state_dir: Path
) -> None:
    """Silence while the process runs: the watcher waits hang_timeout plus the daemon's own
    watchdog bound, so the daemon's own line names the stuck request."""
    path = daemons.mountpoint()
    start_daemon(daemons, path, "hang_timeout=1")
    watcher = watcher_of(path, FakeSystemctl(), state_dir)
    assert watcher.step() is Health.ALIVE
    assert watcher.judge.hang_limit(stopped=False) == 1 + running_grace(1)
    assert watcher.judge.hang_limit(stopped=True) == 1


@pytest.mark.kills_daemon
def test_a_watcher_started_after_the_death_finds_the_dead_mount(
    daemons: Daemons, state_dir: Path
) -> None:
    path = daemons.dead_mountpoint()
    watcher = watcher_of(path, FakeSystemctl(), state_dir)
    assert watcher.observe()[0] is Health.DEAD  # no daemon known: the probe got ENOTCONN
    assert watcher.daemon is None


@pytest.mark.kills_daemon
def test_the_fourth_failure_in_ten_minutes_stays_failed_closed(
    daemons: Daemons, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = daemons.mountpoint()
    start_daemon(daemons, path)
    systemctl = FakeSystemctl()
    watcher = watcher_of(path, systemctl, state_dir)
    now = time.monotonic()
    watcher.state.save(HealState([now - WINDOW + 30, now - 60, now - 1]))
    assert watcher.step() is Health.ALIVE
    assert watcher.daemon is not None
    os.kill(watcher.daemon.pid, signal.SIGKILL)
    daemons.wait_exit(watcher.daemon.pid)
    assert watcher.step() is Health.DEAD
    assert systemctl.actions() == []
    assert systemctl.active == {"api.service", "proxy.service"}
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1, critical
    assert (
        f"{canonical(str(path))} failed 4 times in 10 minutes (at most 3 are recovered "
        f"automatically); staying failed closed; recover with: systemctl restart '{UNIT}'"
    ) in critical[0]
    # The same dead mount is handled once: the watcher stays idle.
    assert watcher.step() is Health.DEAD and watcher.handled


def test_the_state_file_is_roots_alone_and_never_followed(state_dir: Path, tmp_path: Path) -> None:
    state = StateFile("/run/proxmox-backup/locks", str(state_dir))
    assert state.name == "run-proxmox\\x2dbackup-locks.heal"
    assert state.load() == HealState()
    saved = HealState([1.5, 2.5], Pending(1.5, ["a.service"]))
    state.save(saved)
    assert state.load() == saved
    file = state_dir / state.name
    assert file.stat().st_mode & 0o777 == 0o600
    # A symlink planted at the name is replaced, never written through or read.
    target = tmp_path / "target"
    target.write_text("keep")
    file.unlink()
    file.symlink_to(target)
    with pytest.raises(OSError) as refused:
        state.load()
    assert refused.value.errno == errno.ELOOP
    state.save(saved)
    assert target.read_text() == "keep" and not file.is_symlink() and state.load() == saved
    # A directory others may write is refused.
    state_dir.chmod(0o777)
    with pytest.raises(UnsafePath, match="group or others may write it"):
        state.load()
    state_dir.chmod(0o700)


def test_the_units_that_require_the_mount_but_not_the_watcher(state_dir: Path) -> None:
    systemctl = FakeSystemctl(active=("proxy.service",))
    systemctl.bound_by.append("bound.service")
    systemd = Systemd(UNIT, systemctl)
    dependents = systemd.dependents()
    assert "bound.service" in dependents and "api.service" in dependents
    assert systemd.running(dependents) == ["proxy.service"]
    assert unit_for("/run/proxmox-backup/locks") == UNIT
    assert escape_path("/run/proxmox-backup/locks") + ".mount" == UNIT


def test_without_systemd_heal_refuses_and_names_the_recovery(tmp_path: Path) -> None:
    assert not os.path.isdir("/run/systemd/system"), "this test needs a host without systemd"
    result = subprocess.run(
        lockfs_command("heal", tmp_path), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "lockfs heal needs systemd as the service manager" in result.stderr
    assert f"umount {tmp_path} and mount it again" in result.stderr


def test_a_pidfd_is_the_process_it_was_opened_for() -> None:
    child = subprocess.Popen(["sleep", "60"])
    daemon = DaemonProcess(child.pid)
    try:
        assert not daemon.exited() and not daemon.stopped()
        os.kill(child.pid, signal.SIGSTOP)
        wait_for(lambda: daemon.stopped() or None, 5, "the stopped state")
        daemon.kill()
        assert daemon.exited(5)
        assert child.wait(5) == -signal.SIGKILL
        daemon.kill()  # gone: nothing happens
    finally:
        daemon.close()
