"""Which processes still use a filesystem, found from /proc without ever touching it.

A dead FUSE mount answers ENOTCONN and a stuck one never answers, so nothing here stats a
file on it: a use is recognized by the mount it is on.

* An open descriptor: ``mnt_id`` in /proc/PID/fdinfo/FD names the mount it was opened
  through. The filesystem's mounts are collected from the mountinfo of every mount namespace
  a process is in (mount IDs are unique across namespaces), by device number.
* A working directory or root: /proc/PID/cwd (root) is opened ``O_PATH`` (following the
  link jumps to the directory without a request to the filesystem and without opening it),
  and the ``mnt_id`` of that descriptor is read from this process's own fdinfo.
* A mapping: /proc/PID/maps names the device of each mapped file.

A process that exits while it is read is skipped. Threads that unshared their working
directory, descriptors in flight in a UNIX socket and io_uring's registered files are not
seen: the kernel's refusal of a plain umount (EBUSY) still covers them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from .linux import command_of, pids


@dataclass(frozen=True)
class MountUse:
    """A process that uses the filesystem: ``what`` is ``cwd``, ``root``, ``fd N`` or
    ``mapping``."""

    pid: int
    command: str
    what: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}, {self.what})"


def _mountinfo_ids(text: str, dev: int) -> set[int]:
    """The mount IDs in a mountinfo text whose device is ``dev``."""
    ids = set()
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    for line in text.splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) >= 3 and fields[2] == wanted:
            ids.add(int(fields[0]))
    return ids


def mount_ids(dev: int) -> set[int]:
    """The IDs of every mount of the filesystem ``dev``, in every process's mount namespace."""
    ids: set[int] = set()
    namespaces: set[str] = set()
    for pid in pids():
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
            if namespace in namespaces:
                continue
            with open(f"/proc/{pid}/mountinfo", errors="surrogateescape") as info:
                text = info.read()
        except OSError:
            continue
        namespaces.add(namespace)
        ids |= _mountinfo_ids(text, dev)
    return ids


def _fdinfo_mount_id(path: str) -> int | None:
    try:
        with open(path) as info:
            for line in info:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _link_mount_id(link: str) -> int | None:
    """The mount ID of what the /proc link ``link`` (a cwd or root) points to."""
    try:
        fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _fdinfo_mount_id(f"/proc/self/fdinfo/{fd}")
    finally:
        os.close(fd)


def _maps_device(pid: int, dev: int) -> bool:
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) >= 5 and fields[3] == wanted and fields[4] != "0":
                return True
    return False


def uses(pid: int, dev: int, ids: set[int]) -> list[str]:
    """How process ``pid`` uses the filesystem ``dev`` mounted as ``ids``: ``cwd``, ``root``,
    ``fd N``, ``mapping``."""
    found = []
    base = f"/proc/{pid}"
    for link in ("cwd", "root"):
        if _link_mount_id(f"{base}/{link}") in ids:
            found.append(link)
    try:
        fds = os.listdir(f"{base}/fdinfo")
    except OSError:
        fds = []
    for fd in sorted(fds, key=lambda name: int(name) if name.isdigit() else -1):
        if _fdinfo_mount_id(f"{base}/fdinfo/{fd}") in ids:
            found.append(f"fd {fd}")
    if _maps_device(pid, dev):
        found.append("mapping")
    return found


def users_of(dev: int, *, skip: Iterable[int] = ()) -> list[MountUse]:
    """Every process (but those in ``skip`` and this one) that has a descriptor, working
    directory, root or mapping on the filesystem with device number ``dev``."""
    ids = mount_ids(dev)
    skipped = {os.getpid(), *skip}
    found = []
    for pid in pids():
        if pid in skipped:
            continue
        found += [MountUse(pid, command_of(pid), what) for what in uses(pid, dev, ids)]
    return found
