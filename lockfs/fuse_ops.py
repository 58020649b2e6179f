"""The pyfuse3 adapter: maps FUSE requests onto the node table and errors onto errnos.

Kept thin on purpose: every rule about names, references, reclaim, limits and the errnos of
refused requests lives in the node table (:class:`lockfs.nodes.NodeTable` and the modules it
builds on), where the unit and model tests see it. A handler passes its arguments on to one
table method of the same name (READDIRPLUS: ``readdirplus``, RELEASEDIR: ``release``, STATFS:
``capacity``) and turns what it returns into a reply; FLUSH, FSYNC and FSYNCDIR call none (see
below). What this module decides itself is the FUSE protocol side (tested on a real mount in
tests/test_fuse_ops.py):

* Every handler is wrapped by :func:`_handler`: a :class:`~lockfs.nodes.FsError` becomes its
  errno; any other exception is a bug that may have left a change half made, so the table may
  no longer agree with the kernel (which applies a change only when it gets an answer). It is
  never answered: :attr:`LockOperations.fail_closed` (the daemon's) logs it with its request,
  aborts the FUSE connection and ends the process, so nothing is served from that table.
  Requests are counted by type, and the one in service is recorded for the hang watchdog.
* File handles are inode numbers (never reused), so RELEASE, READ and WRITE, which only carry
  the handle, find their node without a handle table.
* FLUSH answers ENOSYS once, after which the kernel stops sending it: a lock cycle is then
  OPEN + RELEASE only. Locks never need FLUSH: the kernel keeps them (no lock handlers here).
  FSYNC and FSYNCDIR succeed without a word to the table: everything lives in memory (and a
  data file's mirror, lockfs.persist, is written before the table changes it).
* Entries and attributes are cached by the kernel for a long time: the kernel sees every change
  to the namespace itself, and the only change it does not see, reclaim, happens after the
  kernel has forgotten the node. Directory entries are the exception: the kernel must
  revalidate them (LOOKUP) well within the directory grace period, so that a path walk through
  a directory that is about to be reclaimed (``mkdir -p`` answered from the dcache, then
  ``open``) always reaches the daemon and counts as a use; see docs/design.md.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar, cast

import pyfuse3

from .nodes import FsError, Node, NodeTable

log = logging.getLogger(__name__)

#: How long the kernel may trust an entry or attributes without asking again (seconds).
CACHE_TIMEOUT = 3600.0
BLOCK_SIZE = 4096
#: Directory size reported per entry, as tmpfs does.
DIRENT_SIZE = 20

R = TypeVar("R")
P = ParamSpec("P")


def _absent_entry() -> pyfuse3.EntryAttributes:
    """The reply to a LOOKUP of an absent name: a negative entry (node id 0) that the kernel
    may not keep (timeouts 0), which is what ENOENT means to it (fs/fuse/dir.c treats node id
    0 as ENOENT with a timeout), without raising an exception through two frames (1.2 µs of
    the 2 µs such a LOOKUP cost; three per cold PBS lock). Never changed after creation."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = 0
    attr.attr_timeout = 0
    return attr


ABSENT = _absent_entry()


#: What an internal error in a handler is handed to: the handler's name, its arguments and
#: the exception. It must not return (the daemon's aborts the connection and exits).
FailClosed = Callable[[str, tuple[Any, ...], Exception], NoReturn]


def _handler(
    fn: Callable[Concatenate[LockOperations, P], R],
) -> Callable[Concatenate[LockOperations, P], Coroutine[Any, Any, R]]:
    """Make a request handler of ``fn``: count the request, turn table errors into FUSE errors
    and bugs into a closed mount (never an answer). ``fn`` itself is synchronous (no handler
    ever waits), so a request costs one coroutine, this wrapper's, not two.

    Typed so that the handler keeps ``fn``'s parameters and becomes a coroutine function of
    ``fn``'s result: mypy then checks every handler against ``pyfuse3.Operations`` (the
    pinned pyfuse3 ships its types) as if it were written ``async def``. pyfuse3 passes the
    arguments by position, so the wrapper takes ``*args`` only (no ``**kwargs`` dict to
    build per request)."""
    name = fn.__name__
    call = cast("Callable[..., R]", fn)  # called with the positional arguments it was given

    @functools.wraps(fn)
    async def wrapper(self: LockOperations, *args: Any) -> R:
        self.requests[name] += 1
        self.serving_name = name  # the request in service, for the hang watchdog
        self.serving_args = args
        if self.trace:
            log.debug("request %s%r", name, args)
        try:
            if self.fault_hook is not None:
                self.fault_hook(name, args)
            return call(self, *args)
        except FsError as exc:
            if self.trace:
                log.debug("request %s%r -> %s", name, args, errno.errorcode.get(exc.errno))
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            self.faults += 1
            if self.fail_closed is not None:
                self.fail_closed(name, args, exc)
            raise  # without a fail-closed path (unit tests): never answered either
        finally:
            self.serving_args = None

    return cast("Callable[Concatenate[LockOperations, P], Coroutine[Any, Any, R]]", wrapper)


class LockOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over one :class:`NodeTable`."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, table: NodeTable, *, trace: bool = False) -> None:
        super().__init__()
        self.table = table
        #: Below the grace period (the policy's rule), and never above CACHE_TIMEOUT.
        self.dir_entry_timeout = min(CACHE_TIMEOUT, table.policy.dir_entry_timeout)
        self.trace = trace
        self.requests: Counter[str] = Counter()
        #: Internal errors in handlers (each fails the mount closed: a serving daemon has 0).
        self.faults = 0
        #: Where an internal error goes (lockfs.daemon sets it): it never returns.
        self.fail_closed: FailClosed | None = None
        #: Test-only hook: called with the handler name and arguments before every request;
        #: whatever it raises is handled like a bug in the handler.
        self.fault_hook: Callable[[str, tuple[Any, ...]], None] | None = None
        #: The request being served (handler name, arguments; None between requests): the
        #: hang watchdog (lockfs.watchdog) reads them from its own thread.
        self.serving_name = ""
        self.serving_args: tuple[Any, ...] | None = None

    # ----------------------------------------------------------------- replies

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """The reply for ``node``. Fields whose value is pyfuse3's default are not set again
        (generation and st_rdev 0, st_blksize 4096, st_nlink 1, st_size and st_blocks 0)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.st_mode = node.mode
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.attr_timeout = CACHE_TIMEOUT
        children = node.children
        if children is not None:
            attr.entry_timeout = self.dir_entry_timeout
            attr.st_size = DIRENT_SIZE * (len(children) + 2)
            attr.st_nlink = node.nlink
        else:
            attr.entry_timeout = CACHE_TIMEOUT
            data = node.data
            if data is not None:  # sparse: blocks count the bytes stored, not the size
                attr.st_size = data.size
                attr.st_blocks = (data.stored + 511) // 512
            if node.parent is None:
                attr.st_nlink = 0
        attr.st_atime_ns = node.atime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        return attr

    @staticmethod
    def _file_info(node: Node) -> pyfuse3.FileInfo:
        # keep_cache: only this kernel ever writes, so its page cache is always current.
        return pyfuse3.FileInfo(fh=node.ino, keep_cache=True)

    # ----------------------------------------------------------------- names

    @_handler
    def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.table.lookup(parent_inode, name)
        if node is None:
            return ABSENT
        return self.entry(node)

    @_handler
    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)

    @_handler
    def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(self.table.getattr(inode))

    @_handler
    def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.table.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.entry(node)

    @_handler
    def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.entry(self.table.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_handler
    def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.entry(self.table.mknod(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_handler
    def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.table.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        return self._file_info(node), self.entry(node)

    @_handler
    def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.table.unlink(parent_inode, name)

    @_handler
    def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.table.rmdir(parent_inode, name)

    @_handler
    def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.table.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_handler
    def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.table.link(inode, new_parent_inode, new_name)

    @_handler
    def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.table.symlink(parent_inode, name, target)

    @_handler
    def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self.table.readlink(inode)

    # ----------------------------------------------------------------- files

    @_handler
    def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._file_info(self.table.open(inode, flags))

    @_handler
    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.table.read(fh, off, size)

    @_handler
    def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.table.write(fh, off, buf)

    @_handler
    def flush(self, fh: int) -> None:
        raise FsError(errno.ENOSYS)

    @_handler
    def release(self, fh: int) -> None:
        self.table.release(fh)

    @_handler
    def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # ----------------------------------------------------------------- directories

    @_handler
    def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.table.opendir(inode).ino

    @_handler
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.table.readdirplus(
            fh,
            start_id,
            lambda name, node, cookie: pyfuse3.readdir_reply(token, name, self.entry(node), cookie),
        )

    @_handler
    def releasedir(self, fh: int) -> None:
        self.table.release(fh)

    @_handler
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_handler
    def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        capacity = self.table.capacity()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        # Entries are what the mount can run out of: df shows them as blocks too.
        data.f_blocks = data.f_files = capacity.total
        data.f_bfree = data.f_bavail = data.f_ffree = data.f_favail = capacity.free
        data.f_namemax = capacity.name_max
        return data
