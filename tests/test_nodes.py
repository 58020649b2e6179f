"""Unit tests of the node table (no FUSE): names, references, errors and the reclaim rules."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FakeClock, FakeWallClock

from lockfs.nodes import (
    LIMIT_LOG_INTERVAL,
    LISTED_PER_REQUEST,
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Capacity,
    FsError,
    Limits,
    Node,
    NodeTable,
    ReclaimPolicy,
)
from lockfs.tablecheck import TableInconsistent

FILE_DELAY = 0.5
DIR_GRACE = 10.0
UID = 1000
GID = 1000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


@pytest.fixture
def table(clock: FakeClock) -> NodeTable:
    return NodeTable(
        policy=ReclaimPolicy(file_delay=FILE_DELAY, dir_grace=DIR_GRACE),
        clock=clock,
        wall_clock_ns=FakeWallClock(),
    )


def fails(code: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Assert that ``fn(*args, **kwargs)`` raises :class:`FsError` with ``code``."""
    with pytest.raises(FsError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, errno.errorcode.get(info.value.errno)


def make_file(table: NodeTable, name: bytes, parent: int = ROOT_INO, data: bytes = b"") -> Node:
    """Create, optionally fill, and close a file; the kernel keeps its one lookup."""
    node = table.create(parent, name, 0o644, UID, GID)
    if data:
        assert table.write(node.ino, 0, data) == len(data)
    table.release(node.ino)
    return node


def names(table: NodeTable, ino: int = ROOT_INO) -> set[bytes]:
    node = table.get(ino)
    assert node.children is not None
    return set(node.children)


def kernel_forgets(table: NodeTable, node: Node) -> None:
    """The kernel drops every lookup reference it holds on ``node``."""
    table.forget(node.ino, node.lookups)


def limited(clock: FakeClock, **limits: int) -> NodeTable:
    """A table with the given :class:`Limits`."""
    return NodeTable(
        policy=ReclaimPolicy(file_delay=FILE_DELAY, dir_grace=DIR_GRACE),
        limits=Limits(**limits),
        clock=clock,
        wall_clock_ns=FakeWallClock(),
    )


# ----------------------------------------------------------------- errors and names


def test_fs_error_carries_errno() -> None:
    """FsError exposes the errno the adapter replies with."""
    exc = FsError(errno.ENOENT)
    assert exc.errno == errno.ENOENT
    assert "No such file" in str(exc)


def test_root_is_a_directory_that_is_its_own_parent(table: NodeTable) -> None:
    """The root has inode 1, is a directory and ``..`` of itself; it is never idle."""
    root = table.get(ROOT_INO)
    assert root is table.root and root.is_dir and root.parent is root
    assert stat.S_ISDIR(root.mode) and root.nlink == 2
    assert table.next_deadline() is None and table.idle_count == 0
    table.check()


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_invalid_names_are_refused(table: NodeTable, name: bytes) -> None:
    """Empty, dot, dot-dot and names with '/' or NUL cannot be created or renamed to."""
    fails(errno.EINVAL, table.create, ROOT_INO, name, 0o644, UID, GID)
    fails(errno.EINVAL, table.mkdir, ROOT_INO, name, 0o755, UID, GID)
    make_file(table, b"src")
    fails(errno.EINVAL, table.rename, ROOT_INO, b"src", ROOT_INO, name, 0)
    assert names(table) == {b"src"}


def test_name_length_limit(table: NodeTable) -> None:
    """Names of up to 255 bytes work; longer ones give ENAMETOOLONG everywhere."""
    longest = b"x" * NAME_MAX
    too_long = b"x" * (NAME_MAX + 1)
    node = make_file(table, longest)
    assert table.lookup(ROOT_INO, longest) is node
    fails(errno.ENAMETOOLONG, table.create, ROOT_INO, too_long, 0o644, UID, GID)
    fails(errno.ENAMETOOLONG, table.mkdir, ROOT_INO, too_long, 0o755, UID, GID)
    fails(errno.ENAMETOOLONG, table.mknod, ROOT_INO, too_long, 0o644, UID, GID)
    fails(errno.ENAMETOOLONG, table.lookup, ROOT_INO, too_long)
    fails(errno.ENAMETOOLONG, table.unlink, ROOT_INO, too_long)
    fails(errno.ENAMETOOLONG, table.rename, ROOT_INO, longest, ROOT_INO, too_long, 0)
    assert names(table) == {longest}
    table.check()


# ----------------------------------------------------------------- lookups and forget


def test_lookup_and_forget_count_kernel_references(table: NodeTable, clock: FakeClock) -> None:
    """LOOKUP adds one reference per reply, FORGET subtracts (never below zero)."""
    node = table.mknod(ROOT_INO, b"f", 0o644, UID, GID)
    assert node.lookups == 1 and node.opens == 0
    assert table.lookup(ROOT_INO, b"f") is node
    assert table.lookup(ROOT_INO, b"f") is node
    assert node.lookups == 3
    table.forget(node.ino, 2)
    assert node.lookups == 1
    table.forget(node.ino, 5)
    assert node.lookups == 0
    assert table.nodes[node.ino] is node  # delay not passed: kept
    table.check()


def test_forget_of_several_lookups_at_once(table: NodeTable, clock: FakeClock) -> None:
    """One FORGET may drop several lookups; reaching zero after the delay drops the node."""
    node = table.mknod(ROOT_INO, b"f", 0o644, UID, GID)
    table.lookup(ROOT_INO, b"f")
    table.lookup(ROOT_INO, b"f")
    clock.advance(FILE_DELAY)
    assert table.due() == [node]
    table.forget(node.ino, 3)
    assert node.ino not in table.nodes


def test_lookup_errors(table: NodeTable) -> None:
    """A missing name gives None (no reference taken), a file as parent ENOTDIR, an unknown
    inode ENOENT."""
    make_file(table, b"f")
    assert table.lookup(ROOT_INO, b"missing") is None
    file_ino = table.child(ROOT_INO, b"f").ino
    fails(errno.ENOTDIR, table.lookup, file_ino, b"x")
    fails(errno.ENOENT, table.lookup, 999, b"x")
    fails(errno.ENOENT, table.get, 999)


def test_forget_of_unknown_inode_and_root_is_ignored(table: NodeTable) -> None:
    """FORGET for an inode the table no longer has, or for the root, changes nothing."""
    table.forget(999, 1)
    table.forget(ROOT_INO, 10)
    assert list(table.nodes) == [ROOT_INO]
    table.check()


def test_lookup_touches_node_and_parent(table: NodeTable, clock: FakeClock) -> None:
    """A lookup is a use of the node and of its directory."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    f = table.mknod(d.ino, b"f", 0o644, UID, GID)
    clock.advance(3.0)
    table.lookup(d.ino, b"f")
    assert f.last_used == clock.now and d.last_used == clock.now


# ----------------------------------------------------------------- create, open, release


def test_getattr_returns_the_node_and_is_a_use(table: NodeTable, clock: FakeClock) -> None:
    """GETATTR answers for any node the table holds (ENOENT otherwise) and is a use: a handed-
    out node is queued again, and its delay starts anew."""
    f = make_file(table, b"f")
    clock.advance(FILE_DELAY)
    assert table.due() == [f] and table.idle_count == 0
    clock.advance(1)
    assert table.getattr(f.ino) is f and f.last_used == clock.now
    assert table.idle_count == 1 and table.due() == []
    clock.advance(FILE_DELAY)
    assert table.due() == [f]
    assert table.getattr(ROOT_INO) is table.root
    fails(errno.ENOENT, table.getattr, 999)


def test_create_opens_and_takes_a_lookup(table: NodeTable, clock: FakeClock) -> None:
    """CREATE returns an open file with one kernel reference, named in its directory."""
    before = table.root.mtime_ns
    node = table.create(ROOT_INO, b"lock", 0o640, UID, 50)
    assert node.opens == 1 and node.lookups == 1
    assert node.mode == stat.S_IFREG | 0o640 and node.uid == UID and node.gid == 50
    assert node.nlink == 1 and node.size == 0 and not node.is_dir
    assert table.child(ROOT_INO, b"lock") is node and node.path() == b"lock"
    assert table.root.mtime_ns > before
    fails(errno.EEXIST, table.create, ROOT_INO, b"lock", 0o640, UID, GID)
    fails(errno.EEXIST, table.mkdir, ROOT_INO, b"lock", 0o755, UID, GID)
    assert table.stats.created == 2
    table.check()


def test_open_and_release_count_handles(table: NodeTable, clock: FakeClock) -> None:
    """Each open adds a handle, each release removes one; an open file is never due."""
    node = make_file(table, b"f")
    table.open(node.ino)
    table.open(node.ino)
    assert node.opens == 2
    clock.advance(100)
    assert table.due() == []
    table.release(node.ino)
    assert node.opens == 1
    clock.advance(100)
    assert table.due() == []
    table.release(node.ino)
    assert node.opens == 0
    assert table.due() == []  # the release was a use: the delay starts again
    clock.advance(FILE_DELAY)
    assert table.due() == [node]
    table.release(999)  # unknown handle: ignored
    table.check()


def test_open_unknown_inode_fails(table: NodeTable) -> None:
    """Opening an inode the table does not have gives ENOENT."""
    fails(errno.ENOENT, table.open, 42)
    fails(errno.ENOENT, table.opendir, 42)


def test_open_and_opendir_check_the_kind(table: NodeTable) -> None:
    """OPEN of a directory gives EISDIR, OPENDIR of a file ENOTDIR; neither takes a handle."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    f = make_file(table, b"f")
    fails(errno.EISDIR, table.open, d.ino)
    fails(errno.EISDIR, table.open, d.ino, os.O_RDWR | os.O_TRUNC)
    fails(errno.ENOTDIR, table.opendir, f.ino)
    assert d.opens == 0 and f.opens == 0 and table.open_count == 0
    assert table.opendir(d.ino) is d and d.opens == 1
    table.check()


def test_open_with_truncate_empties_and_marks_times(table: NodeTable, clock: FakeClock) -> None:
    """O_TRUNC empties a file and updates mtime and ctime, also when it was empty already
    (POSIX; tmpfs does the same); the emptied file is idle again once released."""
    for data in (b"journal line\n", b""):
        f = make_file(table, b"f" + data[:1], data=data)
        mtime, ctime, atime = f.mtime_ns, f.ctime_ns, f.atime_ns
        assert table.open(f.ino, os.O_WRONLY | os.O_TRUNC) is f
        assert f.size == 0 and f.data is None and f.opens == 1
        assert f.mtime_ns > mtime and f.ctime_ns > ctime and f.atime_ns == atime
        table.release(f.ino)
        clock.advance(FILE_DELAY)
        assert table.due() == [f]
    g = make_file(table, b"g", data=b"kept")
    mtime = g.mtime_ns
    for flags in (os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREAT | os.O_EXCL):
        table.open(g.ino, flags)  # without O_TRUNC nothing changes
    assert table.read(g.ino, 0, 10) == b"kept" and g.mtime_ns == mtime and g.opens == 3
    table.check()


def test_create_in_file_or_missing_directory(table: NodeTable) -> None:
    """Creating below a file gives ENOTDIR, below an unknown inode ENOENT."""
    f = make_file(table, b"f")
    fails(errno.ENOTDIR, table.create, f.ino, b"x", 0o644, UID, GID)
    fails(errno.ENOTDIR, table.mkdir, f.ino, b"x", 0o755, UID, GID)
    fails(errno.ENOENT, table.create, 999, b"x", 0o644, UID, GID)
    assert len(table.nodes) == 2


def test_mknod_only_makes_regular_files(table: NodeTable) -> None:
    """MKNOD makes unopened regular files; fifos, sockets and devices get EPERM."""
    plain = table.mknod(ROOT_INO, b"plain", 0o600, UID, GID)
    typed = table.mknod(ROOT_INO, b"typed", stat.S_IFREG | 0o600, UID, GID)
    for kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFDIR):
        fails(errno.EPERM, table.mknod, ROOT_INO, b"other", kind | 0o600, UID, GID)
    for node in (plain, typed):
        assert node.mode == stat.S_IFREG | 0o600 and node.opens == 0 and node.lookups == 1
    assert names(table) == {b"plain", b"typed"}


