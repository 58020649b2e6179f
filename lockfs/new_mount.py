"""The new mount of ``lockfs switch-over``: its mountpoint made in a parent directory that others
may write (``backup`` owns /run/proxmox-backup), lockfs mounted on it, the data files copied in.

What it keeps, whatever the parent's other writers do meanwhile:

* Only the directory it created is given an owner and a mode, on its descriptor; only that
  directory is mounted on. It is made immutable from just after its creation until lockfs is
  mounted on it (where the filesystem has the flag): no rename can then swap a symlink in under
  the path that mount(8) and systemd take (once a rename already under way has ended: see
  ``NewMount._wait_for_renames``). Before the mount, the parent's entry must still be
  that directory; after it, the entry must lead to the root of a lockfs mounted since.
* Data files are written into the mount through descriptors (``O_NOFOLLOW``, ``O_EXCL``), with
  their owner and mode set on the descriptor, and read back.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

from .dirfd_tree import DIR_FLAGS, Changed, Entry, Tree, open_problem, read_data, same_file
from .linux import UMOUNT_NOFOLLOW, set_immutable, umount2
from .mounts import FSTYPE, entries_at, mount_table


class MountFailed(Exception):
    """The new mountpoint could not be made or mounted on; the message says why."""


class NewMount:
    """The new mountpoint ``name`` in the directory open at ``parent_fd`` (shown as ``path``)."""

    def __init__(self, parent_fd: int, name: str, path: str) -> None:
        self.parent_fd = parent_fd
        self.name = name
        self.path = path
        #: The directory this made, once made.
        self.fd: int | None = None

    def _entry(self) -> os.stat_result | None:
        try:
            return os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _is_mine(self) -> bool:
        found = self._entry()
        return self.fd is not None and found is not None and same_file(found, os.fstat(self.fd))

    def make(self, uid: int, gid: int, mode: int) -> None:
        """Create the mountpoint, empty, with owner ``uid:gid`` and ``mode``."""
        try:
            os.mkdir(self.name, 0o700, dir_fd=self.parent_fd)
        except OSError as exc:
            raise MountFailed(
                f"cannot create the new mountpoint {self.path}: {exc.strerror}"
            ) from None
        try:
            self.fd = os.open(self.name, DIR_FLAGS, dir_fd=self.parent_fd)
        except OSError as exc:
            problem = open_problem(self.parent_fd, self.name, self.path, exc, " now")
            raise MountFailed(
                f"the new mountpoint was replaced as it was created: {problem}"
            ) from None
        with os.scandir(self.fd) as listing:
            empty = next(listing, None) is None
        if os.fstat(self.fd).st_uid != 0 or not empty:
            raise MountFailed(f"the new mountpoint {self.path} was replaced as it was created")
        try:
            os.fchown(self.fd, uid, gid)
            os.fchmod(self.fd, mode)  # after chown, which may clear setgid
        except OSError as exc:
            raise MountFailed(
                f"cannot give {self.path} its owner and mode: {exc.strerror}{self.discard()}"
            ) from None

    def mount(self, cmd: list[str], env: dict[str, str]) -> None:
        """Run ``cmd`` (mount(8) or systemctl), which must mount lockfs on the mountpoint."""
        if self.fd is None:
            raise MountFailed(f"the new mountpoint {self.path} was not made")
        pinned = _pin(self.fd, True)
        try:
            if pinned:
                self._wait_for_renames()
            if not self._is_mine():
                raise MountFailed(f"the new mountpoint {self.path} was replaced before the mount")
            # Mount ids are reused as soon as a mount goes: compare (id, mountpoint) pairs.
            before = {(entry.mount_id, entry.mountpoint) for entry in mount_table()}
            # From /: mount(8) turns a source that names an existing path (./lockfs) into it.
            result = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True)
        finally:
            if pinned:
                _pin(self.fd, False)
        if result.returncode == 0 and not self._lockfs_mounted_since(before):
            result.returncode = 1
            result.stderr = f"`{' '.join(cmd)}` mounted no lockfs there" + _stray_mounts(before)
        if result.returncode != 0:
            reason = result.stderr.strip() or f"exit status {result.returncode}"
            raise MountFailed(f"mounting lockfs at {self.path} failed: {reason}")

    def _wait_for_renames(self) -> None:
        """Return once no rename that started before the pin can still move the mountpoint.

        The kernel checks the immutable flag before it locks the inodes it renames, so a
        rename that passed that check just before the pin may still complete after it. Every
        rename in the parent holds the parent's lock to its end, and so does a mkdir of an
        existing name (EEXIST, nothing made): once that mkdir returns, such a rename is done,
        and every later one fails with EPERM."""
        try:
            os.mkdir(self.name, 0o700, dir_fd=self.parent_fd)
        except OSError:  # EEXIST as meant; any other error: the check that follows decides
            return
        os.rmdir(self.name, dir_fd=self.parent_fd)  # the name was free: not ours, refused next

    def _lockfs_mounted_since(self, before: set[tuple[int, str]]) -> bool:
        """Whether a lockfs mounted since ``before`` is on the mountpoint, its root what the
        parent's entry leads to."""
        entries = entries_at(self.path, resolve_path=False)
        if not entries or entries[-1].fstype != FSTYPE:
            return False
        if (entries[-1].mount_id, entries[-1].mountpoint) in before:
            return False
        root = self._entry()
        return root is not None and (root.st_dev, root.st_ino) == (entries[-1].dev, 1)

    def is_mounted(self) -> bool:
        """Whether anything is mounted at the path."""
        return bool(entries_at(self.path, resolve_path=False))

    def unmount(self) -> None:
        """Unmount (never lazily: a busy mount raises OSError(EBUSY))."""
        umount2(self.path, UMOUNT_NOFOLLOW)

    def discard(self) -> str:
        """Remove the (unmounted) mountpoint if it is still where it was made: ``""``, or the
        sentence that says it could not."""
        try:
            if not self._is_mine():
                raise OSError(errno.ESTALE, "it was moved")
            os.rmdir(self.name, dir_fd=self.parent_fd)
        except OSError as exc:
            return f". The new mountpoint {self.path} could not be removed ({exc.strerror})"
        return ""

    def carry(self, root_fd: int, tree: Tree, max_file_size: int) -> list[str]:
        """Copy every data file of ``tree`` (open at ``root_fd``) into the mount; one line
        each ("PATH (N bytes)"). Raises OSError or :class:`~lockfs.dirfd_tree.Changed`."""
        mount_fd = os.open(self.name, DIR_FLAGS, dir_fd=self.parent_fd)
        try:
            if os.fstat(mount_fd).st_ino != 1:
                raise Changed(f"{self.path} is no longer the new mount")
            dirs = {entry.rel: entry.st for entry in tree.dirs}
            return [
                _carry(mount_fd, read_data(root_fd, tree, entry, max_file_size), entry, dirs)
                for entry in tree.data
            ]
        finally:
            os.close(mount_fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _stray_mounts(before: set[tuple[int, str]]) -> str:
    """The lockfs mounts that appeared since ``before`` (mount ids and mountpoints), for the
    administrator to remove (a mount that went elsewhere because a path was swapped)."""
    stray = [
        f"`umount {entry.mountpoint}`"
        for entry in mount_table()
        if entry.fstype == FSTYPE and (entry.mount_id, entry.mountpoint) not in before
    ]
    return f" (lockfs mounts that appeared meanwhile: {', '.join(stray)})" if stray else ""


def _pin(fd: int, on: bool) -> bool:
    """Make the mountpoint immutable (``on``) or not; False where that is impossible (the
    filesystem has no such flag, or no CAP_LINUX_IMMUTABLE)."""
    try:
        set_immutable(fd, on)
    except OSError:
        return False
    return True


def _carry(mount_fd: int, content: bytes, entry: Entry, dirs: dict[str, os.stat_result]) -> str:
    """Write one data file into the mount, creating its directories with their old owner and
    mode first; read it back to check the content."""
    parts = entry.rel.split(os.sep)
    opened: list[int] = []
    try:
        fd = mount_fd
        for depth in range(1, len(parts)):
            fd = _mkdir_at(fd, parts[depth - 1], dirs[os.path.join(*parts[:depth])])
            opened.append(fd)
        _write_new(fd, parts[-1], content, entry.st)
        if _read_back(fd, parts[-1], len(content) + 1) != content:
            raise OSError(errno.EIO, f"{entry.rel} reads back differently")
    finally:
        for fd in opened:
            os.close(fd)
    return f"{entry.rel} ({len(content)} bytes)"


def _mkdir_at(dir_fd: int, name: str, old: os.stat_result) -> int:
    """Directory ``name`` in the mount, created with the old owner and mode unless it exists;
    its descriptor."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        created = True
    except FileExistsError:
        created = False
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if created:
        os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
    return fd


def _write_new(dir_fd: int, name: str, content: bytes, old: os.stat_result) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, stat.S_IMODE(old.st_mode))  # after chown, which may clear setgid
    finally:
        os.close(fd)


def _read_back(dir_fd: int, name: str, limit: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
