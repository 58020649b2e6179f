#!/usr/bin/env python3
"""Lock-taking programs for the tests, each run as its own process.

``locker.py MODE PATH [options]`` takes a lock the way a real caller does, prints
``locked <st_ino>`` and then holds it until a line (or EOF) arrives on stdin, or releases it at
once with ``--release``. Modes:

* ``pbs``: Proxmox Backup Server's sequence (``open_file_locked`` + ``lock_helper``): open
  without O_CREAT; on ENOENT mkostemp, fchmod 0660, fchown, renameat2(RENAME_NOREPLACE) (link +
  unlink on EINVAL), retry on EEXIST; flock with LOCK_NB or a repeating timer that interrupts it;
  then the double-stat check.
* ``plain``: ``open(O_RDWR|O_CREAT)`` + ``flock``.
* ``guard``: the proposed ChunkLockGuard: like ``pbs`` but retrying when the double-stat check
  fails; ``--unlink`` unlinks the name right before closing.
* ``posix`` / ``ofd``: ``fcntl`` record locks (process-associated / open file description).

``locker.py bulk DIR COUNT [START]`` takes and releases COUNT distinct chunk locks
(lockfs.pbs_lock.chunk_path: ``DIR/.chunks/<4 hex>/<64 hex>``) with PBS's sequence.

The PBS sequence itself is lockfs.pbs_lock, shared with the benchmark.

Exit codes: 0 done, 3 busy (would block or timed out), 4 the double-stat check failed.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import struct
import sys

if not __package__:  # run as a program (or imported by race.py, a program too)
    # The checkout's lockfs, whatever interpreter or working directory runs this program.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lockfs.pbs_lock import (
    LockBusy,
    LockFileModified,
    chunk_path,
    lock_helper,
    locked_or_closed,
    open_file_locked,
)

#: Exit statuses; the tests import them (tests/support) from here.
EXIT_BUSY = 3
EXIT_MODIFIED = 4


def guard_lock(path: str, owner: tuple[int, int], *, exclusive: bool, timeout: float) -> int:
    """ChunkLockGuard: lock, and retry while the name no longer points at the locked inode."""
    while True:
        fd = open_file_locked(path, owner, exclusive=exclusive, timeout=timeout)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def plain_lock(path: str, *, exclusive: bool, timeout: float) -> int:
    """``open(O_RDWR|O_CREAT)`` + ``flock``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    return locked_or_closed(fd, exclusive=exclusive, timeout=timeout)


def record_lock(path: str, *, exclusive: bool, timeout: float, ofd: bool) -> int:
    """``fcntl`` record lock on the whole file: process-associated, or OFD when ``ofd``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    lock = struct.pack("hhqqi", kind, 0, 0, 0, 0)
    cmd_nb = fcntl.F_OFD_SETLK if ofd else fcntl.F_SETLK
    cmd = fcntl.F_OFD_SETLKW if ofd else fcntl.F_SETLKW
    try:
        if timeout == 0:
            try:
                fcntl.fcntl(fd, cmd_nb, lock)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise LockBusy() from None
                raise
        else:
            fcntl.fcntl(fd, cmd, lock)
    except BaseException:
        os.close(fd)
        raise
    return fd


def take(args: argparse.Namespace) -> int:
    exclusive = not args.shared
    owner = (
        args.uid if args.uid is not None else os.getuid(),
        args.gid if args.gid is not None else os.getgid(),
    )
    if args.mode == "pbs":
        return lock_helper(args.path, owner, exclusive=exclusive, timeout=args.timeout)
    if args.mode == "guard":
        return guard_lock(args.path, owner, exclusive=exclusive, timeout=args.timeout)
    if args.mode == "plain":
        return plain_lock(args.path, exclusive=exclusive, timeout=args.timeout)
    ofd = args.mode == "ofd"
    return record_lock(args.path, exclusive=exclusive, timeout=args.timeout, ofd=ofd)


def bulk(directory: str, count: int, start: int) -> None:
    """Take and release ``count`` distinct chunk locks with PBS's sequence."""
    owner = (os.getuid(), os.getgid())
    for i in range(start, start + count):
        os.close(lock_helper(chunk_path(directory, i), owner))


def main() -> int:
    if sys.argv[1:2] == ["bulk"]:
        bulk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pbs", "guard", "plain", "posix", "ofd"])
    parser.add_argument("path")
    parser.add_argument("--shared", action="store_true")
    parser.add_argument("--timeout", type=float, default=0.0, help="0: non-blocking")
    parser.add_argument("--release", action="store_true", help="release at once, not on stdin")
    parser.add_argument("--unlink", action="store_true", help="unlink the name before closing")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--write", help="append this line to the file while holding the lock")
    args = parser.parse_args()
    try:
        fd = take(args)
    except LockBusy:
        print("busy", flush=True)
        return EXIT_BUSY
    except LockFileModified:
        print("modified", flush=True)
        return EXIT_MODIFIED
    if args.write is not None:
        os.write(fd, args.write.encode() + b"\n")
    print(f"locked {os.fstat(fd).st_ino}", flush=True)
    if not args.release:
        sys.stdin.readline()
    if args.unlink:
        os.unlink(args.path)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
