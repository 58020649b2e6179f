"""The descriptors a data mirror (lockfs.persist) is written through: nothing is ever reached
by a path that anyone but root could redirect.

* :func:`open_private_dir` opens ``data_dir``: every directory on the way one that nobody but
  root can rename or replace (lockfs.rootfiles.open_dir), missing ones created 0700, and the
  directory itself root's and not writable by group or others (:func:`check_private`).
* Below it, every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``
  (:func:`open_chain`): a :class:`Chain` of them, which knows the directories it made for one
  change (:meth:`Chain.undo` removes them) and removes those a change left empty
  (:meth:`Chain.prune`).
* :func:`pwrite_all` and :func:`cut_to` write a file's bytes and give it its old size back.

Knows nothing of the node table. No FUSE imports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import rootfiles
from .restore import MirrorError
from .rootfiles import DIR_FLAGS

log = logging.getLogger(__name__)


class MirrorDirectory(Protocol):
    """What a mirror directory is made with: the table's directory node."""

    @property
    def name(self) -> bytes: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def mode(self) -> int: ...


def try_lock(fd: int) -> bool:
    """An exclusive flock on ``fd`` if nobody else holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def check_private(fd: int, shown: str) -> None:
    """``fd`` must be a directory owned by root and not writable by group or others."""
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise MirrorError(
            f"{shown} is not safe for data kept across restarts: it must be owned by root and "
            f"writable only by root (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )


def open_private_dir(path: str) -> int:
    """``path``, a directory that root alone can change, opened without following a symlink
    and created (0700, with missing parents) when missing: every directory on the way must be
    one that nobody but root can rename or replace (lockfs.rootfiles.open_dir), and ``path``
    as :func:`check_private` says. Raises :class:`MirrorError`."""
    path = os.path.normpath(path)
    try:
        try:
            parent_fd = rootfiles.open_dir(os.path.dirname(path), root_only=True)
        except FileNotFoundError:
            os.close(open_private_dir(os.path.dirname(path)))
            parent_fd = rootfiles.open_dir(os.path.dirname(path), root_only=True)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.basename(path), 0o700, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        fd = rootfiles.open_dir(path, root_only=True)
    except rootfiles.UnsafePath as exc:
        raise MirrorError(f"{exc}; data_dir must be such a directory") from None
    except OSError as exc:
        raise MirrorError(f"cannot open {exc.filename or path}: {exc.strerror}") from None
    try:
        check_private(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def cut_to(fd: int, size: int) -> None:
    """Give the file its old size back (a truncate to the same size would touch its mtime)."""
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)


@dataclass
class Chain:
    """Open descriptors of mirror directories: ``fds[0]`` the mount's directory (not ours to
    close), ``fds[i]`` the directory named ``names[i - 1]`` in ``fds[i - 1]``. The last
    ``created`` of them were made for this change (undone by :meth:`undo`). ``extra``: other
    descriptors opened for the change, closed with the chain."""

    fds: list[int]
    names: list[bytes] = field(default_factory=list)
    created: int = 0
    extra: list[int] = field(default_factory=list)

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def keep(self, fd: int) -> int:
        self.extra.append(fd)
        return fd

    def close(self) -> None:
        for fd in [*self.extra, *self.fds[1:]]:
            os.close(fd)
        del self.fds[1:]
        self.extra.clear()

    def undo(self) -> None:
        """Remove the directories made for this change (deepest first)."""
        for depth in range(len(self.names), len(self.names) - self.created, -1):
            os.rmdir(self.names[depth - 1], dir_fd=self.fds[depth - 1])
        self.created = 0

    def prune(self) -> None:
        """Remove the directories left empty, from the deepest up (the mount's stays)."""
        for depth in range(len(self.names), 0, -1):
            try:
                os.rmdir(self.names[depth - 1], dir_fd=self.fds[depth - 1])
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    log.warning("cannot remove an empty mirror directory: %s", exc.strerror)
                return


def open_chain(root_fd: int, dirs: Sequence[MirrorDirectory], *, create: bool) -> Chain | None:
    """The directories ``dirs`` below the mount's directory ``root_fd``, opened one by one;
    a missing one is made with its directory's owner and mode, or (unless ``create``) the
    answer is None. A failure removes what was made and closes what was opened."""
    chain = Chain([root_fd])
    try:
        for directory in dirs:
            name = directory.name
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=chain.fd)
            except FileNotFoundError:
                if not create:
                    chain.close()
                    return None
                os.mkdir(name, 0o700, dir_fd=chain.fd)
                chain.created += 1
                fd = os.open(name, DIR_FLAGS, dir_fd=chain.fd)
                chain.fds.append(fd)
                chain.names.append(name)
                os.fchown(fd, directory.uid, directory.gid)
                os.fchmod(fd, stat.S_IMODE(directory.mode))
                continue
            chain.fds.append(fd)
            chain.names.append(name)
        return chain
    except BaseException:
        if chain.created:
            with contextlib.suppress(OSError):
                chain.undo()
        chain.close()
        raise