# ----------------------------------------------------------------- directories


def test_links_and_symlinks_are_refused(table: NodeTable) -> None:
    """LINK and SYMLINK give EPERM (ENAMETOOLONG for a name no entry may have) and change
    nothing; READLINK gives EINVAL, no node being a symbolic link."""
    f = make_file(table, b"f")
    before = (dict(table.nodes), f.lookups, f.nlink, table.root.mtime_ns)
    fails(errno.EPERM, table.link, f.ino, ROOT_INO, b"g")
    fails(errno.EPERM, table.symlink, ROOT_INO, b"s", b"f")
    fails(errno.ENAMETOOLONG, table.link, f.ino, ROOT_INO, b"g" * (NAME_MAX + 1))
    fails(errno.ENAMETOOLONG, table.symlink, ROOT_INO, b"s" * (NAME_MAX + 1), b"f")
    fails(errno.EINVAL, table.readlink, f.ino)
    fails(errno.EINVAL, table.readlink, ROOT_INO)
    assert (dict(table.nodes), f.lookups, f.nlink, table.root.mtime_ns) == before
    assert names(table) == {b"f"}


def test_mkdir_and_rmdir(table: NodeTable) -> None:
    """MKDIR links a directory (nlink 2, parent nlink + 1); RMDIR refuses non-empty ones."""
    d = table.mkdir(ROOT_INO, b"d", 0o750, UID, GID)
    assert d.is_dir and d.mode == stat.S_IFDIR | 0o750 and d.lookups == 1
    assert d.nlink == 2 and table.root.nlink == 3 and table.root.subdirs == 1
    sub = table.mkdir(d.ino, b"sub", 0o755, UID, GID)
    assert d.nlink == 3 and sub.path() == b"d/sub"
    fails(errno.ENOTEMPTY, table.rmdir, ROOT_INO, b"d")
    make_file(table, b"f")
    fails(errno.ENOTDIR, table.rmdir, ROOT_INO, b"f")
    fails(errno.ENOENT, table.rmdir, ROOT_INO, b"missing")
    table.rmdir(d.ino, b"sub")
    assert sub.parent is None and sub.nlink == 0 and d.nlink == 2
    table.rmdir(ROOT_INO, b"d")
    assert names(table) == {b"f"} and table.root.subdirs == 0 and table.root.nlink == 2
    table.check()


