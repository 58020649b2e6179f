"""Facts about mounts and mountpoints, read from /proc, and the checks made before mounting.

The invariant these checks keep: lockfs never mounts where a lock file could already be held,
because hiding a held lock file under a new mount (or stacking a second lockfs on a first one)
would let a second process take "the same" lock. So mounting is refused when the mountpoint is
missing, not an empty directory, already a lockfs, or a dead lockfs whose old holders may still
hold descriptors; and the check and the mount happen under an exclusive claim on the
mountpoint, so two lockfs processes racing for one directory cannot both pass the check.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass

from .linux import umount2

FSTYPE = "fuse.lockfs"


class MountError(Exception):
    """Mounting cannot go ahead; the message says why, for the user."""


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields lockfs needs)."""

    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str
    #: The mounted filesystem's device number (``st_dev`` of files on it).
    dev: int = 0


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/self/mountinfo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    """Every mount this process sees, in mountinfo order (a mount after the ones it covers)."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            sep = fields.index("-")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    mountpoint=_unescape(fields[4]),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    options=fields[5],
                    dev=os.makedev(*(int(n) for n in fields[2].split(":"))),
                )
            )
    return entries


def resolve(path: str | os.PathLike[str]) -> str:
    """An absolute path without symlinks. Never fails on a dead mount (realpath tolerates
    ENOTCONN on the last component), but waits for a live FUSE mount to answer."""
    return os.path.realpath(os.path.abspath(path))


def entries_at(path: str | os.PathLike[str], *, resolve_path: bool = True) -> list[MountEntry]:
    """The mounts exactly at ``path``, the covered ones first and the visible one last."""
    target = resolve(path) if resolve_path else os.fspath(path)
    return [entry for entry in mount_table() if entry.mountpoint == target]


def mount_holding(path: str) -> MountEntry | None:
    """The mount that ``path`` (absolute, resolved) lies in: of the mounts at ``path`` or at a
    directory above it, the one mounted last (it covers the others, or lies inside them)."""
    holding = None
    for entry in mount_table():
        top = entry.mountpoint.rstrip("/") + "/"
        if path == entry.mountpoint or path.startswith(top):
            holding = entry
    return holding


def mounts_at(path: str | os.PathLike[str], *, resolve_path: bool = True) -> list[str]:
    """Filesystem types mounted exactly at ``path``, oldest first.

    A daemon asking about its own mountpoint passes ``resolve_path=False`` and a resolved
    path: resolving stats the mount, which waits for the daemon itself.
    """
    return [entry.fstype for entry in entries_at(path, resolve_path=resolve_path)]


def is_lockfs_mounted(path: str | os.PathLike[str], *, resolve_path: bool = True) -> bool:
    """Whether the topmost mount at ``path`` is a lockfs."""
    types = mounts_at(path, resolve_path=resolve_path)
    return bool(types) and types[-1] == FSTYPE


def dead_mount_message(path: str) -> str:
    """What an administrator must do about a lockfs mount whose daemon is gone."""
    return (
        f"{path} is a dead lockfs mount: its daemon is gone and it answers ENOTCONN. Processes "
        "may still hold lock files on it, so lockfs will not mount over it. Stop every process "
        f"using it (fuser -vm {path}), then run `umount {path}` and mount again"
    )


def check_mountpoint(path: str) -> None:
    """Refuse a mountpoint that is missing, not a directory, a lockfs (live or dead), or not
    empty. ``path`` must be absolute and resolved (see :func:`resolve`).

    Mounting over a non-empty lock directory would hide lock files that processes may hold,
    and a second lock file of the same name would break mutual exclusion.
    """
    entries = entries_at(path, resolve_path=False)
    if entries and entries[-1].fstype == FSTYPE:
        try:
            # statvfs always asks the daemon; stat may be answered from the attribute cache.
            os.statvfs(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                raise MountError(dead_mount_message(path)) from None
            raise MountError(f"{path} is a lockfs mount that fails: {exc.strerror}") from None
        raise MountError(f"{path} is already a lockfs mount")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {path} cannot be used: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    try:
        with os.scandir(path) as listing:
            empty = not any(True for _ in listing)
    except OSError as exc:
        raise MountError(f"mountpoint {path} cannot be listed: {exc.strerror}") from None
    if not empty:
        raise MountError(
            f"mountpoint {path} is not empty: lock files in it could be held, and hiding "
            "them under a new mount would break mutual exclusion"
        )


class MountpointClaim:
    """An exclusive flock on the mountpoint directory, held from the check until the mount
    is in place (or has been cleaned up).

    A second lockfs that starts meanwhile waits for the claim and then finds the new mount,
    so it fails with "already a lockfs mount" instead of stacking a second lockfs on top.
    The lock belongs to the open file description: a forked child shares it, and it is
    released when the last copy of the descriptor is closed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        check_mountpoint(path)  # fail fast, with the precise reason, before touching the path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(f"mountpoint {path} cannot be opened: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            check_mountpoint(path)  # again, now that no other lockfs can be mounting here
            #: The mounts at ``path`` before lockfs mounted: anything newer is this claim's.
            self.mount_ids_before = {e.mount_id for e in entries_at(path, resolve_path=False)}
        except BaseException:
            self.release()
            raise

    def new_mounts(self) -> list[MountEntry]:
        """lockfs mounts at the path that appeared since the claim, topmost first."""
        return [
            entry
            for entry in reversed(entries_at(self.path, resolve_path=False))
            if entry.fstype == FSTYPE and entry.mount_id not in self.mount_ids_before
        ]

    def release(self) -> None:
        """Close this copy of the descriptor (the claim ends when no copy is left)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


#: The capability mount(2) needs; lockfs mounts by itself, never through fusermount3.
CAP_SYS_ADMIN = 21


def may_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (root normally does; a container's root may
    not)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def check_may_mount() -> None:
    """Refuse early, with the reason, when this process cannot mount."""
    if may_mount():
        return
    who = "root without CAP_SYS_ADMIN" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    raise MountError(
        f"mounting lockfs needs root (CAP_SYS_ADMIN), and this is {who}. lockfs mounts for all "
        "users (allow_other) and checks and claims its mountpoint itself, so it does not mount "
        "as an ordinary user through fusermount3: run it as root (mount -t fuse.lockfs, fstab, "
        "the systemd unit, or sudo lockfs mount ...)"
    )


def check_fuse_device() -> None:
    """Refuse early, saying what is wrong, when /dev/fuse cannot be opened."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(_fuse_device_problem(exc)) from None
    os.close(fd)


def _fuse_device_problem(exc: OSError) -> str:
    problem = f"cannot open /dev/fuse: {exc.strerror}"
    if exc.errno == errno.ENOENT:
        return (
            f"{problem}: load the fuse module (modprobe fuse); in a container, give it the "
            "device (/dev/fuse)"
        )
    if exc.errno in (errno.ENODEV, errno.ENXIO):
        return f"{problem}: the fuse module is not loaded (modprobe fuse)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        if not may_mount():
            return f"{problem}: mounting lockfs needs root (CAP_SYS_ADMIN)"
        return (
            f"{problem}, although this process may mount: a device cgroup or a security "
            "policy (container, AppArmor, SELinux) denies the device"
        )
    return problem


def umount(path: str) -> None:
    """umount2(2), never lazily: a busy mount raises ``OSError(EBUSY)``."""
    umount2(path)


def is_busy(exc: OSError) -> bool:
    return exc.errno == errno.EBUSY
