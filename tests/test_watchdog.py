"""The hang watchdog: a stuck daemon fails closed within hang_timeout, a busy one never trips.

The decision logic is tested on made-up samples; the rest on real mounts, where a test-only
fault blocks a handler (the loop stops) or makes it call the synchronous invalidation (a real
deadlock in the kernel), while real client processes wait for the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import Daemons, Mount, wait_for

from lockfs import logs, watchdog
from lockfs.daemon import EXIT_ABORTED
from lockfs.mounts import entries_at, is_lockfs_mounted
from lockfs.watchdog import EXIT_HUNG, FailClosed, Stall, StallDetector, Watchdog

TIMEOUT = 1.0
#: What the daemon may take beyond hang_timeout: sampling (twice hang_timeout / 10), the log
#: line, the abort and the exit — on a machine that runs other tests at the same time.
MARGIN = 2.0
#: errno of a request the abort ended (ECONNABORTED) or one sent after it (ENOTCONN).
ABORTED = {errno.ECONNABORTED, errno.ENOTCONN}


# --- The decision, on made-up samples ----------------------------------------------------------


def test_a_busy_daemon_never_trips() -> None:
    """A new request every sample (each with its own argument tuple), or none, while the
    heartbeat moves: no stall however long it goes on."""
    detector = StallDetector(timeout=0.5, interval=0.05)
    now, beats = 0.0, 0
    for i in range(10_000):
        now += 0.05
        beats += i % 2  # the heartbeat runs at half the sampling interval, unevenly
        serving = None if i % 3 == 0 else (1, b"name", i)
        assert detector.observe(now, beats, serving) is None


def test_a_request_in_service_too_long_trips_even_while_the_loop_runs() -> None:
    detector = StallDetector(timeout=1.0, interval=0.125)
    stuck = (1, b"__lockfs_hang__")
    for beats in range(8):  # first seen at 0, in service for 0.875 s
        assert detector.observe(beats * 0.125, beats, stuck) is None
    later = tuple(list(stuck))  # an equal but new request: its time starts afresh
    for beats in range(8, 16):
        assert detector.observe(beats * 0.125, beats, later) is None
    assert detector.observe(2.0, 16, later) == Stall(1.0, args=later)


def test_a_stopped_loop_trips_outside_any_request() -> None:
    detector = StallDetector(timeout=1.0, interval=0.125)
    for step in range(8):
        assert detector.observe(step * 0.125, 5, None) is None
    assert detector.observe(1.0, 5, None) == Stall(1.0)


def test_a_loop_stopped_inside_a_request_names_the_request() -> None:
    """The heartbeat's last change was seen a sample before the request was: the stall
    counts from the heartbeat, and names the request in service."""
    detector = StallDetector(timeout=1.0, interval=0.125)
    assert detector.observe(0.0, 7, None) is None
    stuck = (1, b"__lockfs_deadlock__")
    for step in range(1, 8):
        assert detector.observe(step * 0.125, 7, stuck) is None
    assert detector.observe(1.0, 7, stuck) == Stall(1.0, args=stuck)


def test_time_the_watchdog_did_not_run_is_not_blamed_on_the_loop() -> None:
    """A process stopped (SIGSTOP) or a VM paused: the watchdog wakes 30 s late; that time is
    not counted, only the interval it would have waited anyway."""
    detector = StallDetector(timeout=1.0, interval=0.1)
    stuck = (1, b"x")
    assert detector.observe(0.0, 1, stuck) is None
    assert detector.observe(30.0, 1, stuck) is None  # 30 s later: the watchdog was not running
    for step in range(1, 9):
        assert detector.observe(30.0 + step / 10, 1, stuck) is None
    stall = detector.observe(30.9, 1, stuck)
    assert stall is not None and stall.args is stuck and stall.seconds == pytest.approx(1.0)


def test_a_garbage_collection_pause_is_not_a_hang() -> None:
    """A full garbage collection of a large table holds the interpreter lock for a while on a
    loaded machine: neither the loop nor the watchdog runs, and the sample after it comes that
    much late. With hang_timeout=0.5, a 0.6 s pause in a busy loop must not trip; a loop that
    really stops (samples on time) still trips at the timeout."""
    detector = StallDetector(timeout=0.5, interval=0.05)
    now, progress = 0.0, 0
    for _ in range(20):
        now, progress = now + 0.05, progress + 3
        assert detector.observe(now, progress, None) is None
    now += 0.05 + 0.6  # the pause: this sample is 0.6 s late, no request completed meanwhile
    assert detector.observe(now, progress, None) is None
    for step in range(1, 9):  # then the loop stops for real, the watchdog samples on time
        assert detector.observe(now + step * 0.05, progress, None) is None
    assert detector.observe(now + 0.5, progress, None) is not None


def test_the_trio_side_fails_closed_when_the_watchdog_thread_stops_sampling() -> None:
    """Checked at every beat (interval / 2): a watchdog thread that has not sampled for
    hang_timeout + two intervals fails the mount closed; time the check itself came late (the
    whole process did not run) is excused."""

    class Ops:
        serving_name = ""
        serving_args: tuple[Any, ...] | None = None

    failures: list[str] = []
    dog = Watchdog(1.0, Ops(), failures.append)  # interval 0.1, beats every 0.05
    release = threading.Event()
    dog._thread = threading.Thread(target=release.wait, daemon=True)  # alive, never samples
    dog._thread.start()
    try:
        dog.sampled_at = 0.0
        now = 0.0
        for _ in range(10):
            now += 0.05
            dog.check_thread(now)
        now += 0.05 + 2.0  # a late check: the process did not run for 2 s
        dog.check_thread(now)
        assert failures == []
        while not failures:
            now += 0.05
            dog.check_thread(now)
        assert failures[0].startswith("the hang watchdog thread has not run for 1.2 s")
        assert now == pytest.approx(0.5 + 2.05 + 0.7)  # 1.2 s of on-time checks in all
    finally:
        release.set()
    dog._thread.join(5)
    dog._firing = False
    dog.check_thread(now + 0.05)
    assert failures[1] == "the hang watchdog thread has ended (see the error logged before)"


def test_the_stall_line_names_the_request_and_its_caller(caplog: pytest.LogCaptureFixture) -> None:
    class Ctx:
        pid, uid = 4242, 34

    class Ops:
        serving_name = "lookup"
        serving_args: tuple[Any, ...] | None = None

        async def lookup(self, parent_inode: int, name: bytes, ctx: object) -> None: ...

    exits: list[int] = []
    fail = FailClosed("/run/locks", device=lambda: 0, abort=False, exit=exits.append)
    dog = Watchdog(1.0, Ops(), fail)
    args = (1, b"vm-100", Ctx())
    with caplog.at_level(logging.ERROR):
        fail(dog.message(Stall(1.04, args=args)))
    assert exits == [EXIT_HUNG]
    line, stacks = [r.getMessage() for r in caplog.records if r.name == "lockfs.watchdog"]
    assert line.startswith(
        "daemon hung: request lookup(parent_inode=1, name=b'vm-100', ctx=pid 4242 uid 34) "
        "has been in service for 1.0 s (hang_timeout=1); failing closed: aborting the FUSE "
        "connection of /run/locks"
    )
    assert "\n" not in line
    # Every thread's stack follows, as one record: this one's shows where it called for it.
    assert stacks.startswith("stacks of the daemon's threads:\nthread MainThread (")
    assert "in test_the_stall_line_names_the_request_and_its_caller" in stacks
    assert "Traceback" not in stacks and "daemon hung" not in stacks
    loop = dog.message(Stall(2.0))
    assert loop == "daemon hung: the event loop has made no progress for 2.0 s (hang_timeout=1)"


def test_fusectl_names_connections_by_the_kernels_device_number() -> None:
    assert watchdog.fusectl_name(os.makedev(0, 39)) == "39"
    assert watchdog.fusectl_name(os.makedev(8, 1)) == str((8 << 20) | 1)


# --- Real mounts ---------------------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    op, path = sys.argv[1:3]
    start = time.monotonic()
    try:
        if op == "statvfs":
            os.statvfs(path)
        else:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        code = 0
    except OSError as exc:
        code = exc.errno
    print(json.dumps({"errno": code, "seconds": time.monotonic() - start}), flush=True)
    """
)


