"""Proxmox Backup Server's way of taking a lock, system call for system call.

lockfs must serve these calls unchanged (the callers are not modified). The benchmark's cold
cycle (lockfs.bench.workers) and the test suite's lock-taking program (tests/helpers/locker.py)
both use this one implementation, so the benchmark times exactly what the tests prove correct.

* :func:`create_dir_all`: Rust's ``std::fs::create_dir_all`` of the lock's directory;
* :func:`open_file_locked`: PBS's ``open_file_locked``: ``open`` without ``O_CREAT``; on ENOENT
  ``mkostemp``, ``fchmod 0660``, ``fchown``, ``renameat2(RENAME_NOREPLACE)`` (``link`` +
  ``unlink`` on EINVAL), back to ``open``'s result on EEXIST; then ``flock``, with ``LOCK_NB``
  for timeout 0 or interrupted by a repeating timer signal;
* :func:`lock_helper`: the same, then the double-stat check (no retry);
* :func:`chunk_path`: where the lock of chunk number N lives (``.chunks/<4 hex>/<64 hex>``).

The lock is released by closing the returned descriptor, as PBS does.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal

from .linux import RENAME_NOREPLACE, flock, mkostemp, renameat2

#: PBS's timer fires every 10 ms after the first expiry, until flock is interrupted.
TIMER_INTERVAL = 0.01


class LockBusy(Exception):
    """Someone else holds the lock: flock would block (timeout 0) or the timeout passed."""


class LockFileModified(Exception):
    """The double-stat check failed: the name no longer leads to the inode that was locked."""


def create_dir_all(path: str) -> None:
    """Rust's ``std::fs::create_dir_all``, as PBS calls it before every lock.

    ``mkdir`` first; an existing directory is fine (checked with ``stat``), a missing parent is
    created recursively and the ``mkdir`` repeated.
    """
    try:
        os.mkdir(path, 0o777)
        return
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.isdir(path):
            return
        raise
    create_dir_all(os.path.dirname(path))
    try:
        os.mkdir(path, 0o777)
    except OSError:
        if not os.path.isdir(path):
            raise


def flock_with_timeout(fd: int, *, exclusive: bool = True, timeout: float = 0.0) -> None:
    """flock like PBS: ``LOCK_NB`` for timeout 0, else a timer whose signal interrupts a
    blocking flock (PBS: ``timer_create``, signal 36, no ``SA_RESTART``; here ``SIGALRM``).
    Raises :class:`LockBusy` when the lock is held elsewhere for longer than ``timeout``."""
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if timeout == 0:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy() from None
        return
    # The handler does nothing: the signal only interrupts the raw flock() call with EINTR
    # (lockfs.linux.flock does not retry it, unlike fcntl.flock).
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.siginterrupt(signal.SIGALRM, True)
    signal.setitimer(signal.ITIMER_REAL, timeout, TIMER_INTERVAL)
    try:
        try:
            flock(fd, op)
        except InterruptedError:
            raise LockBusy() from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def locked_or_closed(fd: int, *, exclusive: bool = True, timeout: float = 0.0) -> int:
    """:func:`flock_with_timeout` on ``fd``, and ``fd``; closed if it could not be locked."""
    try:
        flock_with_timeout(fd, exclusive=exclusive, timeout=timeout)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create(path: str, owner: tuple[int, int]) -> int | None:
    """Create the lock file by renaming a finished temporary file onto ``path``; its fd, or
    None when another process created ``path`` first."""
    fd, tmp = mkostemp(path + ".tmp_")
    try:
        os.fchmod(fd, 0o660)
        os.fchown(fd, *owner)
        try:
            renameat2(tmp, path, RENAME_NOREPLACE)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a filesystem without RENAME_NOREPLACE
                raise
            os.link(tmp, path)
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_locked(
    path: str, owner: tuple[int, int], *, exclusive: bool = True, timeout: float = 0.0
) -> int:
    """PBS's ``open_file_locked`` (``open_backup_lockfile``): the lock file's fd, locked.

    ``owner`` is the (uid, gid) a new lock file gets (PBS: backup:backup).
    """
    create_dir_all(os.path.dirname(path))
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_APPEND)
        except FileNotFoundError:
            created = _create(path, owner)
            if created is None:
                continue  # another process won the race: use its file
            fd = created
        return locked_or_closed(fd, exclusive=exclusive, timeout=timeout)


def lock_helper(
    path: str, owner: tuple[int, int], *, exclusive: bool = True, timeout: float = 0.0
) -> int:
    """PBS's ``lock_helper``: :func:`open_file_locked`, then the double-stat check (the
    locked inode must still be the one ``path`` names), with no retry."""
    fd = open_file_locked(path, owner, exclusive=exclusive, timeout=timeout)
    try:
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise LockFileModified(f"{path}: another process replaced the lock file")
    except FileNotFoundError:
        os.close(fd)
        raise LockFileModified(f"{path}: another process removed the lock file") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunk_digest(index: int) -> str:
    """A stand-in chunk digest (64 hex digits) for chunk number ``index``: the SHA-256 of the
    index, so digests spread like real ones and the same index gives the same digest."""
    return hashlib.sha256(index.to_bytes(8, "little")).hexdigest()


def chunk_path(root: str | os.PathLike[str], index: int) -> str:
    """The lock path of chunk number ``index`` below a datastore's lock directory ``root``:
    ``<root>/.chunks/<first 4 hex>/<64 hex digest>``, as PBS lays them out."""
    digest = chunk_digest(index)
    return f"{os.fspath(root)}/.chunks/{digest[:4]}/{digest}"
