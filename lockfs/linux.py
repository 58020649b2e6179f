"""The Linux primitives lockfs needs beyond the os module, each written once.

* libc, loaded once, with argument types for every call made through it: ``renameat2``
  (with ``RENAME_NOREPLACE`` / ``RENAME_EXCHANGE``, relative to directory descriptors),
  ``umount2``, ``mkostemp`` and an interruptible ``flock``; the inode flags ioctl
  (:func:`set_immutable`).
* The /proc readers: the kernel's locks (/proc/locks, and the lock lines of every process's
  fdinfo for OFD locks, which show no pid), which processes use inodes of a filesystem (their
  working directory, root or an open descriptor) and a process's command name.

A failed call raises ``OSError`` with the errno, as the os module does. The readers never
raise for a process that exits while it is read: it is skipped.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

AnyPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

AT_FDCWD = -100
#: ``renameat2`` flags (linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
#: ``umount2`` flag (sys/mount.h): do not follow a symlink at the path. (lockfs never unmounts
#: lazily: MNT_DETACH is not here.)
UMOUNT_NOFOLLOW = 8

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
libc.renameat2.restype = ctypes.c_int
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.umount2.restype = ctypes.c_int
libc.mkostemp.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.mkostemp.restype = ctypes.c_int
libc.flock.argtypes = [ctypes.c_int, ctypes.c_int]
libc.flock.restype = ctypes.c_int


def errno_error(filename: AnyPath | None = None) -> OSError:
    """The OSError of the libc call that just failed (its errno)."""
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), filename)


def renameat2(
    old: AnyPath,
    new: AnyPath,
    flags: int = 0,
    *,
    old_dir_fd: int = AT_FDCWD,
    new_dir_fd: int = AT_FDCWD,
) -> None:
    """renameat2(2), which the os module lacks: ``flags`` ``RENAME_NOREPLACE`` (never replace
    ``new``; os.rename replaces an empty directory), ``RENAME_EXCHANGE``, ...; ``old`` and
    ``new`` relative to the directory descriptors when given."""
    if libc.renameat2(old_dir_fd, os.fsencode(old), new_dir_fd, os.fsencode(new), flags) != 0:
        raise errno_error(new)


def umount2(path: AnyPath, flags: int = 0) -> None:
    """umount2(2): a busy mount raises ``OSError(EBUSY)``."""
    if libc.umount2(os.fsencode(path), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount {os.fsdecode(path)}: {os.strerror(code)}")


def mkostemp(prefix: AnyPath, flags: int = os.O_CLOEXEC) -> tuple[int, bytes]:
    """glibc's mkostemp of ``prefix + "XXXXXX"``: a new file, mode 0600; its fd and path."""
    template = ctypes.create_string_buffer(os.fsencode(prefix) + b"XXXXXX")
    fd = libc.mkostemp(template, flags)
    if fd < 0:
        raise errno_error(template.value)
    return fd, template.value


def flock(fd: int, operation: int) -> None:
    """flock(2) called once: a signal interrupts a blocking lock with ``OSError(EINTR)``
    (fcntl.flock retries it instead)."""
    if libc.flock(fd, operation) != 0:
        raise errno_error()


