"""Stress on a real mount: thousands of held locks, killed holders, cwd holders, listings while
entries churn, signals while requests are in flight — zero overlaps, zero leftovers, bounded
daemon memory."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from support import HELPERS, MakeMount, Mount, wait_for

HOLD_MANY = textwrap.dedent(
    """
    import fcntl, os, resource, sys
    root, count = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
    os.makedirs(root, exist_ok=True)
    fds = []
    for i in range(count):
        fd = os.open(f"{root}/{i:06d}", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
    print("ready", flush=True)
    sys.stdin.readline()
    """
)

PROBE_BUSY = textwrap.dedent(
    """
    import fcntl, os, sys
    busy = 0
    for name in sys.argv[2:]:
        fd = os.open(f"{sys.argv[1]}/{name}", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy += 1
        os.close(fd)
    print(busy)
    """
)


def test_thousands_of_held_locks(mnt: Mount) -> None:
    count = 5000
    holder = mnt.spawn(sys.executable, "-c", HOLD_MANY, mnt / "held", str(count))
    assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
    assert mnt.status().open == count
    sample = [f"{i:06d}" for i in random.Random(1).sample(range(count), 200)]
    probe = subprocess.run(
        [sys.executable, "-c", PROBE_BUSY, mnt / "held", *sample], capture_output=True, text=True
    )
    assert probe.stdout.strip() == "200", probe.stderr
    holder.stdin.close()
    assert holder.wait(30) == 0
    status = mnt.wait_reclaimed(30)
    assert status.open == 0


def test_killed_holders_release_their_locks(mnt: Mount) -> None:
    lock = mnt / "store/vm-100"
    lock.parent.mkdir()
    for i in range(20):
        holder = mnt.helper("pbs", lock, "--timeout", "10")
        if i % 2:  # half of them are killed once they hold the lock, half at a random point
            assert holder.stdout.readline().startswith("locked")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert subprocess.run(["flock", "-n", lock, "true"]).returncode == 0
    status = mnt.wait_reclaimed(10)
    assert status.open == 0


CWD_WORKER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    deadline = time.monotonic() + float(sys.argv[1])
    cycles = 0
    while time.monotonic() < deadline:
        fd = os.open("lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.close(fd)
        cycles += 1
    print(cycles)
    """
)

CHURN_WORKER = textwrap.dedent(
    """
    import os, sys, time
    root, deadline, n = sys.argv[1], time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < deadline:
        d = f"{root}/{n % 7}"
        os.makedirs(d, exist_ok=True)
        fd = os.open(f"{d}/f{n}", os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
        if n % 3 == 0:
            try:
                os.unlink(f"{d}/f{n}")
            except FileNotFoundError:
                pass
        n += 1
    print(n)
    """
)

LISTER = textwrap.dedent(
    """
    import json, os, sys, time
    root, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    listings = duplicates = errors = 0
    while time.monotonic() < deadline:
        for top in [root] + [f"{root}/{i}" for i in range(7)]:
            try:
                names = os.listdir(top)
            except FileNotFoundError:
                continue  # a directory reclaimed between two listings
            except OSError:
                errors += 1
                continue
            listings += 1
            duplicates += len(names) - len(set(names))
    print(json.dumps(dict(listings=listings, duplicates=duplicates, errors=errors)))
    """
)


def test_listing_cwd_holders_and_churn_together(make_mount: MakeMount) -> None:
    mnt = make_mount("reclaim_delay=0.01,dir_grace=0.05")
    (mnt / "cwd/a/b").mkdir(parents=True)
    seconds = "3"
    cwd_workers = [
        mnt.spawn(sys.executable, "-c", CWD_WORKER, seconds, cwd=mnt / "cwd/a/b") for _ in range(2)
    ]
    churners = [
        mnt.spawn(sys.executable, "-c", CHURN_WORKER, mnt / f"churn{i}", seconds) for i in range(2)
    ]
    lister = mnt.spawn(sys.executable, "-c", LISTER, mnt.path, seconds)
    for proc in (*cwd_workers, *churners):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and int(out) > 10, err
    out, err = lister.communicate(timeout=60)
    assert lister.returncode == 0, err
    result = json.loads(out)
    assert result["listings"] > 10 and result["duplicates"] == 0 and result["errors"] == 0
    status = mnt.wait_reclaimed(15)
    assert status.open == 0 and status.faults == 0


def test_daemon_memory_stays_bounded(make_mount: MakeMount) -> None:
    mnt = make_mount("reclaim_delay=0.05,dir_grace=0.2")
    mnt.run_helper("bulk", mnt / "warm", "2000", timeout=120)
    start = mnt.wait_reclaimed(30).rss_bytes
    for round_ in range(3):
        mnt.run_helper("bulk", mnt / f"s{round_}", "10000", str(round_ * 10000), timeout=300)
    status = mnt.wait_reclaimed(30)
    assert status.created > 32000
    assert status.rss_bytes - start < 32 << 20, (start, status.rss_bytes)


def test_signals_while_requests_are_in_flight(make_mount: MakeMount, tmp_path: Path) -> None:
    """SIGTERM/SIGINT arriving while workers take locks: the daemon unmounts only in a moment
    when nothing is open (then the workers carry on in the directory underneath), never while
    a lock is held — so exclusive holders never overlap, whichever side they are on."""
    mnt = make_mount("reclaim_delay=0.01,dir_grace=0.05")
    markers = tmp_path / "markers"
    markers.mkdir()
    workers = [
        mnt.spawn(sys.executable, HELPERS / "race.py", "pbs", mnt, markers, "3", str(seed))
        for seed in range(3)
    ]
    wait_for(lambda: mnt.status().requests.get("open", 0) > 50, 10, "workers to run")
    for i in range(20):
        if mnt.proc.poll() is not None:
            break
        mnt.proc.send_signal(signal.SIGTERM if i % 2 else signal.SIGINT)
        wait_for(lambda: "not unmounting" in mnt.log_text() or mnt.proc.poll() is not None, 10)
    totals = {"overlaps": 0, "cycles": 0}
    for proc in workers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        for key in totals:
            totals[key] += json.loads(out)[key]
    assert totals["overlaps"] == 0 and totals["cycles"] > 0, totals
    if mnt.proc.poll() is None:
        mnt.proc.send_signal(signal.SIGTERM)
    assert mnt.proc.wait(30) == 0, mnt.log_text()