def test_removed_directory_lives_on_while_referenced(table: NodeTable) -> None:
    """A removed directory the kernel still knows stays, refuses new entries (ENOENT)."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    table.opendir(d.ino)  # a process has it open (opendir, or it is its cwd)
    table.rmdir(ROOT_INO, b"d")
    assert table.nodes[d.ino] is d and d.parent is None
    fails(errno.ENOENT, table.create, d.ino, b"x", 0o644, UID, GID)
    fails(errno.ENOENT, table.mkdir, d.ino, b"x", 0o755, UID, GID)
    make_file(table, b"f")
    fails(errno.ENOENT, table.rename, ROOT_INO, b"f", d.ino, b"f", 0)
    assert [n for n, _, _ in table.listing(d.ino, 0)] == [b".", b".."]
    table.release(d.ino)
    assert d.ino in table.nodes
    kernel_forgets(table, d)
    assert d.ino not in table.nodes
    table.check()


def test_unlink(table: NodeTable) -> None:
    """UNLINK removes a file's name; directories give EISDIR, missing names ENOENT."""
    table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    f = make_file(table, b"f")
    fails(errno.EISDIR, table.unlink, ROOT_INO, b"d")
    fails(errno.ENOENT, table.unlink, ROOT_INO, b"missing")
    table.unlink(ROOT_INO, b"f")
    assert names(table) == {b"d"} and f.parent is None and f.nlink == 0
    assert table.nodes[f.ino] is f  # the kernel still holds a lookup
    assert table.lookup(ROOT_INO, b"f") is None
    kernel_forgets(table, f)
    assert f.ino not in table.nodes
    table.check()


def test_unlink_of_unreferenced_file_forgets_it_at_once(table: NodeTable) -> None:
    """A file nobody references is forgotten as soon as its name goes."""
    f = make_file(table, b"f", data=b"x")
    kernel_forgets(table, f)
    assert table.nodes[f.ino] is f  # has data: kept although unreferenced
    table.unlink(ROOT_INO, b"f")
    assert f.ino not in table.nodes and names(table) == set()
    table.check()


def test_setgid_directory_passes_group_on(table: NodeTable) -> None:
    """In a setgid directory entries get its group, and subdirectories the setgid bit."""
    shared = table.mkdir(ROOT_INO, b"shared", 0o2775, 0, 34)
    assert shared.mode & stat.S_ISGID
    f = table.create(shared.ino, b"f", 0o644, UID, GID)
    sub = table.mkdir(shared.ino, b"sub", 0o755, UID, GID)
    n = table.mknod(shared.ino, b"n", 0o644, UID, GID)
    assert f.gid == sub.gid == n.gid == 34
    assert f.uid == sub.uid == UID
    assert sub.mode == stat.S_IFDIR | stat.S_ISGID | 0o755
    assert not f.mode & stat.S_ISGID and not n.mode & stat.S_ISGID
    deeper = table.mkdir(sub.ino, b"deeper", 0o700, UID, GID)
    assert deeper.gid == 34 and deeper.mode & stat.S_ISGID
    plain = table.mkdir(ROOT_INO, b"plain", 0o755, 0, 34)
    g = table.create(plain.ino, b"g", 0o644, UID, GID)
    assert g.gid == GID and not table.mkdir(plain.ino, b"s", 0o755, UID, GID).mode & stat.S_ISGID


# ----------------------------------------------------------------- rename


def test_rename_moves_a_name(table: NodeTable) -> None:
    """RENAME keeps the inode, moves the name and updates subdirectory counts."""
    a = table.mkdir(ROOT_INO, b"a", 0o755, UID, GID)
    b = table.mkdir(ROOT_INO, b"b", 0o755, UID, GID)
    f = make_file(table, b"f", a.ino)
    sub = table.mkdir(a.ino, b"sub", 0o755, UID, GID)
    ctime = f.ctime_ns
    table.rename(a.ino, b"f", b.ino, b"g", 0)
    assert table.child(b.ino, b"g") is f and f.name == b"g" and f.parent is b
    assert f.ctime_ns > ctime and f.path() == b"b/g"
    table.rename(a.ino, b"sub", b.ino, b"sub2", 0)
    assert a.subdirs == 0 and b.subdirs == 1 and a.nlink == 2 and b.nlink == 3
    assert sub.path() == b"b/sub2"
    assert names(table, a.ino) == set() and names(table, b.ino) == {b"g", b"sub2"}
    table.rename(b.ino, b"g", b.ino, b"h", 0)  # within one directory
    assert names(table, b.ino) == {b"h", b"sub2"} and f.name == b"h"
    table.check()


def test_rename_errors_for_missing_names(table: NodeTable) -> None:
    """A missing source gives ENOENT; bad flags EINVAL; a file as directory ENOTDIR."""
    f = make_file(table, b"f")
    fails(errno.ENOENT, table.rename, ROOT_INO, b"missing", ROOT_INO, b"x", 0)
    fails(errno.EINVAL, table.rename, ROOT_INO, b"f", ROOT_INO, b"x", 4)
    both = RENAME_NOREPLACE | RENAME_EXCHANGE
    fails(errno.EINVAL, table.rename, ROOT_INO, b"f", ROOT_INO, b"x", both)
    fails(errno.ENOTDIR, table.rename, ROOT_INO, b"f", f.ino, b"x", 0)
    assert names(table) == {b"f"}


def test_rename_to_the_same_name_changes_nothing(table: NodeTable) -> None:
    """Renaming a name onto itself is a no-op (POSIX: same file)."""
    f = make_file(table, b"f")
    table.rename(ROOT_INO, b"f", ROOT_INO, b"f", 0)
    assert table.child(ROOT_INO, b"f") is f and table.nodes[f.ino] is f
    table.check()


def test_rename_replaces_target(table: NodeTable) -> None:
    """Plain rename over a file replaces it; the old target lives on while referenced."""
    a = make_file(table, b"a", data=b"new")
    b = make_file(table, b"b", data=b"old")
    table.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    assert names(table) == {b"b"} and table.child(ROOT_INO, b"b") is a
    assert b.parent is None and table.nodes[b.ino] is b
    assert table.read(b.ino, 0, 10) == b"old"  # still readable through an open handle
    kernel_forgets(table, b)
    assert b.ino not in table.nodes
    table.check()


def test_rename_over_unreferenced_target_forgets_it(table: NodeTable, clock: FakeClock) -> None:
    """A replaced target the kernel no longer references is forgotten at once."""
    a = make_file(table, b"a")
    data = make_file(table, b"data", data=b"old")
    empty = make_file(table, b"empty")
    kernel_forgets(table, data)
    kernel_forgets(table, empty)  # delay not passed: still linked
    table.rename(ROOT_INO, b"a", ROOT_INO, b"data", 0)
    assert data.ino not in table.nodes
    table.rename(ROOT_INO, b"data", ROOT_INO, b"empty", RENAME_EXCHANGE)
    assert table.child(ROOT_INO, b"data") is empty and table.child(ROOT_INO, b"empty") is a
    table.rename(ROOT_INO, b"empty", ROOT_INO, b"data", 0)
    assert empty.ino not in table.nodes
    assert names(table) == {b"data"} and table.child(ROOT_INO, b"data") is a
    table.check()