def fusectl_mount_count() -> int:
    return Path("/proc/self/mountinfo").read_text().count(" - fusectl ")


def waiting_for_fuse(pid: int) -> bool:
    """Whether process ``pid`` waits in the kernel for a FUSE answer."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "request_wait_answer"
    except OSError:
        return False


def clients_against_a_stuck_daemon(
    runner: Daemons | Mount, path: Path, fault: str
) -> list[dict[str, Any]]:
    """One client trips the fault; once it waits, three more send other requests. Every one
    must come back (none is left stuck); returns what each got, the tripping one first."""
    (path / "lock").touch()  # an existing lock file: opening it is an OPEN only
    stuck = runner.spawn(sys.executable, "-c", CLIENT, "open", path / fault)
    wait_for(lambda: waiting_for_fuse(stuck.pid), 5, "the first client to wait for the daemon")
    others = [
        runner.spawn(sys.executable, "-c", CLIENT, op, target)
        for op, target in [
            ("open", path / "lock"),
            ("open", path / "store" / "new-lock"),
            ("statvfs", path),
        ]
    ]
    results = []
    for proc in (stuck, *others):
        out, err = proc.communicate(timeout=TIMEOUT + MARGIN + 10)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def assert_failed_closed(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert result["errno"] in ABORTED, results
    assert results[0]["seconds"] < TIMEOUT + MARGIN, results
    assert results[0]["seconds"] >= TIMEOUT * 0.9, results  # it was stuck, then aborted


@pytest.mark.kills_daemon  # the watchdog ends it with status 70
@pytest.mark.parametrize(
    ("fault", "hooks"),
    [
        ("__lockfs_hang__", "hang-entry"),  # the handler blocks: the loop stops
        ("__lockfs_hang__", "hang-entry,watchdog-exit-only"),  # ended by the exit alone
        ("__lockfs_deadlock__", "deadlock-entry"),  # a kernel deadlock: needs the abort
    ],
    ids=["blocked-handler", "blocked-handler-exit-only", "kernel-deadlock"],
)
def test_a_stuck_daemon_fails_closed_within_hang_timeout(
    make_mount: Any, fault: str, hooks: str
) -> None:
    fusectl_mounts = fusectl_mount_count()
    mnt: Mount = make_mount(f"hang_timeout={TIMEOUT:g}", LOCKFS_TEST_HOOKS=hooks)
    results = clients_against_a_stuck_daemon(mnt, mnt.path, fault)
    assert_failed_closed(results)
    assert mnt.proc.wait(timeout=10) == EXIT_HUNG
    hung = [line for line in mnt.log_text().splitlines() if "daemon hung" in line]
    assert len(hung) == 1, mnt.log_text()
    assert f"request lookup(parent_inode=1, name=b'{fault}', ctx=pid " in hung[0]
    assert "has been in service for 1." in hung[0] and "(hang_timeout=1)" in hung[0]
    # Then every thread's stack, as one record: the stuck handler's shows where it waits.
    stacks = mnt.log_text().split("stacks of the daemon's threads:\n", 1)[1]
    assert "thread MainThread (" in stacks and "thread lockfs-watchdog (" in stacks
    stuck_in = "_block_on_hang_name" if fault == "__lockfs_hang__" else "_deadlock_on_deadlock_name"
    assert f"in {stuck_in}" in stacks
    # The mount stays and answers ENOTCONN, like a crashed daemon's: no second copy of a lock
    # can be made underneath. Recovery: umount (nothing holds it), mount again.
    assert is_lockfs_mounted(mnt.path)
    with pytest.raises(OSError) as info:
        os.statvfs(mnt.path)
    assert info.value.errno == errno.ENOTCONN
    subprocess.run(["umount", mnt.path], check=True)
    assert not is_lockfs_mounted(mnt.path)
    assert fusectl_mount_count() == fusectl_mounts  # a private fusectl leaves no trace here


@pytest.mark.kills_daemon  # its connection is aborted: it ends with EXIT_ABORTED
def test_an_aborted_connection_ends_the_daemon_with_one_line_and_leaves_the_mount_closed(
    make_mount: Any,
) -> None:
    """Someone aborts the connection through fusectl while locks may be held: the daemon
    cannot serve any more. It says so in one line (no traceback: not a fault of its own),
    exits EXIT_ABORTED and leaves the mount in place answering ENOTCONN (unmounting it would
    let PBS make lock files in the directory underneath)."""
    mnt: Mount = make_mount()
    (mnt.path / "lock").touch()
    (entry,) = entries_at(mnt.path)
    assert watchdog.abort_connection(watchdog.fusectl_name(entry.dev))
    assert mnt.proc.wait(timeout=10) == EXIT_ABORTED
    text = mnt.log_text()
    assert "Traceback" not in text, text
    aborted = [line for line in text.splitlines() if "was aborted" in line]
    assert len(aborted) == 1 and "ERROR: the FUSE connection of" in aborted[0], text
    assert f"`umount {mnt.path}` and mount it again" in aborted[0]
    assert is_lockfs_mounted(mnt.path)
    with pytest.raises(OSError) as info:
        os.statvfs(mnt.path)
    assert info.value.errno == errno.ENOTCONN
    subprocess.run(["umount", mnt.path], check=True)


@pytest.mark.kills_daemon  # the watchdog ends it with status 70
def test_a_detached_daemon_logs_the_hang_before_it_exits(daemons: Daemons, tmp_path: Path) -> None:
    """Detached and without syslog: the one line reaches the fallback file before the exit."""
    path = daemons.mountpoint()
    log_file = Path(logs.log_path(str(path)))
    hooks = f"hang-entry,syslog={tmp_path}/no-dev-log,journal={tmp_path}/no-journal"
    result = daemons.lockfs(path, "-o", f"hang_timeout={TIMEOUT:g}", LOCKFS_TEST_HOOKS=hooks)
    assert result.returncode == 0, result.stderr
    pid = daemons.daemon_pid(path)
    assert_failed_closed(clients_against_a_stuck_daemon(daemons, path, "__lockfs_hang__"))
    assert daemons.wait_exit(pid) == EXIT_HUNG
    text = log_file.read_text()
    assert "CRITICAL: daemon hung: request lookup(parent_inode=1, name=b'__lockfs_hang__'" in text
    assert daemons.run("umount", path).returncode == 0


#: Takes and releases locks on 50 names in its working directory (which it keeps alive).
CYCLER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    deadline, n = time.monotonic() + float(sys.argv[1]), 0
    while time.monotonic() < deadline:
        fd = os.open(f"lock{n % 50}", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.close(fd)
        n += 1
    print(n)
    """
)


