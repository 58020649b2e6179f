"""``lockfs switch-over [DIR]``: replace a plain lock directory by a lockfs mount, keeping data.

What it keeps, whatever happens:

* It never acts while a process holds or awaits a lock, has a file open or has its working
  directory anywhere in the old directory (checked by inode against /proc/locks and every
  process's descriptors, before and again after the directory was moved aside, so a process
  that opened something in between is caught).
* It never acts on a mount: a directory that is already a lockfs mount is left alone ("nothing
  to do"), any other mountpoint, a directory inside a lockfs, or a tree that crosses into
  another filesystem is refused.
* Nothing is lost: every non-empty regular file (PBS's ``move-journal``) arrives in the new mount
  at the same path with its owner, mode and content (read back and compared), inside
  directories with the old owners and modes. Only empty files (stale lock files nobody holds)
  and directories without data are left behind.
* Refusals change nothing. A failure after the old directory was moved aside unmounts the new
  mount (never lazily) and moves the old directory back; if even that is impossible the message
  says where the old directory is.

The steps: check; rename the old directory to ``.NAME.lockfs-switch-over`` beside it (same
filesystem, so the inodes stay the same); check again; create a fresh, empty mountpoint with
the old owner and mode; mount lockfs there: with ``systemctl start UNIT`` where systemd has a
mount unit for the directory (the package's unit for PBS, or an fstab line), so that the daemon
runs in the unit's control group with the unit's options, else with ``mount -t fuse.lockfs``
(from ``/``, so that mount(8) keeps the source ``lockfs``) and the old directory's owner and
mode; copy the data files in; remove the old tree.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from .control import escape_path
from .linux import RENAME_NOREPLACE, command_of, processes_using, read_proc_locks, renameat2
from .mounts import FSTYPE, entries_at, mount_table, resolve, umount
from .options import MountOptions, OptionError, parse_options

DEFAULT_DIR = "/run/proxmox-backup/locks"
ASIDE_SUFFIX = ".lockfs-switch-over"
#: Where mount(8) and systemctl are, whatever the caller's PATH (mount(8) drops it anyway:
#: mount.fuse3 finds `lockfs` on /bin/sh's default PATH).
MOUNT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Exists while systemd runs the host (sd_booted(3)).
SYSTEMD_RUNTIME = "/run/systemd/system"


class Refused(Exception):
    """The switch-over cannot go ahead, or failed; the message says why and what is left."""


@dataclass
class Entry:
    """One entry of the old tree: its path relative to the tree's root, and its lstat."""

    rel: str
    st: os.stat_result


@dataclass
class Tree:
    """The old directory's contents, walked without following symlinks or crossing mounts."""

    root: str
    root_st: os.stat_result
    dirs: list[Entry] = field(default_factory=list)
    #: Regular files holding data: carried into the mount.
    data: list[Entry] = field(default_factory=list)
    #: Empty regular files: stale lock files, left behind.
    empty: list[Entry] = field(default_factory=list)
    #: What lockfs cannot hold (symlinks, devices, FIFOs, sockets, hard-linked data, other
    #: filesystems): any of them makes the switch-over refuse.
    problems: list[str] = field(default_factory=list)

    def paths_by_inode(self) -> dict[int, str]:
        """Every entry's inode number and path relative to the root (``.`` for the root)."""
        paths = {e.st.st_ino: e.rel for e in (*self.dirs, *self.data, *self.empty)}
        paths[self.root_st.st_ino] = "."
        return paths


def scan(root: str) -> Tree:
    """Walk ``root`` (a directory) and sort its entries; see :class:`Tree`."""
    tree = Tree(root, os.lstat(root))
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir)) as listing:
            children = sorted(listing, key=lambda e: e.name)
        for child in children:
            rel = os.path.join(rel_dir, child.name)
            st = child.stat(follow_symlinks=False)
            entry = Entry(rel, st)
            if st.st_dev != tree.root_st.st_dev:
                tree.problems.append(f"{rel} is on another filesystem (a mount inside)")
            elif stat.S_ISDIR(st.st_mode):
                tree.dirs.append(entry)
                pending.append(rel)
            elif not stat.S_ISREG(st.st_mode):
                tree.problems.append(f"{rel} is not a regular file or directory")
            elif st.st_size == 0:
                tree.empty.append(entry)
            elif st.st_nlink > 1:
                tree.problems.append(f"{rel} holds data and has {st.st_nlink} hard links")
            else:
                tree.data.append(entry)
    tree.dirs.sort(key=lambda e: e.rel)
    return tree