def test_renamed_idle_node_stays_queued(table: NodeTable, clock: FakeClock) -> None:
    """A rename is a use: an idle node is due one delay after it was moved."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    e = table.mkdir(ROOT_INO, b"e", 0o755, UID, GID)
    f = make_file(table, b"f")
    g = make_file(table, b"g", d.ino)
    clock.advance(FILE_DELAY / 2)
    table.rename(ROOT_INO, b"f", d.ino, b"f", 0)
    table.rename(d.ino, b"g", e.ino, b"g", RENAME_NOREPLACE)
    clock.advance(FILE_DELAY / 2)
    assert table.due() == []
    clock.advance(FILE_DELAY / 2)
    assert table.due() == [f, g]
    kernel_forgets(table, f)
    kernel_forgets(table, g)
    assert f.ino not in table.nodes and g.ino not in table.nodes
    table.check()


def test_rename_directory_keeping_its_name(table: NodeTable) -> None:
    """Moving a directory to another parent under the same name fixes both link counts."""
    a = table.mkdir(ROOT_INO, b"a", 0o755, UID, GID)
    b = table.mkdir(ROOT_INO, b"b", 0o755, UID, GID)
    table.mkdir(a.ino, b"sub", 0o755, UID, GID)
    table.rename(a.ino, b"sub", b.ino, b"sub", 0)
    assert (a.subdirs, b.subdirs, a.nlink, b.nlink) == (0, 1, 2, 3)
    table.mkdir(a.ino, b"x", 0o755, UID, GID)
    table.rename(a.ino, b"x", b.ino, b"sub", RENAME_EXCHANGE)
    assert (a.subdirs, b.subdirs) == (1, 1)
    table.check()


def test_rename_noreplace(table: NodeTable) -> None:
    """RENAME_NOREPLACE refuses an existing target (EEXIST) and leaves both names."""
    a = make_file(table, b"a")
    b = make_file(table, b"b")
    fails(errno.EEXIST, table.rename, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    assert table.child(ROOT_INO, b"a") is a and table.child(ROOT_INO, b"b") is b
    table.rename(ROOT_INO, b"a", ROOT_INO, b"c", RENAME_NOREPLACE)
    assert names(table) == {b"b", b"c"}
    table.check()


def test_rename_exchange_needs_target(table: NodeTable) -> None:
    """RENAME_EXCHANGE with a missing target gives ENOENT and changes nothing."""
    a = make_file(table, b"a")
    fails(errno.ENOENT, table.rename, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    assert names(table) == {b"a"} and table.child(ROOT_INO, b"a") is a


def test_rename_exchange_swaps_files(table: NodeTable) -> None:
    """RENAME_EXCHANGE swaps two files across directories, both stay linked."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    a = make_file(table, b"a", data=b"A")
    b = make_file(table, b"b", d.ino, data=b"B")
    table.rename(ROOT_INO, b"a", d.ino, b"b", RENAME_EXCHANGE)
    assert table.child(ROOT_INO, b"a") is b and table.child(d.ino, b"b") is a
    assert b.parent is table.root and b.name == b"a" and a.parent is d and a.name == b"b"
    assert table.read(a.ino, 0, 1) == b"A"
    table.check()


def test_rename_exchange_swaps_file_and_directory(table: NodeTable) -> None:
    """Exchanging a file and a directory moves the subdirectory count with it."""
    p = table.mkdir(ROOT_INO, b"p", 0o755, UID, GID)
    q = table.mkdir(ROOT_INO, b"q", 0o755, UID, GID)
    f = make_file(table, b"f", p.ino)
    d = table.mkdir(q.ino, b"d", 0o755, UID, GID)
    make_file(table, b"inside", d.ino)
    table.rename(p.ino, b"f", q.ino, b"d", RENAME_EXCHANGE)
    assert table.child(p.ino, b"f") is d and table.child(q.ino, b"d") is f
    assert p.subdirs == 1 and q.subdirs == 0 and p.nlink == 3 and q.nlink == 2
    assert table.child(d.ino, b"inside").path() == b"p/f/inside"
    table.check()


def test_rename_exchange_with_itself(table: NodeTable) -> None:
    """Exchanging a name with itself leaves it in place."""
    f = make_file(table, b"f")
    table.rename(ROOT_INO, b"f", ROOT_INO, b"f", RENAME_EXCHANGE)
    assert table.child(ROOT_INO, b"f") is f
    table.check()