def test_a_saturated_daemon_never_trips_the_shortest_hang_timeout(make_mount: Any) -> None:
    """Processes cycling locks as fast as they can, PBS sequences on fresh chunk names, a lister
    and status queries keep the daemon at full CPU for a few seconds with hang_timeout=0.5."""
    mnt: Mount = make_mount("reclaim_delay=0.01,dir_grace=0.05,hang_timeout=0.5")
    (mnt / "hot").mkdir()
    seconds = "4"
    procs = [mnt.spawn(sys.executable, "-c", CYCLER, seconds, cwd=mnt / "hot") for _ in range(3)]
    procs += [mnt.helper("bulk", mnt / f"store{i}", "100000", str(i << 20)) for i in range(2)]
    lister = mnt.spawn("sh", "-c", 'while :; do ls -R "$1" > /dev/null; done', "sh", mnt.path)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        assert mnt.proc.poll() is None, mnt.log_text()
        mnt.status()
    for proc in procs[:3]:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and int(out) > 100, err
    for proc in (*procs[3:], lister):
        proc.kill()
        proc.wait(10)
    status = mnt.status()
    assert sum(status.requests.values()) > 5000
    assert status.options.hang_timeout == 0.5
    assert mnt.proc.poll() is None and "daemon hung" not in mnt.log_text()


