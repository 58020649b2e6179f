"""A directory tree that others may write, read and removed by root through directory
descriptors only (what ``lockfs switch-over`` does with a plain lock directory).

What it keeps, whatever the tree's writers do meanwhile (rename, replace an entry by a symlink,
a FIFO or another file):

* Nothing outside the tree is ever opened, read, changed or removed. The tree is reached from
  one opened root (lockfs.rootfiles.open_dir follows no symlink on the way there); every
  directory below it is opened relative to its parent's descriptor with ``O_NOFOLLOW`` and
  must be the directory the scan saw (same device and inode); a file is opened with
  ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO never blocks) and must be the regular file the scan saw.
* Reading is bounded: at most ``limit`` bytes (more is refused), never until memory runs out.
* Symlinks, FIFOs, sockets and device nodes are never followed or opened: the scan names each
  as a problem.
* Removal descends only into directories the scan saw; anything else is left and reported.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

#: Opening a directory of the tree: never through a symlink, never blocking.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Opening a data file of the tree: never through a symlink, a FIFO does not block.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: Directory levels a scan descends at most (one descriptor per level is open).
MAX_SCAN_DEPTH = 128
_READ_CHUNK = 1 << 20


class Changed(Exception):
    """An entry of the tree is not (or no longer) what it must be; the message names it."""


@dataclass
class Entry:
    """One entry of the tree: its path relative to the tree's root, and its lstat."""

    rel: str
    st: os.stat_result


@dataclass
class Tree:
    """A directory's contents as one scan saw them, without following symlinks or crossing
    mounts. ``shown_as`` is the path messages give for the root."""

    shown_as: str
    root_st: os.stat_result
    dirs: list[Entry] = field(default_factory=list)
    #: Regular files holding data.
    data: list[Entry] = field(default_factory=list)
    #: Empty regular files.
    empty: list[Entry] = field(default_factory=list)
    #: What is neither a directory nor a regular file with one link, or on another filesystem,
    #: or too deep: one message each, naming the path.
    problems: list[str] = field(default_factory=list)

    def path_of(self, rel: str) -> str:
        return os.path.join(self.shown_as, rel) if rel else self.shown_as

    def paths_by_inode(self) -> dict[int, str]:
        """Every entry's inode number and path relative to the root (``.`` for the root)."""
        paths = {e.st.st_ino: e.rel for e in (*self.dirs, *self.data, *self.empty)}
        paths[self.root_st.st_ino] = "."
        return paths

    def dir_stats(self) -> dict[str, os.stat_result]:
        """Each directory's lstat by its relative path (the root's is ``""``)."""
        return {"": self.root_st, **{e.rel: e.st for e in self.dirs}}


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def kind_of(mode: int) -> str:
    """What a file type is called in messages."""
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISREG, "regular file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "file of unknown type"


def _kind_at(dir_fd: int, name: str) -> str:
    """What ``name`` in ``dir_fd`` is (not followed), in words; ``?`` if it cannot be seen."""
    try:
        return kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return "?"


def open_problem(dir_fd: int, name: str, path: str, exc: OSError, now: str = "") -> str:
    """Why opening ``name`` in ``dir_fd`` (``path``) with ``O_NOFOLLOW`` failed, in words
    (``now``: " now" for an entry that was something else a moment before)."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{path} is a {_kind_at(dir_fd, name)}{now}"
    if exc.errno == errno.ENOENT:
        return f"{path} is gone" if now else f"{path} does not exist"
    return f"{path} cannot be opened{now}: {exc.strerror}"


def open_dir_at(dir_fd: int, name: str, expected: os.stat_result, shown: str) -> int:
    """Open directory ``name`` in ``dir_fd``; it must be the one the scan saw (``expected``)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise Changed(open_problem(dir_fd, name, shown, exc, " now")) from None
    if not same_file(os.fstat(fd), expected):
        os.close(fd)
        raise Changed(f"{shown} was replaced by another directory")
    return fd


def scan(root_fd: int, shown_as: str) -> Tree:
    """Walk the directory open at ``root_fd`` and sort its entries; see :class:`Tree`."""
    tree = Tree(shown_as, os.fstat(root_fd))
    _scan_dir(tree, root_fd, "", 0)
    tree.dirs.sort(key=lambda e: e.rel)
    return tree


