"""Data across restarts: every data file of a mount, mirrored in a root-only directory.

A lock directory's files are empty, except the few that hold data (PBS's ``move-journal``).
On tmpfs those live until reboot; a lockfs table lives as long as its daemon. So each mount has
a mirror, ``<data_dir>/<escaped mountpoint>/`` (``data_dir`` default ``/run/lockfs/data``, a
tmpfs: until reboot), and :class:`DataMirror` keeps this invariant after every request:

    For every regular file of the table that has a name and holds data, the mirror has a
    regular file at the same path with the same bytes (holes may stay holes), owner, mode and
    mtime; the directories on the way have their directory's owner and mode. Nothing else is
    in it: an emptied, removed or renamed file leaves nothing behind, and a mirror directory
    left without files is removed.

The table tells the mirror of every change before it makes it (:class:`lockfs.nodes.
DataObserver`); the mirror changes its copy first, and if that fails (``/run`` full: ENOSPC,
anything else: EIO) it undoes its own part and raises :class:`~lockfs.nodes.FsError`, so the
request fails and the table changes nothing: all or nothing. Space is reserved
(``posix_fallocate``) before bytes are written, so a write that runs out of space changes
nothing. Only an undo that itself fails raises something else (the mirror may then differ:
an internal fault).

At mount, :meth:`DataMirror.restore` loads the mirror into the fresh table (lockfs.restore:
through the table's own request methods; what it cannot take fails the mount with its name).

The mirror is reached only through directory descriptors opened with ``O_NOFOLLOW``
(lockfs.mirror_fds). Which daemon writes to the mount's directory, and the takeover from a
daemon still holding it, is lockfs.mirror_dir's. No FUSE imports.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Iterator

from .linux import RENAME_EXCHANGE, renameat2
from .mirror_dir import LOCK_WAIT, MirrorDir
from .mirror_fds import Chain, cut_to, open_chain, pwrite_all
from .nodes import ROOT_INO, FsError, Node, NodeTable
from .restore import CHUNK, MirrorError, Restored, load, scan
from .rootfiles import DIR_FLAGS

log = logging.getLogger(__name__)

#: At most one "cannot keep ... across restarts" log line per this many seconds.
FAILURE_LOG_INTERVAL = 60.0


class MirrorDiverged(RuntimeError):
    """Undoing a failed change of the mirror failed too: it may differ from the table."""


def _fail(exc: OSError) -> FsError:
    """The errno a request gets when its change cannot be mirrored."""
    return FsError(errno.ENOSPC if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO)


def _dirs_of(node: Node) -> list[Node]:
    """The directories from below the root down to ``node``'s directory."""
    dirs: list[Node] = []
    cursor = node.parent
    while cursor is not None and cursor.ino != ROOT_INO:
        dirs.append(cursor)
        cursor = cursor.parent
    dirs.reverse()
    return dirs