#: Hammers the mount with valid requests for SECONDS: ``list-first`` re-reads the first page
#: of DIR (OPENDIR, READDIRPLUS at offset 0, RELEASEDIR), ``list-all`` lists all of it,
#: ``cycle`` stats, opens and closes 50 names in DIR. Prints how many rounds it made.
FLOODER = textwrap.dedent(
    """
    import os, sys, time
    op, directory, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        if op == "list-first":
            with os.scandir(directory) as entries:
                next(entries)
        elif op == "list-all":
            os.listdir(directory)
        else:
            path = os.path.join(directory, f"lock{n % 50}")
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
            os.stat(path)
        n += 1
    print(n)
    """
)
#: Entries in the big directory the listers read.
BIG_DIRECTORY = 65_536


def test_slow_valid_requests_never_trip_the_shortest_hang_timeout(make_mount: Any) -> None:
    """Each READDIR of a 65,536-entry directory is a slow request, and several processes list it
    in a loop while others cycle locks, for several seconds, with hang_timeout=0.5: the loop
    completes requests all the time, so the watchdog must never fire."""
    mnt: Mount = make_mount("reclaim_delay=3600,dir_grace=3600,hang_timeout=0.5")
    big, hot = mnt / "big", mnt / "hot"
    big.mkdir()
    hot.mkdir()
    fill = mnt.spawn(
        sys.executable,
        "-c",
        "import os, sys\n"
        "for i in range(int(sys.argv[2])):\n"
        "    os.close(os.open(os.path.join(sys.argv[1], f'e{i}'), os.O_CREAT | os.O_WRONLY))\n",
        big,
        str(BIG_DIRECTORY),
    )
    assert fill.wait(timeout=120) == 0
    seconds = "5"
    work = [("list-first", big)] * 10 + [("list-all", big)] + [("cycle", hot)] * 2
    procs = [mnt.spawn(sys.executable, "-c", FLOODER, op, d, seconds) for op, d in work]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and int(out) > 0, (err, mnt.log_text()[-2000:])
    assert mnt.proc.poll() is None, mnt.log_text()
    assert "daemon hung" not in mnt.log_text()
    assert mnt.status().requests["readdir"] > 100


