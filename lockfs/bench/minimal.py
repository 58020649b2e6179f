"""The framework's own limit: a minimal pyfuse3 + trio server for ``lockfs-bench``.

``python -m lockfs.bench.minimal MOUNTPOINT --dir-entry-timeout S`` mounts a filesystem that
answers the requests of a lock cycle the cheapest way pyfuse3 allows, with lockfs's mount
options, cache timeouts and request loop (:mod:`lockfs.request_loop`; ``--stock-loop``:
pyfuse3's own), but nothing else: no reclaim, no lookup counting,
no idle queues, no limits, no error boundary. Each inode's reply is one ``EntryAttributes``
kept from its creation and changed in place. Whatever lockfs costs beyond this server is
lockfs's own work; the bench reports lockfs / this server beside lockfs / tmpfs.

It only counts requests by type and answers ``status`` on a control socket like lockfs's (so
the bench reads its counters the same way), and it unmounts itself on SIGTERM. Entries are
never dropped: it is only meant for a benchmark run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyfuse3
import trio

from .. import request_loop
from ..control import serve_control, socket_path
from ..fuse_ops import ABSENT, BLOCK_SIZE, CACHE_TIMEOUT
from ..mounts import umount
from ..options import ALWAYS

#: The filesystem type the bench looks for in the mount table (``fuse.<SUBTYPE>``).
SUBTYPE = "lockfs-minimal"


class MinimalOperations(pyfuse3.Operations):
    """An in-memory tree of empty files and directories; entries live until unmount."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, dir_entry_timeout: float) -> None:
        super().__init__()
        self.dir_entry_timeout = dir_entry_timeout
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self.next_ino = pyfuse3.ROOT_INODE
        self.requests: dict[str, int] = {}
        self._new(stat.S_IFDIR | 0o755, 0, 0)

    def _count(self, name: str) -> None:
        self.requests[name] = self.requests.get(name, 0) + 1

    def _new(self, mode: int, uid: int, gid: int) -> pyfuse3.EntryAttributes:
        ino = self.next_ino
        self.next_ino += 1
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.st_mode = mode
        attr.st_uid = uid
        attr.st_gid = gid
        attr.st_blksize = BLOCK_SIZE
        attr.attr_timeout = CACHE_TIMEOUT
        now = time.time_ns()
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = now
        if stat.S_ISDIR(mode):
            attr.st_nlink = 2
            attr.entry_timeout = self.dir_entry_timeout
            self.children[ino] = {}
        else:
            attr.st_nlink = 1
            attr.entry_timeout = CACHE_TIMEOUT
        self.attrs[ino] = attr
        return attr

    def _add(
        self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        children = self.children[parent]
        if name in children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        attr = self._new(mode, ctx.uid, ctx.gid)
        children[name] = attr.st_ino
        return attr

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._count("lookup")
        ino = self.children[parent_inode].get(name)
        if ino is None:
            return ABSENT
        return self.attrs[ino]

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self._count("forget")

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._count("getattr")
        return self.attrs[inode]

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._count("setattr")
        entry = self.attrs[inode]
        if fields.update_mode:
            entry.st_mode = stat.S_IFMT(entry.st_mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            entry.st_uid = attr.st_uid
        if fields.update_gid:
            entry.st_gid = attr.st_gid
        if fields.update_size:
            entry.st_size = attr.st_size
        if fields.update_atime:
            entry.st_atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            entry.st_mtime_ns = attr.st_mtime_ns
        entry.st_ctime_ns = time.time_ns()
        return entry

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._count("mkdir")
        return self._add(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._count("create")
        attr = self._add(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=attr.st_ino, keep_cache=True), attr

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._count("open")
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def flush(self, fh: int) -> None:
        self._count("flush")
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        self._count("release")

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._count("rename")
        old, new = self.children[parent_inode_old], self.children[parent_inode_new]
        if name_new in new:
            raise pyfuse3.FUSEError(errno.EEXIST)  # the bench only renames to new names
        new[name_new] = old.pop(name_old)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._count("unlink")
        ino = self.children[parent_inode].pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    def status(self) -> dict[str, Any]:
        """What the bench reads: the same keys as lockfs's status that it uses."""
        dirs = len(self.children)
        return {
            "pid": os.getpid(),
            "requests": dict(self.requests),
            "nodes": len(self.attrs),
            "files": len(self.attrs) - dirs,
            "dirs": dirs,
            "open": 0,
            "created": len(self.attrs),
            "reclaimed": 0,
            "invalidations": 0,
            "rss_bytes": 0,
            "options": {"reclaim_delay": 0.0, "dir_grace": 0.0},
        }


async def _serve(ops: MinimalOperations, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:

        def command(text: str) -> Any:
            if text != "status":
                raise ValueError(f"unknown command {text!r}")
            return ops.status()

        await nursery.start(serve_control, socket_path(mountpoint), command)
        nursery.start_soon(_stop_on_signal, mountpoint)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            # Unmounting ends the FUSE session, and with it pyfuse3.main.
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(umount, mountpoint)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lockfs.bench.minimal")
    parser.add_argument("mountpoint")
    parser.add_argument("--dir-entry-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument(
        "--stock-loop", action="store_true", help="pyfuse3's own request loop, not lockfs's"
    )
    args = parser.parse_args(argv)
    mountpoint = os.path.realpath(args.mountpoint)
    ops = MinimalOperations(args.dir_entry_timeout)
    if not args.stock_loop:
        request_loop.install()
    options = {*ALWAYS, "fsname=lockfs-bench", f"subtype={SUBTYPE}"}
    pyfuse3.init(ops, mountpoint, options)
    try:
        trio.run(_serve, ops, mountpoint)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