def users_of(tree: Tree) -> list[str]:
    """Every process that holds or awaits a lock on, has open, or works in an entry of
    ``tree``, one line each (empty if none). Compares inodes, so it sees through renames."""
    dev, paths = tree.root_st.st_dev, tree.paths_by_inode()
    found: list[str] = []
    for lock in read_proc_locks(dev):
        if lock.ino in paths:
            state = "awaits" if lock.waiting else "holds"
            mode = "an exclusive" if lock.exclusive else "a shared"
            who = f"pid {lock.pid} ({command_of(lock.pid)})" if lock.pid else "an open file"
            found.append(f"{who} {state} {mode} {lock.kind} lock on {paths[lock.ino]}")
    for use in processes_using(dev, paths, skip=[os.getpid()]):
        what = "has open" if use.how == "fd" else "works in"
        found.append(f"pid {use.pid} ({command_of(use.pid)}) {what} {use.target}")
    return found


def _mount_containing(path: str) -> str:
    """The type of the filesystem ``path`` (resolved) lives on."""
    best, fstype = "", ""
    for entry in mount_table():
        point = entry.mountpoint
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, entry.fstype
    return fstype


def rename_noreplace(old: str, new: str) -> None:
    """renameat2(RENAME_NOREPLACE): never replaces an existing ``new`` (os.rename would
    replace an empty directory)."""
    renameat2(old, new, RENAME_NOREPLACE)


def systemd_unit_for(path: str) -> str | None:
    """The mount unit for ``path`` if systemd runs this host and has one (the package's
    ``run-proxmox\\x2dbackup-locks.mount``, or an fstab line). Mounting through it puts the
    daemon in the unit's control group, where systemd expects it, with the unit's options."""
    if not os.path.isdir(SYSTEMD_RUNTIME):
        return None
    unit = escape_path(path) + ".mount"
    try:
        shown = subprocess.run(
            ["systemctl", "show", "--property=LoadState", "--value", unit],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":" + MOUNT_PATH},
        )
    except OSError:
        return None
    return unit if shown.returncode == 0 and shown.stdout.strip() == "loaded" else None


@dataclass
class Plan:
    """What a switch-over of one directory will do."""

    path: str
    aside: str
    #: Mount options for mount(8), or a description of the unit's.
    options: str
    tree: Tree
    #: The systemd mount unit that mounts ``path``, if any (else mount(8) does).
    unit: str | None = None


def plan(path: str, extra_options: str = "") -> Plan | None:
    """Check everything that can be checked without changing anything. None: ``path`` is a
    lockfs mount already (nothing to do). Raises :class:`Refused`."""
    entries = entries_at(path, resolve_path=False)
    if entries:
        top = entries[-1]
        if top.fstype != FSTYPE:
            raise Refused(f"{path} is a mountpoint ({top.fstype}), not a plain directory")
        try:
            os.statvfs(path)
        except OSError as exc:
            raise Refused(
                f"{path} is a lockfs mount whose daemon does not answer ({exc.strerror}): "
                "stop the processes using it (fuser -vm), umount it, then mount again"
            ) from None
        return None
    if _mount_containing(path) == FSTYPE:
        raise Refused(f"{path} is inside a lockfs mount")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Refused(f"{path} does not exist: there is nothing to switch over") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is not a directory")
    parent, name = os.path.split(path)
    aside = os.path.join(parent, f".{name}{ASIDE_SUFFIX}")
    if os.path.lexists(aside):
        raise Refused(
            f"{aside} exists, left by an earlier switch-over that failed: look at it, move "
            "what it holds back or remove it, then run again"
        )
    unit = systemd_unit_for(path)
    if unit is not None and extra_options:
        raise Refused(
            f"systemd mounts {path} with {unit}, whose Options= apply: change them there "
            "(systemctl edit --full) instead of giving --options"
        )
    options = (
        f"uid={st.st_uid},gid={st.st_gid},mode={stat.S_IMODE(st.st_mode):04o},nosuid,nodev,noexec"
        + (f",{extra_options}" if extra_options else "")
    )
    try:
        limits = parse_options([options], MountOptions())
    except OptionError as exc:
        raise Refused(f"bad mount options: {exc}") from None
    if unit is not None:
        options = f"through {unit}"
    tree = scan(path)
    too_big = [e.rel for e in tree.data if e.st.st_size > limits.max_file_size]
    problems = tree.problems + [f"{rel} is larger than max_file_size" for rel in too_big]
    if problems:
        raise Refused(f"{path} holds entries lockfs cannot carry over: " + "; ".join(problems[:10]))
    _refuse_if_used(tree, path)
    return Plan(path, aside, options, tree, unit)


