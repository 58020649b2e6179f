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
(``DIR/.chunks/<4 hex>/<64 hex>``) with PBS's sequence.

Exit codes: 0 done, 3 busy (would block or timed out), 4 the double-stat check failed.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import signal
import sys
import tempfile

AT_FDCWD = -100
RENAME_NOREPLACE = 1
EXIT_BUSY = 3
EXIT_MODIFIED = 4

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
libc.flock.argtypes = [ctypes.c_int, ctypes.c_int]


class Busy(Exception):
    pass


class Modified(Exception):
    pass


def renameat2_noreplace(old: str, new: str) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), RENAME_NOREPLACE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), new)


def flock_with_timeout(fd: int, exclusive: bool, timeout: float) -> None:
    """flock like PBS: LOCK_NB for timeout 0, else a timer whose signal interrupts flock."""
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if timeout == 0:
        if libc.flock(fd, op | fcntl.LOCK_NB):
            code = ctypes.get_errno()
            if code == errno.EWOULDBLOCK:
                raise Busy()
            raise OSError(code, os.strerror(code))
        return
    # The handler does nothing; the signal only interrupts the raw flock() call with EINTR
    # (ctypes does not retry it), like PBS's timer_create(signal 36) without SA_RESTART.
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.siginterrupt(signal.SIGALRM, True)
    signal.setitimer(signal.ITIMER_REAL, timeout, 0.01)
    try:
        if libc.flock(fd, op):
            code = ctypes.get_errno()
            if code == errno.EINTR:
                raise Busy()
            raise OSError(code, os.strerror(code))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def open_file_locked(path: str, exclusive: bool, timeout: float, owner: tuple[int, int]) -> int:
    """PBS's ``open_backup_lockfile``: returns the fd, locked."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_APPEND)
        except FileNotFoundError:
            fd, tmp = tempfile.mkstemp(
                prefix=os.path.basename(path) + ".tmp_", dir=os.path.dirname(path)
            )
            os.fchmod(fd, 0o660)
            os.fchown(fd, *owner)
            try:
                try:
                    renameat2_noreplace(tmp, path)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    os.link(tmp, path)
                    os.unlink(tmp)
            except FileExistsError:
                os.unlink(tmp)
                os.close(fd)
                continue
        return locked_or_closed(fd, exclusive, timeout)


def locked_or_closed(fd: int, exclusive: bool, timeout: float) -> int:
    """flock ``fd`` and return it; close it if locking fails."""
    try:
        flock_with_timeout(fd, exclusive, timeout)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_helper(path: str, exclusive: bool, timeout: float, owner: tuple[int, int]) -> int:
    """PBS's double-stat check after locking: no retry."""
    fd = open_file_locked(path, exclusive, timeout, owner)
    try:
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise Modified()
    except (FileNotFoundError, Modified):
        os.close(fd)
        raise Modified() from None
    return fd


def guard_lock(path: str, exclusive: bool, timeout: float, owner: tuple[int, int]) -> int:
    """ChunkLockGuard: lock, and retry while the name no longer points at the locked inode."""
    while True:
        fd = open_file_locked(path, exclusive, timeout, owner)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def plain_lock(path: str, exclusive: bool, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    return locked_or_closed(fd, exclusive, timeout)


def record_lock(path: str, exclusive: bool, timeout: float, ofd: bool) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    import struct

    lock = struct.pack("hhqqi", kind, 0, 0, 0, 0)
    cmd_nb = fcntl.F_OFD_SETLK if ofd else fcntl.F_SETLK
    cmd = fcntl.F_OFD_SETLKW if ofd else fcntl.F_SETLKW
    try:
        if timeout == 0:
            try:
                fcntl.fcntl(fd, cmd_nb, lock)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise Busy() from None
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
        return lock_helper(args.path, exclusive, args.timeout, owner)
    if args.mode == "guard":
        return guard_lock(args.path, exclusive, args.timeout, owner)
    if args.mode == "plain":
        return plain_lock(args.path, exclusive, args.timeout)
    return record_lock(args.path, exclusive, args.timeout, ofd=args.mode == "ofd")


def bulk(directory: str, count: int, start: int) -> None:
    """Take and release ``count`` distinct chunk locks with PBS's sequence."""
    for i in range(start, start + count):
        digest = f"{i:064x}"
        path = os.path.join(directory, ".chunks", digest[-4:], digest)
        os.close(lock_helper(path, True, 0, (os.getuid(), os.getgid())))


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
    except Busy:
        print("busy", flush=True)
        return EXIT_BUSY
    except Modified:
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
