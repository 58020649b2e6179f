#!/usr/bin/env python3
"""One worker of the multi-process race test.

``race.py STRATEGY ROOT MARKERS SECONDS SEED`` takes exclusive locks on a few shared names for
SECONDS and prints one JSON line of counters. Inside every critical section it creates
``MARKERS/<name>`` with O_EXCL and removes it again: finding the marker already there means
two processes held the same lock at once (an overlap). Strategies:

* ``pbs``: PBS's sequence with the double-stat check, on chunk and group names;
* ``guard``: ChunkLockGuard (double-stat and retry), unlinking the name before closing, on
  chunk names only — PBS callers that never unlink share those names with it;
* ``plain``: open(O_CREAT) + flock, on group names only (where nobody unlinks).

Every strategy also appends numbered lines to ``ROOT/store/move-journal`` under its lock and
now and then consumes (reads and truncates) it, counting what it appended and consumed.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time

# The checkout's lockfs and tests/ (for helpers.locker), whoever runs this program.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers.locker import guard_lock, plain_lock

from lockfs.pbs_lock import LockBusy, LockFileModified, chunk_path, lock_helper

CHUNKS = [chunk_path("store", i) for i in range(3)]
GROUPS = [f"store/vm-{100 + i}" for i in range(3)]
JOURNAL = "store/move-journal"


def critical_section(markers: str, name: str, counters: dict[str, int]) -> None:
    marker = os.path.join(markers, name.replace("/", "_"))
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        counters["overlaps"] += 1
        return
    os.close(fd)
    for _ in range(random.randint(0, 3)):
        os.sched_yield()
    os.unlink(marker)


def take(strategy: str, path: str, timeout: float) -> int:
    owner = (os.getuid(), os.getgid())
    if strategy == "pbs":
        return lock_helper(path, owner, timeout=timeout)
    if strategy == "guard":
        return guard_lock(path, owner, exclusive=True, timeout=timeout)
    return plain_lock(path, exclusive=True, timeout=timeout)


def journal_step(
    strategy: str, root: str, markers: str, counters: dict[str, int], seq: int
) -> None:
    path = os.path.join(root, JOURNAL)
    try:
        fd = take("plain" if strategy == "plain" else "pbs", path, 0.2)
    except (LockBusy, LockFileModified):
        counters["busy"] += 1
        return
    try:
        critical_section(markers, JOURNAL, counters)
        if random.random() < 0.1:
            data = os.pread(fd, 1 << 20, 0)
            counters["consumed"] += data.count(b"\n")
            os.ftruncate(fd, 0)
        else:
            line = f"{os.getpid()} {seq}\n".encode()
            os.lseek(fd, 0, os.SEEK_END)  # plain callers open without O_APPEND
            if os.write(fd, line) != len(line):
                raise OSError(errno.EIO, "short write")
            counters["appended"] += 1
    finally:
        os.close(fd)


def main() -> int:
    strategy, root, markers, seconds, seed = sys.argv[1:6]
    random.seed(int(seed))
    names = {"pbs": CHUNKS + GROUPS, "guard": CHUNKS, "plain": GROUPS}[strategy]
    counters = dict(cycles=0, busy=0, modified=0, overlaps=0, appended=0, consumed=0)
    os.makedirs(os.path.join(root, "store/.chunks"), exist_ok=True)
    deadline = time.monotonic() + float(seconds)
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        if seq % 5 == 0:
            journal_step(strategy, root, markers, counters, seq)
            continue
        name = random.choice(names)
        path = os.path.join(root, name)
        timeout = random.choice([0.0, 0.0, 0.05])
        try:
            fd = take(strategy, path, timeout)
        except LockBusy:
            counters["busy"] += 1
            continue
        except LockFileModified:
            counters["modified"] += 1
            continue
        try:
            critical_section(markers, name, counters)
            counters["cycles"] += 1
            if strategy == "guard":
                os.unlink(path)  # unlink before unlock
        finally:
            os.close(fd)
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