def _refuse_if_used(tree: Tree, shown_as: str) -> None:
    users = users_of(tree)
    if users:
        raise Refused(
            f"{shown_as} is in use, so locks may be held there:\n  "
            + "\n  ".join(users[:20])
            + ("\n  ..." if len(users) > 20 else "")
            + "\nStop these processes (on a PBS host: systemctl stop proxmox-backup-proxy "
            "proxmox-backup) and run the switch-over again. Nothing was changed."
        )


def execute(p: Plan) -> str:
    """Carry out a plan; the summary for the administrator. Raises :class:`Refused`."""
    try:
        rename_noreplace(p.path, p.aside)
    except OSError as exc:
        raise Refused(f"cannot move {p.path} aside to {p.aside}: {exc.strerror}") from None
    try:
        tree = scan(p.aside)  # again: something may have changed before the rename
        if tree.problems:
            raise Refused(f"{p.path} changed: " + "; ".join(tree.problems[:10]))
        _refuse_if_used(tree, p.path)
    except Refused:
        _move_back(p)
        raise
    _make_mountpoint(p, tree.root_st)
    _mount(p)
    try:
        old_dirs = {entry.rel: entry.st for entry in tree.dirs}
        carried = [_carry(tree.root, entry, old_dirs, p.path) for entry in tree.data]
    except OSError as exc:
        raise Refused(
            f"carrying the data into the new mount failed ({exc})" + _undo_mount(p)
        ) from None
    shutil.rmtree(p.aside)
    files = ", ".join(carried) if carried else "none"
    return (
        f"{p.path} is now a lockfs mount ({p.options}). Carried over: {files}. "
        f"Left behind: {len(tree.empty)} empty lock files, {len(tree.dirs)} directories."
    )


def _make_mountpoint(p: Plan, old: os.stat_result) -> None:
    try:
        os.mkdir(p.path, 0o700)
    except OSError as exc:
        _move_back(p)  # fails, and says so, if the path came back meanwhile
        raise Refused(f"cannot create the new mountpoint {p.path}: {exc.strerror}") from None
    try:
        os.chown(p.path, old.st_uid, old.st_gid)
        os.chmod(p.path, stat.S_IMODE(old.st_mode))
    except OSError as exc:
        os.rmdir(p.path)
        _move_back(p)
        raise Refused(f"cannot give {p.path} its owner and mode: {exc.strerror}") from None


def _mount(p: Plan) -> None:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + MOUNT_PATH}
    if p.unit is not None:
        cmd = ["systemctl", "start", p.unit]
    else:
        cmd = ["mount", "-t", FSTYPE, "lockfs", p.path, "-o", p.options]
    # From /: mount(8) turns a source that names an existing path (./lockfs) into that path.
    result = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True)
    entries = entries_at(p.path, resolve_path=False)
    if result.returncode == 0 and not (entries and entries[-1].fstype == FSTYPE):
        result.returncode, result.stderr = 1, f"`{' '.join(cmd)}` mounted no lockfs there"
    if result.returncode != 0:
        reason = result.stderr.strip() or f"exit status {result.returncode}"
        message = f"mounting lockfs at {p.path} failed: {reason}"
        if entries:
            raise Refused(
                f"{message}; something is mounted there now: the old directory is at {p.aside}"
            )
        try:
            os.rmdir(p.path)
        except OSError as exc:
            raise Refused(
                f"{message}; {p.path} cannot be removed ({exc.strerror}), so the old directory "
                f"stays at {p.aside}"
            ) from None
        _move_back(p)
        raise Refused(message + ". The old directory is back in place; nothing was changed.")