#: The inode flags ioctl (linux/fs.h) and its immutable flag.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def set_immutable(fd: int, on: bool) -> None:
    """Set or clear the immutable flag of the inode open at ``fd`` (CAP_LINUX_IMMUTABLE): an
    immutable directory cannot be renamed, removed or changed, but can be mounted on. Raises
    OSError (ENOTTY, EOPNOTSUPP) where the filesystem has no such flag."""
    # The kernel reads and writes an int, although the ioctl numbers say long: room for both.
    flags = struct.unpack("i4x", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
    wanted = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
    if wanted != flags:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i4x", wanted))


# --- /proc/locks --------------------------------------------------------------------------------

_LOCK_LINE = re.compile(
    r"^(?P<id>\d+):\s+(?P<arrow>->\s+)?(?P<type>\S+)\s+(?P<adv>\S+)\s+(?P<rw>\S+)\s+"
    r"(?P<pid>-?\d+)\s+(?P<maj>[0-9a-f]+):(?P<min>[0-9a-f]+):(?P<ino>\d+)\s+"
    r"(?P<start>\S+)\s+(?P<end>\S+)"
)
_KINDS = {"FLOCK": "flock", "POSIX": "posix", "OFDLCK": "ofd"}


@dataclass(frozen=True, slots=True)
class KernelLock:
    """One line of /proc/locks. Blocked requests are ``->`` lines (``waiting``) right after
    the lock that blocks them."""

    lock_id: int
    waiting: bool
    kind: str
    exclusive: bool
    pid: int | None
    dev: int
    ino: int
    start: str
    end: str


def parse_proc_locks(text: str) -> list[KernelLock]:
    """Parse /proc/locks; lines that are not flock/POSIX/OFD locks (leases) are skipped."""
    locks = []
    for line in text.splitlines():
        match = _LOCK_LINE.match(line.strip())
        if not match or match["type"] not in _KINDS:
            continue
        pid = int(match["pid"])
        locks.append(
            KernelLock(
                lock_id=int(match["id"]),
                waiting=bool(match["arrow"]),
                kind=_KINDS[match["type"]],
                exclusive=match["rw"] == "WRITE",
                pid=pid if pid > 0 else None,
                dev=os.makedev(int(match["maj"], 16), int(match["min"], 16)),
                ino=int(match["ino"]),
                start=match["start"],
                end=match["end"],
            )
        )
    return locks


def read_proc_locks(dev: int) -> list[KernelLock]:
    """The kernel's locks on device ``dev`` (a mount's ``st_dev``)."""
    with open("/proc/locks") as proc_locks:
        return [lock for lock in parse_proc_locks(proc_locks.read()) if lock.dev == dev]


# --- processes ----------------------------------------------------------------------------------


def pids() -> list[int]:
    """The processes there are now (some may be gone by the time they are read)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def command_of(pid: int | None) -> str:
    """A process's command name (``comm``), ``?`` if it is unknown or gone."""
    if pid is None:
        return "?"
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def ofd_holders(dev: int, inos: Iterable[int]) -> dict[int, list[int]]:
    """Pids whose open files carry a lock on each inode of device ``dev`` (OFD locks show no
    pid in /proc/locks; the ``lock:`` lines of /proc/PID/fdinfo do)."""
    wanted = set(inos)
    major, minor = os.major(dev), os.minor(dev)
    key = re.compile(rf"\b0*{major:x}:0*{minor:x}:(\d+)\b")
    holders: dict[int, set[int]] = {}
    for pid in pids():
        try:
            fdinfos = os.scandir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        with fdinfos:
            for fdinfo in fdinfos:
                try:
                    with open(fdinfo.path) as info:
                        text = info.read()
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("lock:") and (match := key.search(line)):
                        ino = int(match[1])
                        if ino in wanted:
                            holders.setdefault(ino, set()).add(pid)
    return {ino: sorted(found) for ino, found in holders.items()}


@dataclass(frozen=True, slots=True)
class ProcessUse:
    """A process that uses an inode: ``how`` is ``cwd``, ``root`` or ``fd``; ``target`` is
    what its /proc link reads (the path the kernel has for it)."""

    pid: int
    how: str
    ino: int
    target: str


def processes_using(dev: int, inos: Iterable[int], *, skip: Iterable[int] = ()) -> list[ProcessUse]:
    """Every process (but those in ``skip``) whose working directory, root or an open
    descriptor is one of ``inos`` on device ``dev``. Compares inodes, so it sees through
    renames."""
    wanted, skipped = set(inos), set(skip)
    found = []
    for pid in pids():
        if pid in skipped:
            continue
        base = f"/proc/{pid}"
        try:
            links = [(f"{base}/fd/{fd}", "fd") for fd in os.listdir(f"{base}/fd")]
        except OSError:
            continue
        for link, how in [(f"{base}/cwd", "cwd"), (f"{base}/root", "root"), *links]:
            try:
                st = os.stat(link)
            except OSError:
                continue
            if st.st_dev == dev and st.st_ino in wanted:
                found.append(ProcessUse(pid, how, st.st_ino, _readlink(link)))
    return found


def _readlink(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return link