class DataMirror:
    """The mirror of one mount's data files (see the module docstring): restore at mount,
    then the table's :class:`~lockfs.nodes.DataObserver`."""

    def __init__(
        self, table: NodeTable, data_dir: str, mountpoint: str, *, lock_wait: float = LOCK_WAIT
    ) -> None:
        self.table = table
        self.dir = MirrorDir(data_dir, mountpoint, lock_wait=lock_wait)
        self.data_dir = data_dir
        self.path = self.dir.path
        self._failure_logged_at = -FAILURE_LOG_INTERVAL
        self._failures = 0

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Open (creating) the mount's directory and lock it, or find it held by a daemon
        that :meth:`restore` takes it over from; raises :class:`MirrorError`."""
        self.dir.open()

    def close(self) -> None:
        """Let go of the mirror (its directory stays if it holds data)."""
        self.dir.close()

    def _usable(self, node: Node) -> bool:
        """Before a change of ``node``: whether this daemon still keeps the mirror. If its
        directory was removed (by hand), it is written again from the table; if another
        daemon took it over (this mount is no longer at its path), this one stops keeping
        data."""
        if self.dir.root_fd < 0:
            return False
        try:
            removed = self.dir.let_go_if_removed()
            if removed is None:
                return True
            if removed:
                log.warning("%s was removed: writing it again from the mount", self.path)
                self._replace_with_copy(exchange=False)
                return True
        except OSError as exc:
            self._log_failure(node, exc)
            raise _fail(exc) from None
        log.warning(
            "%s was taken over by a newer lockfs mounted at the same path: this mount's data "
            "is no longer kept across restarts",
            self.path,
        )
        return False

    def _replace_with_copy(self, *, exchange: bool) -> None:
        """Write every data file of the table into a new directory and put it in place:
        swapped with the held one (which is then removed), or under the missing name."""
        with self.dir.replacement(exchange=exchange):
            for node in self._data_files():
                with self._change(node) as (chain, undo):
                    assert chain is not None
                    self._data_file(chain, node, undo)

    def _data_files(self) -> Iterator[Node]:
        """The table's linked regular files that hold data."""
        stack = [self.table.root]
        while stack:
            directory = stack.pop()
            assert directory.children is not None
            for node in directory.children.values():
                if node.children is not None:
                    stack.append(node)
                elif node.size:
                    yield node

    # ----------------------------------------------------------------- restore

    def restore(self) -> Restored:
        """Load the mirror into the (fresh) table (lockfs.restore), take it over from a daemon
        that still holds it, then watch the table's changes. Raises :class:`MirrorError`
        naming what cannot be restored."""
        held = self.dir.held_fd >= 0
        entries = scan(self.dir.held_fd if held else self.dir.root_fd, self.path, prune=not held)
        done = load(self.table, entries, self.path)
        if held:
            self._take_over()
        self.table.observer = self
        return done

    def _take_over(self) -> None:
        try:
            self._replace_with_copy(exchange=True)
        except (OSError, FsError) as exc:
            raise MirrorError(f"cannot take over {self.path}: {exc}") from None
        self.dir.let_go_of_held()
        log.warning(
            "took over %s from a lockfs daemon still serving a mount that is no longer at this "
            "path (unmounted lazily, or kept by another mount namespace); its changes from now "
            "on are not kept",
            self.path,
        )

    # ----------------------------------------------------------------- the observer

    def write(self, node: Node, offset: int, buf: bytes, mtime_ns: int) -> None:
        if node.parent is None or node.children is not None:
            return  # an unlinked file goes with its last holder
        if not self._usable(node):
            return
        with self._change(node) as (chain, undo):
            assert chain is not None
            fd, old_size, created = self._data_file(chain, node, undo)
            try:
                os.posix_fallocate(fd, offset, len(buf))
            except OSError:
                with contextlib.suppress(OSError):  # a partial reservation past the end
                    cut_to(fd, old_size)
                raise
            try:
                pwrite_all(fd, buf, offset)
            except OSError:
                if offset < old_size and not created:
                    raise MirrorDiverged(f"the mirror of /{self._shown(node)} may differ") from None
                cut_to(fd, old_size)
                raise
            self._set_mtime(fd, node, mtime_ns, created)

    def setattr(
        self,
        node: Node,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        if node.children is None and not size and not node.size:
            return  # a lock file's fchmod and fchown: nothing to keep
        if node.parent is None or node.ino == ROOT_INO or not self._usable(node):
            return
        if node.children is not None:
            if mode is not None or uid is not None or gid is not None:
                self._directory_attributes(node, mode, uid, gid)
            return
        new_size = node.size if size is None else size
        if new_size == 0:
            if node.size:
                self.unlink(node)
            return
        if node.size and (size, mode, uid, gid, mtime_ns) == (None,) * 5:
            return
        with self._change(node) as (chain, undo):
            assert chain is not None
            fd, old_size, created = self._data_file(chain, node, undo)
            try:  # owner and mode can be put back; a shorter file cannot: it comes last
                os.fchown(fd, node.uid if uid is None else uid, node.gid if gid is None else gid)
                os.fchmod(fd, stat.S_IMODE(node.mode) if mode is None else mode)
                if new_size != old_size:
                    os.ftruncate(fd, new_size)
            except OSError:
                if not created:
                    self._undo_attributes(fd, node)
                raise
            self._set_mtime(fd, node, node.mtime_ns if mtime_ns is None else mtime_ns, created)

    def unlink(self, node: Node) -> None:
        if node.parent is None or node.children is not None or not node.size:
            return
        if not self._usable(node):
            return
        with self._change(node, create=False) as (chain, _undo):
            if chain is None:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node.name, dir_fd=chain.fd)
            chain.prune()

    def rename(
        self, node: Node, target: Node | None, new_parent: Node, new_name: bytes, exchange: bool
    ) -> None:
        empty = node.children is None and not node.size
        if empty and (target is None or (target.children is None and not target.size)):
            return  # PBS's new lock file onto its name: nothing to keep
        if not self._usable(node):
            return
        moves = self._has_mirror(node)
        replaced = target is not None and self._has_mirror(target)
        if not moves and not replaced:
            return
        old_dirs = _dirs_of(node)
        new_dirs = [] if new_parent.ino == ROOT_INO else [*_dirs_of(new_parent), new_parent]
        try:
            if not moves:  # only the target has a mirror
                assert target is not None
                if exchange:  # it takes the moved node's old name
                    self._move(new_dirs, new_name, old_dirs, node.name)
                elif target.children is None:
                    self.unlink(target)
                return
            if exchange and replaced:
                self._exchange(old_dirs, node.name, new_dirs, new_name)
            else:
                self._move(old_dirs, node.name, new_dirs, new_name)
        except OSError as exc:
            self._log_failure(node, exc)
            raise _fail(exc) from None

    # ----------------------------------------------------------------- mirror changes

    @contextlib.contextmanager
    def _change(
        self, node: Node, *, create: bool = True
    ) -> Iterator[tuple[Chain | None, list[tuple[int, bytes]]]]:
        """Open the mirror directories down to ``node``'s (creating them unless ``create`` is
        false: then the chain is None when one is missing) for one change. A failure undoes
        what the change made (the files listed in ``undo``, the directories) and becomes an
        :class:`FsError`."""
        chain: Chain | None = None
        undo: list[tuple[int, bytes]] = []
        try:
            chain = self._chain(_dirs_of(node), create=create)
            yield chain, undo
        except OSError as exc:
            self._log_failure(node, exc)
            try:
                for dir_fd, name in undo:
                    os.unlink(name, dir_fd=dir_fd)
                if chain is not None:
                    chain.undo()
            except OSError as undo_exc:
                raise MirrorDiverged(
                    f"undoing a failed change of the mirror of /{self._shown(node)} failed: "
                    f"{undo_exc.strerror}"
                ) from exc
            raise _fail(exc) from None
        finally:
            if chain is not None:
                chain.close()

    def _chain(self, dirs: list[Node], *, create: bool) -> Chain | None:
        return open_chain(self.dir.root_fd, dirs, create=create)

    def _data_file(
        self, chain: Chain, node: Node, undo: list[tuple[int, bytes]]
    ) -> tuple[int, int, bool]:
        """The mirror file of ``node`` opened for writing (closed with the chain): its size
        now, and whether it was made for this change. A file that becomes a data file gets a
        new one with its owner and mode; a data file whose mirror is missing (removed by
        hand) gets its data rewritten from the table."""
        name = node.name
        if node.size:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=chain.fd)
            except FileNotFoundError:
                log.warning("the mirror of /%s was missing: rewritten", self._shown(node))
            else:
                chain.keep(fd)
                return fd, os.fstat(fd).st_size, False
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = chain.keep(os.open(name, flags, 0o600, dir_fd=chain.fd))
        undo.append((chain.fd, name))
        os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, stat.S_IMODE(node.mode))  # after chown, which clears setuid and setgid
        if node.size:
            self._copy_from_table(fd, node)
        return fd, os.fstat(fd).st_size, True

    def _copy_from_table(self, fd: int, node: Node) -> None:
        os.posix_fallocate(fd, 0, node.size)
        for offset in range(0, node.size, CHUNK):
            pwrite_all(fd, self.table.read(node.ino, offset, CHUNK), offset)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    def _set_mtime(self, fd: int, node: Node, mtime_ns: int, created: bool) -> None:
        """The last step of a change (the bytes are in): a failure is undone only for a file
        made for this change."""
        try:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as exc:
            if created:
                raise
            raise MirrorDiverged(
                f"the mirror of /{self._shown(node)} has new data but not its mtime: {exc}"
            ) from None

    def _undo_attributes(self, fd: int, node: Node) -> None:
        try:
            os.fchown(fd, node.uid, node.gid)
            os.fchmod(fd, stat.S_IMODE(node.mode))
        except OSError as exc:
            raise MirrorDiverged(
                f"the mirror of /{self._shown(node)} may have other attributes: {exc.strerror}"
            ) from None

    def _directory_attributes(
        self, node: Node, mode: int | None, uid: int | None, gid: int | None
    ) -> None:
        with self._change(node, create=False) as (chain, _undo):
            if chain is None:
                return
            try:
                fd = chain.keep(os.open(node.name, DIR_FLAGS, dir_fd=chain.fd))
            except FileNotFoundError:
                return  # no data below it
            if uid is not None or gid is not None:
                os.fchown(fd, node.uid if uid is None else uid, node.gid if gid is None else gid)
            os.fchmod(fd, stat.S_IMODE(node.mode) if mode is None else mode)

    def _has_mirror(self, node: Node) -> bool:
        """A data file has one; a directory has one when data files are below it."""
        if node.parent is None:
            return False
        if node.children is None:
            return bool(node.size)
        chain = self._chain([*_dirs_of(node), node], create=False)
        if chain is None:
            return False
        chain.close()
        return True

    def _move(
        self, old_dirs: list[Node], old_name: bytes, new_dirs: list[Node], new_name: bytes
    ) -> None:
        """Rename a mirror entry (replacing what the new name had), making the new
        directories and removing the old ones it leaves empty."""
        source = self._chain(old_dirs, create=False)
        if source is None:
            raise OSError(errno.ENOENT, "a mirror directory is missing")
        try:
            dest = self._chain(new_dirs, create=True)
            assert dest is not None
            try:
                os.rename(old_name, new_name, src_dir_fd=source.fd, dst_dir_fd=dest.fd)
            except OSError:
                dest.undo()
                raise
            finally:
                dest.close()
            source.prune()
        finally:
            source.close()

    def _exchange(
        self, old_dirs: list[Node], old_name: bytes, new_dirs: list[Node], new_name: bytes
    ) -> None:
        first = self._chain(old_dirs, create=False)
        second = self._chain(new_dirs, create=False)
        try:
            if first is None or second is None:
                raise OSError(errno.ENOENT, "a mirror directory is missing")
            renameat2(
                old_name, new_name, RENAME_EXCHANGE, old_dir_fd=first.fd, new_dir_fd=second.fd
            )
        finally:
            for chain in (first, second):
                if chain is not None:
                    chain.close()

    # ----------------------------------------------------------------- reporting

    @staticmethod
    def _shown(node: Node) -> str:
        return node.path().decode("utf-8", "backslashreplace")

    def _log_failure(self, node: Node, exc: OSError) -> None:
        """One line a minute at most: the change could not be mirrored, so it failed."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged_at < FAILURE_LOG_INTERVAL:
            return
        self._failure_logged_at = now
        log.error(
            "cannot keep /%s across restarts in %s: %s; the request failed and changed nothing "
            "(%d such failures so far)",
            self._shown(node),
            self.path,
            exc.strerror or exc,
            self._failures,
        )