def test_rename_overwrite_rules(table: NodeTable) -> None:
    """Directory over file: ENOTDIR; over non-empty dir: ENOTEMPTY; file over dir: EISDIR."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    full = table.mkdir(ROOT_INO, b"full", 0o755, UID, GID)
    empty = table.mkdir(ROOT_INO, b"empty", 0o755, UID, GID)
    make_file(table, b"x", full.ino)
    f = make_file(table, b"f")
    fails(errno.ENOTDIR, table.rename, ROOT_INO, b"d", ROOT_INO, b"f", 0)
    fails(errno.ENOTEMPTY, table.rename, ROOT_INO, b"d", ROOT_INO, b"full", 0)
    fails(errno.EISDIR, table.rename, ROOT_INO, b"f", ROOT_INO, b"d", 0)
    assert names(table) == {b"d", b"full", b"empty", b"f"}
    table.rename(ROOT_INO, b"d", ROOT_INO, b"empty", 0)  # over an empty dir: allowed
    assert table.child(ROOT_INO, b"empty") is d and empty.parent is None
    assert table.root.subdirs == 2 and f.parent is table.root
    kernel_forgets(table, empty)
    assert empty.ino not in table.nodes
    table.check()


def test_rename_directory_into_its_own_subtree(table: NodeTable) -> None:
    """Moving a directory into itself or below itself gives EINVAL, also for EXCHANGE."""
    a = table.mkdir(ROOT_INO, b"a", 0o755, UID, GID)
    b = table.mkdir(a.ino, b"b", 0o755, UID, GID)
    c = table.mkdir(b.ino, b"c", 0o755, UID, GID)
    fails(errno.EINVAL, table.rename, ROOT_INO, b"a", a.ino, b"x", 0)
    fails(errno.EINVAL, table.rename, ROOT_INO, b"a", c.ino, b"x", 0)
    fails(errno.EINVAL, table.rename, ROOT_INO, b"a", c.ino, b"x", RENAME_NOREPLACE)
    # exchange a directory with one of its descendants, in both directions
    fails(errno.EINVAL, table.rename, ROOT_INO, b"a", b.ino, b"c", RENAME_EXCHANGE)
    fails(errno.EINVAL, table.rename, b.ino, b"c", ROOT_INO, b"a", RENAME_EXCHANGE)
    # overwriting an ancestor: it is never empty
    fails(errno.ENOTEMPTY, table.rename, b.ino, b"c", ROOT_INO, b"a", 0)
    assert c.path() == b"a/b/c" and b.path() == b"a/b"
    table.rename(b.ino, b"c", ROOT_INO, b"c", 0)  # moving up is fine
    assert c.path() == b"c"
    table.check()


# ----------------------------------------------------------------- data


def test_read_write(table: NodeTable) -> None:
    """WRITE stores bytes (zero-filling gaps), READ returns them and stops at the end."""
    f = table.create(ROOT_INO, b"f", 0o644, UID, GID)
    assert table.read(f.ino, 0, 10) == b""
    assert table.write(f.ino, 0, b"hello") == 5
    assert table.write(f.ino, 7, b"!") == 1
    assert f.size == 8
    assert table.read(f.ino, 0, 100) == b"hello\0\0!"
    assert table.read(f.ino, 1, 3) == b"ell"
    assert table.read(f.ino, 50, 3) == b""
    assert table.write(f.ino, 1, b"EL") == 2
    assert table.read(f.ino, 0, 8) == b"hELlo\0\0!"
    fails(errno.ENOENT, table.write, 999, 0, b"x")
    fails(errno.ENOENT, table.read, 999, 0, 1)


def test_empty_write_keeps_file_idle(table: NodeTable, clock: FakeClock) -> None:
    """A zero-length write stores nothing, so the file stays idle."""
    f = make_file(table, b"f")
    assert table.write(f.ino, 0, b"") == 0
    assert f.data is None
    clock.advance(FILE_DELAY)
    assert table.due() == [f]


def test_truncate_by_setattr(table: NodeTable) -> None:
    """SETATTR size shrinks or zero-extends; 0 empties; dirs EISDIR, negative sizes EINVAL."""
    f = make_file(table, b"f", data=b"abcdef")
    table.setattr(f.ino, size=3)
    assert table.read(f.ino, 0, 10) == b"abc"
    table.setattr(f.ino, size=5)
    assert table.read(f.ino, 0, 10) == b"abc\0\0"
    table.setattr(f.ino, size=0)
    assert f.size == 0 and f.data is None
    g = make_file(table, b"g")
    table.setattr(g.ino, size=2)
    assert table.read(g.ino, 0, 10) == b"\0\0"
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    fails(errno.EISDIR, table.setattr, d.ino, size=0)
    fails(errno.EINVAL, table.setattr, f.ino, size=-1)
    fails(errno.ENOENT, table.setattr, 999, mode=0o600)


def test_setattr_changes_attributes_but_not_type(table: NodeTable) -> None:
    """SETATTR updates permission bits (keeping the file type), owner and times."""
    f = make_file(table, b"f")
    ctime = f.ctime_ns
    table.setattr(f.ino, mode=stat.S_IFDIR | 0o4600, uid=7, gid=8, atime_ns=11, mtime_ns=22)
    assert f.mode == stat.S_IFREG | 0o4600 and not f.is_dir
    assert (f.uid, f.gid, f.atime_ns, f.mtime_ns) == (7, 8, 11, 22)
    assert f.ctime_ns > ctime


# ----------------------------------------------------------------- reclaim life cycle


def test_idle_file_is_due_after_delay_then_dropped_on_forget(
    table: NodeTable, clock: FakeClock
) -> None:
    """An idle referenced file is handed out once its delay passed, dropped on FORGET."""
    f = make_file(table, b"lock")
    assert table.next_deadline() == clock.now + FILE_DELAY
    clock.advance(FILE_DELAY - 0.01)
    assert table.due() == []
    clock.advance(0.01)
    assert table.due() == [f]
    assert table.stats.invalidations == 1
    assert table.child(ROOT_INO, b"lock") is f  # the table never drops a referenced name
    assert table.due() == []  # handed out once
    table.forget(f.ino, 1)
    assert f.ino not in table.nodes and names(table) == set()
    assert table.stats.reclaimed == 1
    table.check()


def test_unreferenced_idle_file_is_dropped_by_due(table: NodeTable, clock: FakeClock) -> None:
    """A file the kernel already forgot is dropped in due() itself, not handed out."""
    f = make_file(table, b"lock")
    kernel_forgets(table, f)
    clock.advance(FILE_DELAY)
    assert table.due() == []
    assert f.ino not in table.nodes and names(table) == set()
    assert table.stats.reclaimed == 1 and table.stats.invalidations == 0
    table.check()


def test_forgotten_node_is_dropped_only_after_its_delay(table: NodeTable, clock: FakeClock) -> None:
    """FORGET before the delay keeps the name; the node goes only once the delay passed."""
    f = make_file(table, b"lock")
    clock.advance(FILE_DELAY / 2)
    kernel_forgets(table, f)
    assert table.child(ROOT_INO, b"lock") is f
    assert table.due() == [] and f.ino in table.nodes
    clock.advance(FILE_DELAY / 2 - 0.001)
    assert table.due() == [] and f.ino in table.nodes
    # looked up again in between: the kernel holds it again, the name must still be there
    assert table.lookup(ROOT_INO, b"lock") is f
    clock.advance(FILE_DELAY)
    assert table.due() == [f]
    kernel_forgets(table, f)
    assert f.ino not in table.nodes


def test_forget_after_delay_drops_at_once(table: NodeTable, clock: FakeClock) -> None:
    """FORGET of an idle node whose delay already passed drops it immediately."""
    f = make_file(table, b"lock")
    clock.advance(FILE_DELAY * 3)
    kernel_forgets(table, f)
    assert f.ino not in table.nodes and table.idle_count == 0
    table.check()


def test_data_file_is_never_due(table: NodeTable, clock: FakeClock) -> None:
    """A file holding data is kept forever, even when nobody references it."""
    f = make_file(table, b"journal", data=b"entry\n")
    assert table.idle_count == 0 and table.next_deadline() is None
    clock.advance(10_000)
    assert table.due() == []
    kernel_forgets(table, f)
    clock.advance(10_000)
    assert table.due() == []
    assert table.child(ROOT_INO, b"journal") is f and table.read(f.ino, 0, 99) == b"entry\n"


def test_truncate_to_zero_makes_file_idle(table: NodeTable, clock: FakeClock) -> None:
    """Emptying a data file (open with O_TRUNC, or setattr size 0) makes it reclaimable."""
    f = make_file(table, b"journal", data=b"entry\n")
    g = make_file(table, b"other", data=b"x")
    clock.advance(100)
    table.open(f.ino, os.O_RDWR | os.O_TRUNC)
    table.release(f.ino)
    table.setattr(g.ino, size=0)
    assert table.due() == []
    clock.advance(FILE_DELAY)
    assert table.due() == [f, g]
    table.setattr(f.ino, size=1)  # data again: not idle any more
    kernel_forgets(table, f)
    kernel_forgets(table, g)
    assert f.ino in table.nodes and g.ino not in table.nodes


def test_use_resets_the_delay(table: NodeTable, clock: FakeClock) -> None:
    """Any use (lookup, getattr, open and release) restarts the delay."""
    f = make_file(table, b"lock")

    def open_and_close() -> None:
        table.open(f.ino)
        table.release(f.ino)

    for use in (
        lambda: table.lookup(ROOT_INO, b"lock"),
        lambda: table.getattr(f.ino),
        open_and_close,
    ):
        clock.advance(FILE_DELAY * 0.8)
        use()
        clock.advance(FILE_DELAY * 0.8)
        assert table.due() == []
    clock.advance(FILE_DELAY * 0.2)
    assert table.due() == [f]


def test_due_node_is_requeued_on_next_use(table: NodeTable, clock: FakeClock) -> None:
    """A handed-out node the kernel keeps is handed out again after its next use."""
    f = make_file(table, b"lock")
    clock.advance(FILE_DELAY)
    assert table.due() == [f]
    clock.advance(100)
    assert table.due() == []  # not handed out twice without a new use
    table.lookup(ROOT_INO, b"lock")
    clock.advance(FILE_DELAY)
    assert table.due() == [f]
    assert table.stats.invalidations == 2


def test_due_hands_out_oldest_first(table: NodeTable, clock: FakeClock) -> None:
    """Due nodes come in order of last use, and only those whose delay passed."""
    a = make_file(table, b"a")
    clock.advance(0.1)
    b = make_file(table, b"b")
    clock.advance(0.1)
    c = make_file(table, b"c")
    table.getattr(a.ino)  # now the newest
    clock.advance(FILE_DELAY - 0.1)
    assert table.due() == [b]
    clock.advance(0.1)
    assert table.due() == [c, a]


def test_directory_entries_expire_before_the_directory_is_due() -> None:
    """The kernel may trust a directory's entry for half the grace only, so a path walk
    through an unused directory asks again (a use) before the directory can be due."""
    for grace in (0.2, 10.0, 3600.0):
        policy = ReclaimPolicy(file_delay=FILE_DELAY, dir_grace=grace)
        assert policy.dir_entry_timeout == grace / 2 < grace


def test_directory_waits_for_dir_grace(table: NodeTable, clock: FakeClock) -> None:
    """An empty directory is due after dir_grace, not after the file delay."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    assert table.next_deadline() == clock.now + DIR_GRACE
    clock.advance(FILE_DELAY)
    assert table.due() == []
    clock.advance(DIR_GRACE - FILE_DELAY - 0.01)
    assert table.due() == []
    clock.advance(0.01)
    assert table.due() == [d]
    kernel_forgets(table, d)
    assert d.ino not in table.nodes and table.root.subdirs == 0
    table.check()


