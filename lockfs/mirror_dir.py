"""A mount's data mirror directory, ``<data_dir>/<escaped mountpoint>/``: its name, and which
daemon writes to it.

The daemon holds an exclusive flock on the directory while it serves (:meth:`MirrorDir.open`),
so two daemons never write to one directory. A daemon still holding it when a new mount at the
path starts serves a mount no longer there (unmounted lazily, or kept by another mount
namespace): the new daemon reads it (``held_fd``), then :meth:`MirrorDir.replacement` swaps in
a copy it wrote from its table. ``data_dir`` is opened as lockfs.mirror_fds says; the mount's
directory is root's, not writable by group or others, and created 0700. No FUSE imports.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator

from .control import escape_path
from .linux import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from .mirror_fds import check_private, open_private_dir, try_lock
from .restore import MirrorError
from .rootfiles import DIR_FLAGS

#: How long a starting daemon waits for a daemon that is still exiting (``systemctl restart``
#: starts the new mount at once) to let go of the mount's directory before taking it over.
LOCK_WAIT = 2.0
#: Names of new directories being filled before they replace a mount's (never an escaped path).
NEW_PREFIX = ".lockfs-new-"
#: Longer mount directory names keep a readable prefix and end in a hash of the mountpoint.
MAX_NAME = 255


def mirror_name(mountpoint: str) -> str:
    """The name of the directory that mirrors the mount at ``mountpoint`` in ``data_dir``."""
    name = escape_path(mountpoint)
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    prefix = name.encode()[: MAX_NAME - len(digest) - 1].decode(errors="ignore")
    return f"{prefix}-{digest}"


def mirror_path(data_dir: str, mountpoint: str) -> str:
    """Where the mount at ``mountpoint`` (resolved, as the daemon has it) keeps its data."""
    return os.path.join(data_dir, mirror_name(mountpoint))


def discard(data_dir: str, mountpoint: str) -> bool:
    """Remove what an earlier mount at ``mountpoint`` kept in ``data_dir``: ``lockfs
    switch-over`` does, because the plain directory it replaces was used since and is what
    counts. Whether there was anything."""
    path = mirror_path(data_dir, mountpoint)
    if not os.path.lexists(path):
        return False
    shutil.rmtree(path)  # never follows a symlink
    return True


class MirrorDir:
    """The mount's directory in ``data_dir`` and the descriptors this daemon has of it:
    ``root_fd`` the one it writes to (flocked while it does), or -1; ``held_fd`` the one a
    daemon still alive holds (read, then taken over), or -1."""

    def __init__(self, data_dir: str, mountpoint: str, *, lock_wait: float = LOCK_WAIT) -> None:
        self.data_dir = data_dir
        self.path = mirror_path(data_dir, mountpoint)
        self.lock_wait = lock_wait
        self.name = os.path.basename(self.path)
        self.base_fd = -1
        self.root_fd = -1
        self.held_fd = -1

    def open(self) -> None:
        """Open (creating) the mount's directory and lock it; raises :class:`MirrorError`.

        A daemon that is exiting lets go within :data:`LOCK_WAIT`. One that still holds it
        then serves a mount no longer at this path (unmounted lazily, or kept alive by another
        mount namespace: the caller checked that no lockfs is mounted here): its directory
        becomes ``held_fd``, to be read and taken over."""
        self.base_fd = open_private_dir(self.data_dir)
        try:
            self._remove_leftovers()
            deadline = time.monotonic() + self.lock_wait
            while True:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.name, 0o700, dir_fd=self.base_fd)
                fd = os.open(self.name, DIR_FLAGS, dir_fd=self.base_fd)
                check_private(fd, self.path)
                locked = try_lock(fd)
                if locked and os.fstat(fd).st_nlink > 0:
                    self.root_fd = fd  # not removed by a daemon that let go just now
                    return
                if not locked and time.monotonic() > deadline:
                    self.held_fd = fd
                    return
                os.close(fd)
                time.sleep(0.02)
        except OSError as exc:
            self.close()
            raise MirrorError(f"cannot use {self.path}: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise

    def _remove_leftovers(self) -> None:
        """Remove what a takeover that was interrupted left (a copy nobody holds)."""
        for name in os.listdir(self.base_fd):
            if not name.startswith(NEW_PREFIX):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(name, DIR_FLAGS, dir_fd=self.base_fd)
                try:
                    if try_lock(fd):
                        shutil.rmtree(name, dir_fd=self.base_fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        """Let go of the mirror; its directory goes if it holds nothing and is still this
        daemon's (else it stays for the next mount to restore)."""
        if self.root_fd >= 0:
            with contextlib.suppress(OSError):  # not empty: kept for the next mount
                if self._is_current(self.root_fd):
                    os.rmdir(self.name, dir_fd=self.base_fd)
        for fd in (self.root_fd, self.held_fd, self.base_fd):
            if fd >= 0:
                os.close(fd)
        self.root_fd = self.held_fd = self.base_fd = -1

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is the directory the mount's name leads to."""
        try:
            st = os.stat(self.name, dir_fd=self.base_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def let_go_if_removed(self) -> bool | None:
        """Before a change: None while ``root_fd`` is still in place. Else this daemon lets
        go of it, and the answer is whether the name is free (removed by hand: True) or
        another daemon's (it took the directory over: False). Raises OSError."""
        if os.fstat(self.root_fd).st_nlink:
            return None
        os.close(self.root_fd)
        self.root_fd = -1
        try:
            os.stat(self.name, dir_fd=self.base_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return False

    @contextlib.contextmanager
    def replacement(self, *, exchange: bool) -> Iterator[None]:
        """A new directory becomes ``root_fd`` for the caller to fill; then it is put in place:
        swapped with the held one (which is then removed), or under the missing name. If
        anything fails, the new directory is removed and ``root_fd`` is -1."""
        fresh = f"{NEW_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        os.mkdir(fresh, 0o700, dir_fd=self.base_fd)
        fd = os.open(fresh, DIR_FLAGS, dir_fd=self.base_fd)
        try_lock(fd)  # a new directory: nobody else has it
        self.root_fd = fd
        try:
            yield
            flags = RENAME_EXCHANGE if exchange else RENAME_NOREPLACE
            renameat2(fresh, self.name, flags, old_dir_fd=self.base_fd, new_dir_fd=self.base_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(fresh, dir_fd=self.base_fd)
            os.close(fd)
            self.root_fd = -1
            raise
        if exchange:  # the held directory now has the fresh name; its daemon's changes vanish
            with contextlib.suppress(OSError):
                shutil.rmtree(fresh, dir_fd=self.base_fd)

    def let_go_of_held(self) -> None:
        """After a takeover: the directory the other daemon holds is no longer read."""
        os.close(self.held_fd)
        self.held_fd = -1
