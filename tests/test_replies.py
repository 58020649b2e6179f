"""The attributes the adapter replies with, built in-process (no mount needed).

``LockOperations.entry`` leaves fields at pyfuse3's defaults where they already hold the right
value; these tests pin every field, so a pyfuse3 with other defaults fails here.
"""

from __future__ import annotations

import inspect
import stat

import pyfuse3
import pytest

from lockfs.fuse_ops import BLOCK_SIZE, CACHE_TIMEOUT, DIRENT_SIZE, LockOperations
from lockfs.nodes import ROOT_INO, NodeTable, ReclaimPolicy

UID, GID = 34, 35


@pytest.fixture
def ops() -> LockOperations:
    return LockOperations(NodeTable(policy=ReclaimPolicy(file_delay=0.5, dir_grace=10.0)))


def fields(attr: pyfuse3.EntryAttributes) -> dict[str, int | float]:
    names = (
        "st_ino", "generation", "entry_timeout", "attr_timeout", "st_mode", "st_nlink",
        "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks",
        "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
    )  # fmt: skip
    return {name: getattr(attr, name) for name in names}


def test_empty_file(ops: LockOperations) -> None:
    node = ops.table.create(ROOT_INO, b"f", 0o640, UID, GID)
    assert fields(ops.entry(node)) == {
        "st_ino": node.ino,
        "generation": 0,
        "entry_timeout": CACHE_TIMEOUT,
        "attr_timeout": CACHE_TIMEOUT,
        "st_mode": stat.S_IFREG | 0o640,
        "st_nlink": 1,
        "st_uid": UID,
        "st_gid": GID,
        "st_rdev": 0,
        "st_size": 0,
        "st_blksize": BLOCK_SIZE,
        "st_blocks": 0,
        "st_atime_ns": node.atime_ns,
        "st_mtime_ns": node.mtime_ns,
        "st_ctime_ns": node.ctime_ns,
    }


def test_file_with_data_and_unlinked(ops: LockOperations) -> None:
    node = ops.table.create(ROOT_INO, b"journal", 0o600, UID, GID)
    ops.table.write(node.ino, 0, b"x" * 1000)
    attr = fields(ops.entry(node))
    assert (attr["st_size"], attr["st_blocks"], attr["st_nlink"]) == (1000, 2, 1)
    ops.table.unlink(ROOT_INO, b"journal")
    assert ops.entry(node).st_nlink == 0


def test_sparse_file_counts_stored_bytes(ops: LockOperations) -> None:
    """A file grown by a write far out or a truncate reports its size, but blocks only for
    the bytes it holds; a file truncated to a size without writing holds none."""
    node = ops.table.create(ROOT_INO, b"sparse", 0o600, UID, GID)
    ops.table.write(node.ino, (64 << 20) - 1, b"x")
    attr = fields(ops.entry(node))
    assert attr["st_size"] == 64 << 20 and attr["st_blocks"] == 8  # its 4 KiB block, zeros first
    hole = ops.table.create(ROOT_INO, b"hole", 0o600, UID, GID)
    ops.table.setattr(hole.ino, size=1 << 20)
    attr = fields(ops.entry(hole))
    assert (attr["st_size"], attr["st_blocks"]) == (1 << 20, 0)


def test_directory(ops: LockOperations) -> None:
    d = ops.table.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    ops.table.mkdir(d.ino, b"sub", 0o755, UID, GID)
    ops.table.create(d.ino, b"f", 0o644, UID, GID)
    attr = fields(ops.entry(d))
    assert attr["st_mode"] == stat.S_IFDIR | 0o755
    assert attr["entry_timeout"] == ops.dir_entry_timeout == 5.0
    assert attr["attr_timeout"] == CACHE_TIMEOUT
    assert (attr["st_nlink"], attr["st_size"], attr["st_blocks"]) == (3, 4 * DIRENT_SIZE, 0)
    assert (attr["st_blksize"], attr["st_rdev"], attr["generation"]) == (BLOCK_SIZE, 0, 0)
    ops.table.rmdir(d.ino, b"sub")
    assert ops.entry(d).st_nlink == 2


def test_every_handler_takes_the_parameters_pyfuse3_declares() -> None:
    """Each request handler (made by fuse_ops._handler) has the parameters, by name and
    order, of the pyfuse3.Operations method it overrides: pyfuse3 passes them by position.
    (mypy checks the types too: _handler keeps the handler's signature.)"""
    handlers = {
        name: fn
        for name, fn in vars(LockOperations).items()
        if hasattr(pyfuse3.Operations, name) and hasattr(fn, "__wrapped__")
    }
    assert len(handlers) >= 20
    for name, fn in handlers.items():
        ours = list(inspect.signature(fn).parameters)
        theirs = list(inspect.signature(getattr(pyfuse3.Operations, name)).parameters)
        assert ours == theirs, name
        assert inspect.iscoroutinefunction(fn), name
