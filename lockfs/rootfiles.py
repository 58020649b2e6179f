"""Files lockfs writes as root, written so that whoever owns their directory cannot redirect them.

A directory is opened by walking its path from ``/`` one component at a time with
``O_DIRECTORY|O_NOFOLLOW`` (:func:`open_dir`): no symlink is ever followed, in the path or at
its end, so a directory swapped for a symlink is refused (:class:`UnsafePath`), never entered.
Everything in it is then reached through that directory's descriptor:

* a file replaced whole (:func:`replace_file`: the metrics file) is written to a new file with
  a random name, created ``O_CREAT|O_EXCL|O_NOFOLLOW`` (always a new inode of root's, whatever
  the directory's owner planted), and renamed over the name with ``renameat``, which never
  follows a symlink at either name: a planted symlink is replaced, never written through;
* a file appended to (:func:`open_append`: the fallback log) is opened ``O_APPEND|O_NOFOLLOW``
  and must be a regular file.

:func:`private_dir` is a directory that only root can change (``/run/lockfs``: the log files,
and the control sockets, which can only be bound by path): created 0700 when missing, refused
when it is a symlink, not owned by root, or writable by group or others. Its parent (``/run``)
is root's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

#: How a directory on the way is opened: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path lockfs would write as root is not safe to write; the message says why."""


def _refusal(path: str, name: str, dir_fd: int, exc: OSError) -> OSError:
    """Why ``name`` in ``dir_fd`` (``path``) could not be opened as a directory."""
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
            return UnsafePath(
                f"{path} is a symbolic link (lockfs never follows one where it writes as "
                "root: give the path without symlinks)"
            )
    return OSError(exc.errno, exc.strerror, path)


def open_dir(path: str, *, root_only: bool = False) -> int:
    """A descriptor of the directory ``path`` (absolute), opened without following any symlink
    on the way; :class:`UnsafePath` if there is one. ``root_only``: also refuse a directory on
    the way that anyone but root could rename or replace (then ``path`` names the opened
    directory for as long as root alone changes those directories)."""
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path}")
    fd = os.open("/", DIR_FLAGS)
    walked = ""
    try:
        for name in os.path.normpath(path).split("/"):
            if not name:
                continue
            parent, walked = walked or "/", walked + "/" + name
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(walked, name, fd, exc) from None
            who = _replaceable_by(os.fstat(fd), os.fstat(child)) if root_only else None
            os.close(fd)
            fd = child
            if who is not None:
                raise UnsafePath(
                    f"{walked} can be renamed or replaced by {who} (through {parent}): every "
                    "directory on the way must be changeable by root alone"
                )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _replaceable_by(parent: os.stat_result, child: os.stat_result) -> str | None:
    """Who other than root may rename ``child`` in ``parent`` (None: nobody)."""
    if parent.st_uid != 0:
        return f"uid {parent.st_uid}, owner of the directory"
    mode = parent.st_mode
    writers = [f"gid {parent.st_gid}"] if mode & stat.S_IWGRP and parent.st_gid != 0 else []
    writers += ["every user"] if mode & stat.S_IWOTH else []
    if not writers:
        return None
    if mode & stat.S_ISVTX:  # sticky: only the entry's owner (or the directory's) may
        return None if child.st_uid == 0 else f"uid {child.st_uid}, its owner"
    return " and ".join(writers)


def private_dir(path: str) -> int:
    """A descriptor of ``path``, a directory that only root can change: created (0700) when
    missing; :class:`UnsafePath` when it is a symlink, not owned by root, or writable by group
    or others (then the sockets and files lockfs keeps there could be swapped or read)."""
    parent, name = os.path.split(os.path.normpath(path))
    parent_fd = open_dir(parent)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            raise _refusal(path, name, parent_fd, exc) from None
    finally:
        os.close(parent_fd)
    st = os.fstat(fd)
    problem = None
    if st.st_uid != 0:
        problem = f"it is owned by uid {st.st_uid}, not root"
    elif st.st_mode & 0o022:
        problem = f"group or others may write it (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem is not None:
        os.close(fd)
        raise UnsafePath(
            f"{path} is not safe for lockfs's control sockets and log files: {problem}; it "
            "must be a directory of root's that nobody else can write (chmod 0700)"
        )
    return fd


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Replace the file ``path`` (absolute) by one holding ``data`` with ``mode``, atomically
    (a reader sees the old file or the new one), without following any symlink."""
    directory, name = os.path.split(path)
    dir_fd = open_dir(directory)
    temporary = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, mode, dir_fd=dir_fd)
        try:
            try:
                os.fchmod(fd, mode)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            # The name is in the directory's owner's hands by now: whatever it is, it goes.
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def open_append(dir_fd: int, name: str, mode: int) -> int:
    """A descriptor appending to the regular file ``name`` in ``dir_fd`` (created with
    ``mode`` when missing), never opened through a symlink."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{name} is a symbolic link: not opened") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{name} is not a regular file: not opened")
    return fd
