#!/usr/bin/env python3
"""A FUSE filesystem that never answers a read: what an attacker mounts to block the kernel.

``silent_fuse.py MOUNTPOINT`` mounts a filesystem holding one file, ``page`` (4 KiB), prints
``ready`` and serves until killed. Every READ of ``page`` waits for ever, so a process whose
buffer is a mapping of that page stops inside whatever system call writes to the buffer,
holding whatever locks that call holds (a ``getdents64`` holds its directory's inode lock).
Killing this server aborts its connection and releases that process.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

PAGE_INO = 2
PAGE_SIZE = 4096


class Silent(pyfuse3.Operations):
    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_size = PAGE_SIZE
        attr.attr_timeout = attr.entry_timeout = 3600
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"page":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(PAGE_INO)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        await trio.sleep_forever()
        return b""


def main() -> None:
    mountpoint = sys.argv[1]
    pyfuse3.init(Silent(), mountpoint, {"fsname=silent"})

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            # Answered: mounted and serving (from a thread: this one serves the request).
            await trio.to_thread.run_sync(os.stat, os.path.join(mountpoint, "page"))
            print("ready", flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