def test_directory_becomes_idle_when_last_child_goes(table: NodeTable, clock: FakeClock) -> None:
    """A directory with entries is kept; the grace starts when its last entry goes."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    a = make_file(table, b"a", d.ino)
    b = make_file(table, b"b", d.ino, data=b"keep")
    clock.advance(DIR_GRACE * 2)
    assert table.due() == [a]
    kernel_forgets(table, a)
    assert a.ino not in table.nodes
    assert table.due() == []  # b still holds data
    table.setattr(b.ino, size=0)
    clock.advance(FILE_DELAY)
    assert table.due() == [b]
    kernel_forgets(table, b)
    dropped_at = clock.now
    assert names(table, d.ino) == set()
    assert table.next_deadline() == dropped_at + DIR_GRACE
    clock.advance(DIR_GRACE - 0.01)
    assert table.due() == []
    clock.advance(0.01)
    assert table.due() == [d]
    kernel_forgets(table, d)
    assert list(table.nodes) == [ROOT_INO]


def test_unreferenced_tree_is_reclaimed_bottom_up(table: NodeTable, clock: FakeClock) -> None:
    """Once the kernel forgot everything, due() drops a whole tree, one level per grace."""
    a = table.mkdir(ROOT_INO, b"a", 0o755, UID, GID)
    b = table.mkdir(a.ino, b"b", 0o755, UID, GID)
    f = make_file(table, b"f", b.ino)
    for node in (a, b, f):
        kernel_forgets(table, node)
    clock.advance(FILE_DELAY)
    assert table.due() == [] and f.ino not in table.nodes and b.ino in table.nodes
    clock.advance(DIR_GRACE)
    assert table.due() == [] and b.ino not in table.nodes and a.ino in table.nodes
    clock.advance(DIR_GRACE)
    assert table.due() == [] and list(table.nodes) == [ROOT_INO]
    assert table.stats.reclaimed == 3


def test_directory_emptied_by_unlink_or_rename(table: NodeTable, clock: FakeClock) -> None:
    """Unlinking or renaming away the last entry makes the directory idle from then on."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    e = table.mkdir(ROOT_INO, b"e", 0o755, UID, GID)
    make_file(table, b"x", d.ino, data=b"1")
    make_file(table, b"y", e.ino, data=b"1")
    clock.advance(DIR_GRACE)
    assert table.due() == []
    table.unlink(d.ino, b"x")
    table.rename(e.ino, b"y", ROOT_INO, b"y", 0)
    clock.advance(DIR_GRACE)
    assert table.due() == [d, e]


def test_open_directory_is_not_due(table: NodeTable, clock: FakeClock) -> None:
    """An empty directory with an open handle (opendir) is not idle."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    table.opendir(d.ino)
    clock.advance(DIR_GRACE * 3)
    assert table.due() == []
    table.release(d.ino)
    clock.advance(DIR_GRACE)
    assert table.due() == [d]


def test_unlinked_open_file_is_dropped_after_release_and_forget(
    table: NodeTable, clock: FakeClock
) -> None:
    """An unlinked file with data lives while open or referenced, then is forgotten."""
    f = table.create(ROOT_INO, b"held", 0o644, UID, GID)
    table.write(f.ino, 0, b"data")
    table.unlink(ROOT_INO, b"held")
    assert table.read(f.ino, 0, 10) == b"data"
    table.release(f.ino)
    assert table.nodes[f.ino] is f  # still one lookup
    clock.advance(DIR_GRACE * 10)
    assert table.due() == [] and table.nodes[f.ino] is f
    table.forget(f.ino, 1)
    assert f.ino not in table.nodes
    # the other order: forgotten first, released last
    g = table.create(ROOT_INO, b"held", 0o644, UID, GID)
    table.unlink(ROOT_INO, b"held")
    table.forget(g.ino, 1)
    assert table.nodes[g.ino] is g  # still open
    table.release(g.ino)
    assert g.ino not in table.nodes
    assert table.stats.reclaimed == 0  # forgotten, not reclaimed: no name was detached
    table.check()


def test_open_file_with_zero_lookups_is_dropped_on_release_after_delay(
    table: NodeTable, clock: FakeClock
) -> None:
    """A linked empty file released last is dropped once unreferenced and its delay passed."""
    f = table.create(ROOT_INO, b"f", 0o644, UID, GID)
    table.forget(f.ino, 1)
    assert table.nodes[f.ino] is f  # open: kept
    table.release(f.ino)  # a use: the delay starts now
    assert table.nodes[f.ino] is f
    clock.advance(FILE_DELAY)
    assert table.due() == [] and f.ino not in table.nodes


def test_inode_numbers_are_never_reused(table: NodeTable, clock: FakeClock) -> None:
    """A name created again after reclaim gets a new, larger inode number."""
    seen: list[int] = []
    for _ in range(5):
        f = make_file(table, b"lock")
        seen.append(f.ino)
        clock.advance(FILE_DELAY)
        assert table.due() == [f]
        kernel_forgets(table, f)
        fails(errno.ENOENT, table.get, f.ino)
    d = table.mkdir(ROOT_INO, b"lock", 0o755, UID, GID)
    seen.append(d.ino)
    assert seen == sorted(set(seen)) and seen[0] > ROOT_INO
    assert table.stats.created == 7 and table.stats.reclaimed == 5


def test_next_deadline_and_idle_count(table: NodeTable, clock: FakeClock) -> None:
    """next_deadline is the earliest due time over both queues; idle_count counts both."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    start = clock.now
    assert table.next_deadline() == start + DIR_GRACE and table.idle_count == 1
    clock.advance(2.0)
    f = table.mknod(d.ino, b"f", 0o644, UID, GID)  # d is no longer empty
    assert table.idle_count == 1
    assert table.next_deadline() == clock.now + FILE_DELAY
    table.write(f.ino, 0, b"x")
    assert table.idle_count == 0 and table.next_deadline() is None


# ----------------------------------------------------------------- listing


def _list(table: NodeTable, ino: int, after: int = 0) -> list[tuple[bytes, int, int]]:
    return [(name, node.ino, cookie) for name, node, cookie in table.listing(ino, after)]


def readdirplus(
    table: NodeTable, ino: int, after: int = 0, room: int | None = None
) -> list[tuple[bytes, int, int]]:
    """One READDIRPLUS request whose reply holds ``room`` entries (all if None): those sent."""
    sent: list[tuple[bytes, int, int]] = []

    def reply(name: bytes, node: Node, cookie: int) -> bool:
        if room is not None and len(sent) >= room:
            return False
        sent.append((name, node.ino, cookie))
        return True

    table.readdirplus(ino, after, reply)
    return sent


