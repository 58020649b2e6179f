"""Facts about mounts and mountpoints, read from /proc, and the checks made before mounting."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

FSTYPE = "fuse.lockfs"


class MountError(Exception):
    """Mounting cannot go ahead; the message says why, for the user."""


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


def mounts_at(path: str | os.PathLike[str], *, resolve: bool = True) -> list[str]:
    """Filesystem types mounted exactly at ``path``, oldest first.

    A daemon asking about its own mountpoint passes ``resolve=False`` and a resolved path:
    resolving stats the mount, which waits for the daemon itself.
    """
    target = os.path.realpath(path) if resolve else os.fspath(path)
    types = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == target:
                types.append(fields[sep + 1])
    return types


def is_lockfs_mounted(path: str | os.PathLike[str], *, resolve: bool = True) -> bool:
    """Whether the topmost mount at ``path`` is a lockfs."""
    types = mounts_at(path, resolve=resolve)
    return bool(types) and types[-1] == FSTYPE


def check_mountpoint(path: str) -> None:
    """Refuse a mountpoint that is missing, not a directory, already lockfs, or not empty.

    Mounting over a non-empty lock directory would hide lock files that processes may hold,
    and a second lock file of the same name would break mutual exclusion.
    """
    mountpoint = Path(path)
    if not mountpoint.exists():
        raise MountError(f"mountpoint {path} does not exist")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    if is_lockfs_mounted(path):
        raise MountError(f"{path} is already a lockfs mount")
    if any(mountpoint.iterdir()):
        raise MountError(
            f"mountpoint {path} is not empty: lock files in it could be held, and hiding "
            "them under a new mount would break mutual exclusion"
        )


def check_fuse_device() -> None:
    """Refuse early when /dev/fuse cannot be opened."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(
            f"cannot open /dev/fuse: {exc.strerror} (is the fuse module loaded?)"
        ) from None
    os.close(fd)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def umount(path: str, *, lazy: bool = False) -> None:
    """umount2(2); a busy mount raises ``OSError(EBUSY)`` unless ``lazy``."""
    flags = 2 if lazy else 0  # MNT_DETACH
    if _libc.umount2(os.fsencode(path), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount {path}: {os.strerror(code)}")


def is_busy(exc: OSError) -> bool:
    return exc.errno == errno.EBUSY