def _carry(root: str, entry: Entry, old_dirs: dict[str, os.stat_result], mount: str) -> str:
    """Copy one data file from the old tree at ``root`` into the mount, creating its
    directories with their old owner and mode first; read it back to check the content."""
    parts = entry.rel.split(os.sep)[:-1]
    for depth in range(1, len(parts) + 1):
        rel_dir = os.path.join(*parts[:depth])
        target = os.path.join(mount, rel_dir)
        try:
            os.mkdir(target, 0o700)
        except FileExistsError:
            continue
        st = old_dirs[rel_dir]
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, stat.S_IMODE(st.st_mode))
    source = os.path.join(root, entry.rel)
    target = os.path.join(mount, entry.rel)
    with open(source, "rb") as src:
        content = src.read()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, entry.st.st_uid, entry.st.st_gid)
        os.fchmod(fd, stat.S_IMODE(entry.st.st_mode))  # after chown, which may clear setgid
    finally:
        os.close(fd)
    with open(target, "rb") as check:
        if check.read() != content:
            raise OSError(errno.EIO, f"{entry.rel} reads back differently")
    return f"{entry.rel} ({len(content)} bytes)"


def _move_back(p: Plan) -> None:
    try:
        rename_noreplace(p.aside, p.path)
    except OSError as exc:
        raise Refused(
            f"{p.path} could not be restored ({exc.strerror}): the old directory is at "
            f"{p.aside}; once nothing uses {p.path}, move it back with "
            f"`mv -T {p.aside} {p.path}`"
        ) from None


def _undo_mount(p: Plan) -> str:
    """After a failed copy: unmount (never lazily), restore the old directory; what is left."""
    try:
        umount(p.path)
        os.rmdir(p.path)
        _move_back(p)
    except OSError as exc:
        return (
            f". The new mount could not be removed ({exc.strerror}); the old directory, "
            f"complete, is at {p.aside}"
        )
    except Refused as exc:
        return f". {exc}"
    return ". The new mount was removed and the old directory is back; nothing was changed."


def main(argv: Sequence[str]) -> int:
    """Replace the plain lock directory DIR by a lockfs mount, keeping its data files.

    Refuses, changing nothing, while any process holds or awaits a lock on, has open, or works
    in anything in DIR, and when DIR is a mountpoint. Otherwise moves DIR aside, checks again,
    mounts lockfs in its place (systemctl start of its mount unit where systemd has one, else
    mount -t fuse.lockfs with DIR's owner and mode), copies every non-empty file (such as
    PBS's move-journal) in with its owner, mode and content, and removes the old tree with its
    stale, empty lock files. A DIR that is a lockfs mount already is left alone. Root only.
    """
    parser = argparse.ArgumentParser(
        prog="lockfs switch-over", description=inspect.cleandoc(main.__doc__ or "")
    )
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    parser.add_argument(
        "--options",
        default="",
        metavar="OPTIONS",
        help="more mount options for mount -t fuse.lockfs (not with a systemd unit)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check, and tell what would be carried over"
    )
    args = parser.parse_args(argv)
    path = resolve(args.dir)
    try:
        if os.geteuid() != 0:
            raise Refused("must run as root (it mounts, and gives files their owners)")
        planned = plan(path, args.options)
        if planned is None:
            print(f"{path} is a lockfs mount already: nothing to do")
            return 0
        if args.check:
            data = ", ".join(e.rel for e in planned.tree.data) or "none"
            print(
                f"{path} can be switched over (mount options {planned.options}); it would "
                f"carry over: {data}; leave behind {len(planned.tree.empty)} empty lock files"
            )
            return 0
        print(execute(planned))
    except Refused as exc:
        print(f"lockfs switch-over: {exc}", file=sys.stderr)
        return 1
    return 0