def test_listing_entries_and_cookies(table: NodeTable) -> None:
    """'.' and '..' come first (cookies 1, 2), then entries by inode with cookie ino + 2."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    files = [make_file(table, name, d.ino) for name in (b"z", b"a", b"m")]
    full = _list(table, d.ino)
    assert full[:2] == [(b".", d.ino, 1), (b"..", ROOT_INO, 2)]
    assert full[2:] == [(f.name, f.ino, f.ino + 2) for f in files]
    cookies = [cookie for _, _, cookie in full]
    assert cookies == sorted(set(cookies))
    for i, (_, _, cookie) in enumerate(full):  # resuming after any cookie gives the rest
        assert _list(table, d.ino, cookie) == full[i + 1 :]
    root = _list(table, ROOT_INO)
    assert root[:2] == [(b".", ROOT_INO, 1), (b"..", ROOT_INO, 2)]
    fails(errno.ENOTDIR, lambda: list(table.listing(files[0].ino, 0)))


def test_listing_resumes_across_changes(table: NodeTable) -> None:
    """Entries present throughout are listed exactly once, whatever changes between parts."""
    for split in range(9):
        t = NodeTable(clock=FakeClock(), wall_clock_ns=FakeWallClock())
        d = t.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
        for name in (b"a", b"b", b"c", b"d", b"e", b"f"):
            make_file(t, name, d.ino)
        first = _list(t, d.ino)[:split]
        t.unlink(d.ino, b"c")
        t.unlink(d.ino, b"a")
        make_file(t, b"new", d.ino)
        t.rename(d.ino, b"e", ROOT_INO, b"e-moved", 0)
        t.rename(ROOT_INO, b"e-moved", d.ino, b"e", 0)  # moved away and back, same inode
        after = first[-1][2] if first else 0
        rest = _list(t, d.ino, after)
        listed = [name for name, _, _ in first + rest]
        for name in (b".", b"..", b"b", b"d", b"e", b"f"):
            assert listed.count(name) == 1, (split, listed)
        assert len(listed) == len(set(listed)), (split, listed)


def test_readdirplus_replies_hold_a_few_entries(table: NodeTable) -> None:
    """One READDIRPLUS reply holds at most LISTED_PER_REQUEST entries; the next request
    resumes after the last cookie sent, and the pages add up to the whole listing."""
    for i in range(3 * LISTED_PER_REQUEST):
        make_file(table, b"f%d" % i)
    pages = []
    after = 0
    while page := readdirplus(table, ROOT_INO, after):
        assert len(page) <= LISTED_PER_REQUEST
        pages.append(page)
        after = page[-1][2]
    assert len(pages[0]) == LISTED_PER_REQUEST
    assert [entry for page in pages for entry in page] == _list(table, ROOT_INO)


def test_big_directory_lists_in_inode_order_after_renames(table: NodeTable) -> None:
    """A directory with more entries than one block of its inode order, some of them older
    nodes renamed in and some removed: listed in inode order, and resuming after any cookie
    gives exactly the rest."""
    old = table.mkdir(ROOT_INO, b"old", 0o755, UID, GID)
    older = [make_file(table, b"o%d" % i, old.ino) for i in range(300)]
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    for i in range(1500):
        make_file(table, b"n%d" % i, d.ino)
    for node in older[::3]:  # older inodes come in: not in insertion order any more
        table.rename(old.ino, node.name, d.ino, b"moved-" + node.name, 0)
    for i in range(0, 1500, 7):
        table.unlink(d.ino, b"n%d" % i)
    table.rename(d.ino, b"n1", d.ino, b"renamed-in-place", 0)
    full = _list(table, d.ino)
    inos = [ino for _, ino, _ in full[2:]]
    assert inos == sorted(inos) and len(inos) == len(d.children or {})
    for i in range(0, len(full), 97):
        assert _list(table, d.ino, full[i][2]) == full[i + 1 :]
    table.check()


def test_listing_skips_entries_removed_while_listing(table: NodeTable) -> None:
    """An entry removed after the listing started is not returned any more."""
    for name in (b"a", b"b", b"c"):
        make_file(table, name)
    listing = table.listing(ROOT_INO, 0)
    got = [next(listing)[0], next(listing)[0], next(listing)[0]]
    table.unlink(ROOT_INO, b"b")
    got += [name for name, _, _ in listing]
    assert got == [b".", b"..", b"a", b"c"]


def test_listed_entries_are_referenced_but_not_used(table: NodeTable, clock: FakeClock) -> None:
    """A readdirplus entry takes a kernel reference but keeps the entry's last use, so an
    entry listed over and over still becomes due after its delay (and goes on FORGET)."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    f = make_file(table, b"f", d.ino)
    sub = table.mkdir(d.ino, b"sub", 0o755, UID, GID)
    last_used = f.last_used
    for _ in range(10):  # `ls` every 100 ms for twice the delay
        clock.advance(0.1)
        assert len(readdirplus(table, d.ino)) == 4
    assert f.last_used == last_used and f.lookups == 11
    assert table.due() == [f]  # the directory's own listing was a use; its entries' not
    kernel_forgets(table, f)
    assert f.ino not in table.nodes
    clock.advance(DIR_GRACE)
    assert table.due() == [sub]  # listed, never used since its creation
    table.check()


def test_entry_listed_after_being_handed_out_is_queued_again(
    table: NodeTable, clock: FakeClock
) -> None:
    """due() hands a node out; a listing takes a new reference that the invalidation may not
    cover (the kernel forgets only the old ones): the node is queued again, keeping its last
    use, and handed out again so that the new reference is invalidated too."""
    f = make_file(table, b"f")
    g = make_file(table, b"g")
    clock.advance(FILE_DELAY)
    assert table.due() == [f, g]
    assert table.idle_count == 0
    only_f = [(b"f", f.ino, f.ino + 2)]
    assert readdirplus(table, ROOT_INO, f.ino + 1, room=1) == only_f
    assert readdirplus(table, ROOT_INO, f.ino + 1, room=1) == only_f  # twice: queued once
    assert table.idle_count == 1
    table.forget(f.ino, 1)  # the FORGET for the reference the invalidation covered
    assert f.lookups == 2 and table.nodes[f.ino] is f
    assert table.due() == [f]
    kernel_forgets(table, f)
    assert f.ino not in table.nodes
    h = make_file(table, b"h", data=b"x")
    readdirplus(table, ROOT_INO, h.ino + 1, room=1)  # not idle: not queued
    assert table.idle_count == 0
    table.check()


def test_readdirplus_references_the_entries_sent_but_not_dots(table: NodeTable) -> None:
    """Every entry a READDIRPLUS reply holds is a kernel reference, except '.' and '..'; an
    entry that did not fit is not, and the next request, resumed from the last cookie sent,
    starts with it."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    a = make_file(table, b"a", d.ino)
    b = make_file(table, b"b", d.ino)
    before = {n.ino: n.lookups for n in (table.root, d, a, b)}
    assert readdirplus(table, d.ino, room=0) == []
    first = readdirplus(table, d.ino, room=3)
    assert [name for name, _, _ in first] == [b".", b"..", b"a"]
    assert (d.lookups, table.root.lookups) == (before[d.ino], before[ROOT_INO])
    assert (a.lookups, b.lookups) == (before[a.ino] + 1, before[b.ino])
    rest = readdirplus(table, d.ino, first[-1][2])
    assert rest == [(b"b", b.ino, b.ino + 2)]
    assert (a.lookups, b.lookups) == (before[a.ino] + 1, before[b.ino] + 1)
    assert readdirplus(table, d.ino, rest[-1][2]) == []
    assert (d.lookups, table.root.lookups) == (before[d.ino], before[ROOT_INO])
    fails(errno.ENOTDIR, readdirplus, table, a.ino)
    assert a.lookups == before[a.ino] + 1
    table.check()


def test_listing_is_a_use_of_the_directory(table: NodeTable, clock: FakeClock) -> None:
    """Listing a directory restarts its grace period."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    clock.advance(DIR_GRACE - 1)
    assert len(_list(table, d.ino)) == 2
    clock.advance(1)
    assert table.due() == []
    clock.advance(DIR_GRACE)
    assert table.due() == [d]


