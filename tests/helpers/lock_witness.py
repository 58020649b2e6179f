#!/usr/bin/env python3
"""Takes one lock with PBS's sequence and logs when it holds it, so that a test can check that
no two processes ever held it at once (across daemon deaths and remounts).

``lock_witness.py loop LOCK LOG``
    a service: take the lock, hold it 0.2 s, let go, again every 0.1 s, until SIGTERM. While
    the lock directory fails (ENOTCONN, ECONNABORTED) it tries again every 0.2 s.
``lock_witness.py once LOCK LOG SECONDS``
    take the lock once, hold it SECONDS (also while the lock directory fails under it), let
    go and exit.

``LOG`` gets one line per event, each written with one append: ``acquired PID`` once the lock
is held, ``releasing PID`` right before it is let go (so in the file, a holder's ``releasing``
always comes before the next holder's ``acquired``), and ``error PID MESSAGE`` once per run of
failures; each line starts with CLOCK_MONOTONIC seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

if not __package__:
    # The checkout's lockfs.pbs_lock, whatever lockfs the container has installed (or none).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lockfs.pbs_lock import LockBusy, LockFileModified, lock_helper

HOLD = 0.2
PAUSE = 0.1
RETRY = 0.2
#: PBS gives every lock file to backup (Debian's fixed ids).
BACKUP = (34, 34)

stopping = False


def log(path: str, event: str, detail: str = "") -> None:
    line = f"{time.monotonic():.6f} {event} {os.getpid()} {detail}".rstrip() + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def let_go(fd: int) -> None:
    with contextlib.suppress(OSError):  # on a dead mount the release cannot be answered
        os.close(fd)


def take(lock: str) -> int:
    """The lock, held (waits for it); OSError when the lock directory fails."""
    while True:
        try:
            return lock_helper(lock, BACKUP, timeout=5)
        except (LockBusy, LockFileModified):
            continue


def sleep(seconds: float) -> None:
    """Sleep, but not past SIGTERM."""
    end = time.monotonic() + seconds
    while not stopping and time.monotonic() < end:
        time.sleep(min(0.05, end - time.monotonic()))


def loop(lock: str, path: str) -> int:
    failing = False
    while not stopping:
        try:
            fd = take(lock)
        except OSError as exc:
            if not failing:
                log(path, "error", str(exc))
                failing = True
            sleep(RETRY)
            continue
        failing = False
        log(path, "acquired")
        sleep(HOLD)
        log(path, "releasing")
        let_go(fd)
        sleep(PAUSE)
    return 0


def once(lock: str, path: str, seconds: float) -> int:
    fd = take(lock)
    log(path, "acquired")
    sleep(seconds)
    log(path, "releasing")
    let_go(fd)
    return 0


def main() -> int:
    def stop(_signum: int, _frame: object) -> None:
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    mode, lock, path = sys.argv[1:4]
    if mode == "loop":
        return loop(lock, path)
    return once(lock, path, float(sys.argv[4]))


if __name__ == "__main__":
    sys.exit(main())