@pytest.mark.kills_daemon  # it fails closed
@pytest.mark.injects_faults  # the watchdog thread's injected exception is logged
@pytest.mark.parametrize("how", ["raise", "block"])
def test_a_dead_or_stalled_watchdog_thread_fails_closed(make_mount: Any, how: str) -> None:
    """Who watches the watchdog: the trio side notices its thread ended (an exception, logged
    with its traceback) or stopped sampling, says so, and fails the mount closed."""
    mnt: Mount = make_mount(f"hang_timeout={TIMEOUT:g}", LOCKFS_TEST_HOOKS=f"watchdog-fault={how}")
    start = time.monotonic()
    assert not os.path.lexists(mnt / "__lockfs_watchdog__")  # sets the fault off
    assert mnt.proc.wait(timeout=TIMEOUT + MARGIN + 5) == EXIT_HUNG
    seconds = time.monotonic() - start
    text = mnt.log_text()
    (line,) = [line for line in text.splitlines() if "failing closed" in line]
    if how == "raise":
        assert "internal error in the hang watchdog thread" in text
        assert "RuntimeError: injected fault in watchdog" in text
        assert "CRITICAL: the hang watchdog thread has ended" in line
        assert seconds < MARGIN
    else:
        assert "CRITICAL: the hang watchdog thread has not run for 1." in line
        assert TIMEOUT <= seconds < TIMEOUT + MARGIN
    assert "stacks of the daemon's threads:" in text
    with pytest.raises(OSError) as info:
        os.statvfs(mnt.path)
    assert info.value.errno == errno.ENOTCONN