# ----------------------------------------------------------------- limits


def test_entry_limit_gives_enospc_and_capacity_counts_down(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """max_entries bounds the entries held (the root included): STATFS counts down to 0,
    creating then fails with ENOSPC without touching what exists (logged once a minute, with
    the busiest directory), and works again once entries go."""
    table = limited(clock, max_entries=4)
    assert table.capacity() == Capacity(total=4, free=3, name_max=NAME_MAX)
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    f = make_file(table, b"f", d.ino)
    make_file(table, b"g", data=b"x")
    assert table.capacity() == Capacity(4, 0, NAME_MAX)
    fails(errno.ENOSPC, table.create, ROOT_INO, b"h", 0o644, UID, GID)
    fails(errno.ENOSPC, table.mkdir, d.ino, b"e", 0o755, UID, GID)
    fails(errno.ENOSPC, table.mknod, d.ino, b"n", 0o644, UID, GID)
    assert names(table) == {b"d", b"g"} and names(table, d.ino) == {b"f"}
    logged = [r.getMessage() for r in caplog.records if "entry limit reached" in r.message]
    assert len(logged) == 1 and "busiest directory: / (2 entries)" in logged[0]
    clock.advance(LIMIT_LOG_INTERVAL)
    fails(errno.ENOSPC, table.create, ROOT_INO, b"h", 0o644, UID, GID)
    assert sum("entry limit reached" in r.message for r in caplog.records) == 2
    table.unlink(d.ino, b"f")
    kernel_forgets(table, f)
    assert table.capacity() == Capacity(4, 1, NAME_MAX)
    make_file(table, b"h")
    table.limits.max_entries = 2  # lowered below what is held: nothing free, never negative
    assert table.capacity() == Capacity(4, 0, NAME_MAX)
    table.check()


def test_file_size_limit_gives_efbig(clock: FakeClock) -> None:
    """A write or truncate beyond max_file_size fails with EFBIG and leaves the data intact."""
    table = limited(clock, max_file_size=4)
    f = make_file(table, b"journal", data=b"abcd")
    fails(errno.EFBIG, table.write, f.ino, 3, b"xy")
    fails(errno.EFBIG, table.setattr, f.ino, size=5)
    assert table.read(f.ino, 0, 10) == b"abcd"
    assert table.write(f.ino, 2, b"CD") == 2 and table.read(f.ino, 0, 10) == b"abCD"


def test_depth_limit_gives_enametoolong(clock: FakeClock) -> None:
    """No entry deeper than max_depth: creating one, or moving a subtree so that part of it
    would be, fails with ENAMETOOLONG; moving it where it fits works."""
    table = limited(clock, max_depth=2)
    a = table.mkdir(ROOT_INO, b"a", 0o755, UID, GID)
    b = table.mkdir(a.ino, b"b", 0o755, UID, GID)
    fails(errno.ENAMETOOLONG, table.mkdir, b.ino, b"c", 0o755, UID, GID)
    fails(errno.ENAMETOOLONG, table.create, b.ino, b"f", 0o644, UID, GID)
    x = table.mkdir(ROOT_INO, b"x", 0o755, UID, GID)
    table.mkdir(x.ino, b"y", 0o755, UID, GID)
    fails(errno.ENAMETOOLONG, table.rename, ROOT_INO, b"x", a.ino, b"x", 0)
    fails(errno.ENAMETOOLONG, table.rename, ROOT_INO, b"x", a.ino, b"b", RENAME_EXCHANGE)
    assert names(table) == {b"a", b"x"} and names(table, a.ino) == {b"b"}
    table.rmdir(a.ino, b"b")
    table.rename(ROOT_INO, b"a", x.ino, b"a", 0)  # x/a, now empty: fits
    assert table.child(x.ino, b"a").depth == 2
    table.check()


# ----------------------------------------------------------------- check()


def test_check_accepts_a_busy_table(table: NodeTable, clock: FakeClock) -> None:
    """check() passes on a table with every kind of node."""
    d = table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    make_file(table, b"data", d.ino, data=b"x")
    make_file(table, b"idle", d.ino)
    held = table.create(ROOT_INO, b"held", 0o644, UID, GID)
    table.unlink(ROOT_INO, b"held")
    table.mkdir(d.ino, b"sub", 0o755, UID, GID)
    assert held.parent is None
    table.check()


def test_check_detects_broken_names(table: NodeTable) -> None:
    """check() fails when a node's name does not lead back to it."""
    f = make_file(table, b"f")
    table.check()
    f.name = b"other"
    with pytest.raises(TableInconsistent):
        table.check()


def test_check_detects_wrong_subdir_count(table: NodeTable) -> None:
    """check() fails when a directory's subdirectory count is off."""
    table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    d = table.child(ROOT_INO, b"d")
    d.subdirs = 1
    with pytest.raises(TableInconsistent):
        table.check()


def test_check_detects_unreferenced_unlinked_node(table: NodeTable) -> None:
    """check() fails when an unlinked node nobody references is still in the table."""
    f = make_file(table, b"f")
    table.unlink(ROOT_INO, b"f")
    table.check()
    f.lookups = 0
    with pytest.raises(TableInconsistent):
        table.check()


def test_check_detects_busy_node_in_idle_queue(table: NodeTable) -> None:
    """check() fails when a node that is not idle sits in an idle queue."""
    f = make_file(table, b"f", data=b"x")
    table.check()
    table.idle.files[f] = None
    with pytest.raises(TableInconsistent):
        table.check()


def test_check_detects_negative_counts(table: NodeTable) -> None:
    """check() fails on a negative lookup count."""
    f = make_file(table, b"f")
    f.lookups = -1
    with pytest.raises(TableInconsistent):
        table.check()


#: Breaks a table in several ways, each on a fresh one, and prints what check() raised for
#: each (run under ``python -O``, where ``assert`` statements are gone).
_BREAK_UNDER_O = """
from lockfs.nodes import ROOT_INO, NodeTable

def broken(how):
    table = NodeTable()
    d = table.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    f = table.create(d.ino, b"f", 0o644, 0, 0)
    table.write(f.ino, 0, b"x")
    if how == "name":
        f.name = b"other"
    elif how == "subdirs":
        d.subdirs = 1
    elif how == "queue":
        table.idle.files[f] = None
    elif how == "order":
        d.order.remove(f)
    elif how == "count":
        f.lookups = -1
    return table

for how in ("name", "subdirs", "queue", "order", "count"):
    try:
        broken(how).check()
    except Exception as exc:
        print(how, type(exc).__name__)
    else:
        print(how, "passed")
"""


def test_check_works_under_python_optimized() -> None:
    """check() is no assert: under ``python -O`` a broken table still fails it."""
    result = subprocess.run(
        [sys.executable, "-O", "-c", _BREAK_UNDER_O],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.stdout.split("\n")[:-1] == [
        f"{how} TableInconsistent" for how in ("name", "subdirs", "queue", "order", "count")
    ]
