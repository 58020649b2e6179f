"""Reading a data mirror (lockfs.persist) back into a fresh node table, at mount.

:func:`scan` reads the mirror directory: each directory before what it holds, each file as its
data without holes; empty files and directories left without files are removed (an empty file
vanishes, as in the mount). :func:`load` creates them in the table through the table's own
request methods (mkdir, create, write, setattr, release, then forget of every reference those
took), so the invariants hold as after any requests: the restored nodes have no kernel
references and nothing open, the files hold data and are never idle, and their directories
hold them and stay. Anything the table cannot take (a file over ``max_file_size``, deeper than
``max_depth``, more than ``max_entries``, anything but a regular file or directory) raises
:class:`MirrorError` naming it and what to do: nothing is dropped silently. No FUSE imports.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from .nodes import ROOT_INO, FsError, Node, NodeTable
from .rootfiles import DIR_FLAGS

#: Files are read (and copied) in pieces of this size.
CHUNK = 1 << 20


class MirrorError(Exception):
    """The mirror cannot be used (unsafe or unrestorable): the mount fails with this text."""


@dataclass
class Restored:
    """What :func:`load` put in the table."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0


@dataclass
class MirrorEntry:
    """A directory, or a regular file with its data as ``(offset, bytes)`` pieces, at
    ``names`` below the mirror's root."""

    names: tuple[bytes, ...]
    st: os.stat_result
    segments: list[tuple[int, bytes]] = field(default_factory=list)


def _shown(root: str, names: tuple[bytes, ...]) -> str:
    return os.path.join(root, os.fsdecode(b"/".join(names)))


def scan(
    dir_fd: int, root: str, *, prune: bool, names: tuple[bytes, ...] = ()
) -> list[MirrorEntry]:
    """The entries below ``dir_fd`` (the mirror ``root``, for messages), each directory before
    what it holds; empty files and directories left without files are removed if ``prune``."""
    found: list[MirrorEntry] = []
    for name in sorted(os.listdir(dir_fd)):
        path = (*names, os.fsencode(name))
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                below = scan(fd, root, prune=prune, names=path)
            finally:
                os.close(fd)
            if below:
                found.append(MirrorEntry(path, st))
                found += below
            elif prune:
                os.rmdir(name, dir_fd=dir_fd)
        elif stat.S_ISREG(st.st_mode):
            if st.st_size:
                found.append(MirrorEntry(path, st, _segments(dir_fd, name)))
            elif prune:
                os.unlink(name, dir_fd=dir_fd)
        else:
            raise MirrorError(
                f"{_shown(root, path)} is not a regular file or directory, which lockfs never "
                f"keeps there: move it out of {root}, then mount again"
            )
    return found


def _segments(dir_fd: int, name: str) -> list[tuple[int, bytes]]:
    """A file's data, without its holes: ``(offset, bytes)`` pieces."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        segments: list[tuple[int, bytes]] = []
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    break
                segments.append((offset, data))
                offset += len(data)
            if offset < end:  # shrank while read
                break
        return segments
    finally:
        os.close(fd)


def load(table: NodeTable, entries: list[MirrorEntry], root: str) -> Restored:
    """Create ``entries`` (from :func:`scan` of the mirror ``root``) in the fresh ``table``."""
    done = Restored()
    made: list[Node] = []
    inos: dict[tuple[bytes, ...], int] = {(): ROOT_INO}
    try:
        for entry in entries:
            try:
                node = _load_entry(table, inos[entry.names[:-1]], entry)
            except FsError as exc:
                raise MirrorError(_unrestorable(root, entry, exc.errno)) from None
            made.append(node)
            inos[entry.names] = node.ino
            if node.children is not None:
                done.dirs += 1
            else:
                done.files += 1
                done.bytes += entry.st.st_size
    finally:
        # The kernel never saw these nodes: drop the references the requests took.
        for node in reversed(made):
            table.forget(node.ino, 1)
    return done


def _load_entry(table: NodeTable, parent: int, entry: MirrorEntry) -> Node:
    st = entry.st
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        node = table.mkdir(parent, entry.names[-1], mode, st.st_uid, st.st_gid)
        return table.setattr(node.ino, mode=mode, uid=st.st_uid, gid=st.st_gid)
    if st.st_size > table.limits.max_file_size:
        raise FsError(errno.EFBIG)
    node = table.create(parent, entry.names[-1], mode, st.st_uid, st.st_gid)
    for offset, data in entry.segments:
        table.write(node.ino, offset, data)
    table.setattr(
        node.ino,
        size=st.st_size,
        mode=mode,
        uid=st.st_uid,
        gid=st.st_gid,
        atime_ns=st.st_mtime_ns,
        mtime_ns=st.st_mtime_ns,
    )
    table.release(node.ino)
    return node


def _unrestorable(root: str, entry: MirrorEntry, code: int) -> str:
    why = {
        errno.EFBIG: "it is larger than max_file_size",
        errno.ENAMETOOLONG: "it is deeper than max_depth",
        errno.ENOSPC: "the mount would hold more than max_entries entries",
    }.get(code, os.strerror(code))
    return (
        f"cannot restore {_shown(root, entry.names)}: {why}. Change the mount option, or move "
        f"it out of {root} if it is not needed, then mount again"
    )