def _scan_dir(tree: Tree, dir_fd: int, rel_dir: str, depth: int) -> None:
    with os.scandir(dir_fd) as listing:
        children = sorted(listing, key=lambda e: e.name)
    for child in children:
        rel = os.path.join(rel_dir, child.name)
        shown = tree.path_of(rel)
        try:
            st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            tree.problems.append(f"{shown} vanished while it was scanned")
            continue
        if st.st_dev != tree.root_st.st_dev:
            tree.problems.append(f"{shown} is on another filesystem (a mount inside)")
        elif stat.S_ISDIR(st.st_mode):
            if depth + 1 > MAX_SCAN_DEPTH:
                tree.problems.append(f"{shown} is more than {MAX_SCAN_DEPTH} levels deep")
                continue
            try:
                sub = open_dir_at(dir_fd, child.name, st, shown)
            except Changed as exc:
                tree.problems.append(str(exc))
                continue
            tree.dirs.append(Entry(rel, st))
            try:
                _scan_dir(tree, sub, rel, depth + 1)
            finally:
                os.close(sub)
        elif not stat.S_ISREG(st.st_mode):
            tree.problems.append(
                f"{shown} is a {kind_of(st.st_mode)} (only directories and regular files "
                "are carried over)"
            )
        elif st.st_size == 0:
            tree.empty.append(Entry(rel, st))
        elif st.st_nlink > 1:
            tree.problems.append(f"{shown} holds data and has {st.st_nlink} hard links")
        else:
            tree.data.append(Entry(rel, st))


def read_data(root_fd: int, tree: Tree, entry: Entry, limit: int) -> bytes:
    """The content of data file ``entry`` of ``tree`` (open at ``root_fd``), at most ``limit``
    bytes; every directory on the way and the file itself must be what the scan saw."""
    parts = entry.rel.split(os.sep)
    dirs = tree.dir_stats()
    opened: list[int] = []
    try:
        fd = root_fd
        for depth in range(1, len(parts)):
            rel_dir = os.path.join(*parts[:depth])
            fd = open_dir_at(fd, parts[depth - 1], dirs[rel_dir], tree.path_of(rel_dir))
            opened.append(fd)
        return _read_file(fd, parts[-1], entry.st, tree.path_of(entry.rel), limit)
    finally:
        for fd in opened:
            os.close(fd)


def _read_file(dir_fd: int, name: str, expected: os.stat_result, shown: str, limit: int) -> bytes:
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise Changed(open_problem(dir_fd, name, shown, exc, " now")) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Changed(f"{shown} is a {kind_of(st.st_mode)} now")
        if not same_file(st, expected):
            raise Changed(f"{shown} was replaced by another file")
        chunks, size = [], 0
        while chunk := os.read(fd, min(_READ_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise Changed(f"{shown} grew beyond max_file_size ({limit} bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_contents(root_fd: int, tree: Tree) -> list[str]:
    """Remove everything in the directory open at ``root_fd``, descending only into the
    directories the scan saw; what is left, one line each (empty when all went)."""
    known = {(e.st.st_dev, e.st.st_ino): e.st for e in tree.dirs}
    return _remove_in(root_fd, "", tree, known)


def _remove_in(
    dir_fd: int, rel_dir: str, tree: Tree, known: dict[tuple[int, int], os.stat_result]
) -> list[str]:
    left: list[str] = []
    with os.scandir(dir_fd) as listing:
        children = list(listing)
    for child in children:
        rel = os.path.join(rel_dir, child.name)
        shown = tree.path_of(rel)
        try:
            st = child.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(child.name, dir_fd=dir_fd)
                continue
            expected = known.get((st.st_dev, st.st_ino))
            if expected is None:
                left.append(f"{shown} (a directory that was not there when it was checked)")
                continue
            sub = open_dir_at(dir_fd, child.name, expected, shown)
            try:
                below = _remove_in(sub, rel, tree, known)
            finally:
                os.close(sub)
            if below:
                left += below
            else:
                os.rmdir(child.name, dir_fd=dir_fd)
        except Changed as exc:
            left.append(str(exc))
        except OSError as exc:
            left.append(f"{shown} ({exc.strerror})")
    return left
