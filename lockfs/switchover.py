"""``lockfs switch-over [DIR]``: replace a plain lock directory by a lockfs mount, keeping data.

What it keeps, whatever happens — also while ``backup``, which owns the lock directory and its
parent on a PBS host, renames, replaces or adds entries there:

* It never acts while a process holds or awaits a lock, has a file open or has its working
  directory anywhere in the old directory (checked by inode against /proc/locks and every
  process's descriptors, before and again after the directory was moved aside, so a process
  that opened something in between is caught).
* It never acts on a mount: a directory that is already a lockfs mount is left alone ("nothing
  to do"), any other mountpoint, a directory inside a lockfs, or a tree that crosses into
  another filesystem is refused.
* It never acts outside the tree. DIR must be the real path of a directory: a symlink, or a
  path through one, is refused, and so is a directory above DIR's parent that anyone but root
  could rename. The parent is opened once, and everything else goes through descriptors
  (lockfs.dirfd_tree): the old tree is walked, read and removed from one opened root without
  following a symlink, a file is read only if it is still the regular file the scan saw, and
  at most ``max_file_size`` bytes of it; symlinks, FIFOs, sockets and devices in the tree are
  refused by the scan; owners and modes in the new mount and of the new mountpoint are set on
  descriptors; the renames aside and back are ``renameat2(RENAME_NOREPLACE)`` in the opened
  parent, checked to have moved the directory that was scanned. The new mountpoint is made
  immutable from its creation until lockfs is mounted on it, so that no rename can put a
  symlink under the path that mount(8) and systemd take; the mount is then checked to be there.
* Nothing is lost: every non-empty regular file (PBS's ``move-journal``) arrives in the new mount
  at the same path with its owner, mode and content (read back and compared), inside
  directories with the old owners and modes. Only empty files (stale lock files nobody holds)
  and directories without data are left behind.
* Refusals change nothing. A failure after the old directory was moved aside unmounts the new
  mount (never lazily) and moves the old directory back; if even that is impossible the message
  says where the old directory is and the one command that puts it back. Once the data is in
  the mount, the switch-over has succeeded: an old tree that cannot be removed completely is
  a warning that says what is left.

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
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .control import escape_path
from .dirfd_tree import (
    DIR_FLAGS,
    Changed,
    Tree,
    kind_of,
    remove_contents,
    same_file,
    scan,
)
from .linux import RENAME_NOREPLACE, command_of, processes_using, read_proc_locks, renameat2
from .mirror_dir import discard
from .mounts import FSTYPE, entries_at, mount_table
from .new_mount import MountFailed, NewMount
from .options import MountOptions, OptionError, parse_options
from .rootfiles import UnsafePath, open_dir
from .testing_hooks import NO_HOOKS, HookError, TestHooks, from_environment

DEFAULT_DIR = "/run/proxmox-backup/locks"
ASIDE_SUFFIX = ".lockfs-switch-over"
#: Where mount(8) and systemctl are, whatever the caller's PATH (mount(8) drops it anyway:
#: mount.fuse3 finds `lockfs` on /bin/sh's default PATH).
MOUNT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Exists while systemd runs the host (sd_booted(3)).
SYSTEMD_RUNTIME = "/run/systemd/system"


class Refused(Exception):
    """The switch-over cannot go ahead, or failed; the message says why and what is left."""


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
    """What a switch-over of one directory will do, and the descriptors it acts through (its
    parent's and its own; :meth:`close` closes them)."""

    path: str
    name: str
    parent_fd: int
    root_fd: int
    #: Mount options for mount(8), or a description of the unit's.
    options: str
    tree: Tree
    #: Bytes a data file may hold (the mount's ``max_file_size``).
    max_file_size: int
    #: The systemd mount unit that mounts ``path``, if any (else mount(8) does).
    unit: str | None = None
    #: The new mountpoint, once made.
    new: NewMount | None = None
    #: Where the new mount keeps its data files across restarts (lockfs.persist), or None.
    data_dir: str | None = None

    @property
    def aside_name(self) -> str:
        return f".{self.name}{ASIDE_SUFFIX}"

    @property
    def aside(self) -> str:
        return os.path.join(os.path.dirname(self.path), self.aside_name)

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry ``name`` of the parent, not followed; None if there is none."""
        try:
            return os.stat(name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self.new is not None:
            self.new.close()
        os.close(self.root_fd)
        os.close(self.parent_fd)


def plan(path: str, extra_options: str = "") -> Plan | None:
    """Check everything that can be checked without changing anything. ``path`` is absolute
    and has no symlink in it. None: ``path`` is a lockfs mount already (nothing to do).
    Raises :class:`Refused`."""
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
    parent, name = os.path.split(path)
    try:
        parent_fd = open_dir(parent, root_only=True)
    except UnsafePath as exc:
        raise Refused(str(exc)) from None
    except OSError as exc:
        raise Refused(f"{exc.filename} cannot be opened: {exc.strerror}") from None
    root_fd = None
    try:
        try:
            root_fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            raise Refused(_not_a_directory(parent_fd, name, path, exc)) from None
        st = os.fstat(root_fd)
        p = Plan(path, name, parent_fd, root_fd, "", Tree(path, st), 0)
        if p.lstat(p.aside_name) is not None:
            raise Refused(
                f"{p.aside} exists, left by an earlier switch-over that failed: look at it, "
                "move what it holds back or remove it, then run again"
            )
        p.unit = systemd_unit_for(path)
        if p.unit is not None and extra_options:
            raise Refused(
                f"systemd mounts {path} with {p.unit}, whose Options= apply: change them there "
                "(systemctl edit --full) instead of giving --options"
            )
        p.options = (
            f"uid={st.st_uid},gid={st.st_gid},mode={stat.S_IMODE(st.st_mode):04o},"
            "nosuid,nodev,noexec" + (f",{extra_options}" if extra_options else "")
        )
        try:
            parsed = parse_options([p.options], MountOptions())
            p.max_file_size, p.data_dir = parsed.max_file_size, parsed.data_dir
        except OptionError as exc:
            raise Refused(f"bad mount options: {exc}") from None
        if p.unit is not None:
            p.options = f"through {p.unit}"
        p.tree = _checked_tree(p, "holds entries lockfs cannot carry over")
        _refuse_if_used(p.tree, path, ". Nothing was changed.")
        return p
    except BaseException:
        for fd in (root_fd, parent_fd):
            if fd is not None:
                os.close(fd)
        raise


def _not_a_directory(parent_fd: int, name: str, path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"{path} does not exist: there is nothing to switch over"
    try:
        kind = kind_of(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        kind = "?"
    if kind == "symlink":
        return (
            f"{path} is a symlink: give the directory itself (the switch-over follows no "
            "symlink, which whoever owns its directory could point anywhere)"
        )
    if exc.errno == errno.ENOTDIR:
        return f"{path} is not a directory (a {kind})"
    return f"{path} cannot be opened: {exc.strerror}"


def _checked_tree(p: Plan, what: str) -> Tree:
    """Scan the old directory (open at ``p.root_fd``); refuse what cannot be carried over."""
    tree = scan(p.root_fd, p.path)
    too_big = [e for e in tree.data if e.st.st_size > p.max_file_size]
    problems = tree.problems + [
        f"{tree.path_of(e.rel)} is larger than max_file_size ({p.max_file_size} bytes)"
        for e in too_big
    ]
    if problems:
        raise Refused(f"{p.path} {what}: " + "; ".join(problems[:10]))
    return tree


def _refuse_if_used(tree: Tree, shown_as: str, tail: str) -> None:
    """Refuse if any process uses the tree; the message ends with ``tail``."""
    users = users_of(tree)
    if users:
        raise Refused(
            f"{shown_as} is in use, so locks may be held there:\n  "
            + "\n  ".join(users[:20])
            + ("\n  ..." if len(users) > 20 else "")
            + "\nStop these processes (on a PBS host: systemctl stop proxmox-backup-proxy "
            "proxmox-backup) and run the switch-over again" + tail
        )


@dataclass
class Done:
    """A switch-over that succeeded: the summary, and a warning about the old tree if it
    could not be removed completely."""

    summary: str
    warning: str | None = None


def execute(p: Plan, hooks: TestHooks = NO_HOOKS) -> Done:
    """Carry out a plan. Raises :class:`Refused`."""
    discarded = ""
    try:  # the old directory's files are newer than what an earlier mount here kept
        if p.data_dir is not None and discard(p.data_dir, p.path):
            discarded = " Discarded the older data files an earlier lockfs mount there kept."
    except OSError as exc:
        raise Refused(f"cannot discard what an earlier mount kept: {exc}") from None
    _move_aside(p)
    try:
        tree = _checked_tree(p, "changed after it was checked")
        _refuse_if_used(tree, p.path, "")
    except Refused as exc:
        raise Refused(f"{exc}{_move_back(p)}") from None
    new = _mount_new(p, tree.root_st)
    hooks.at_switch_over_step("before-copy")
    try:
        carried = new.carry(p.root_fd, tree, p.max_file_size)
    except (OSError, Changed) as exc:
        raise Refused(
            f"carrying the data into the new mount failed: {exc}{_undo_mount(p, new)}"
        ) from None
    files = ", ".join(carried) if carried else "none"
    summary = (
        f"{p.path} is now a lockfs mount ({p.options}). Carried over: {files}. "
        f"Left behind: {len(tree.empty)} empty lock files, {len(tree.dirs)} directories."
        + discarded
    )
    return Done(summary, _remove_old_tree(p, tree))


def _move_aside(p: Plan) -> None:
    """Rename the old directory aside; it must be the one that was scanned."""
    try:
        renameat2(
            p.name, p.aside_name, RENAME_NOREPLACE, old_dir_fd=p.parent_fd, new_dir_fd=p.parent_fd
        )
    except OSError as exc:
        raise Refused(f"cannot move {p.path} aside to {p.aside}: {exc.strerror}") from None
    moved = p.lstat(p.aside_name)
    if moved is None:
        raise Refused(f"{p.path} was moved away by someone else while it was moved aside")
    if not same_file(moved, p.tree.root_st):
        raise Refused(
            f"{p.path} was replaced by another entry (a {kind_of(moved.st_mode)}) after it was "
            "checked" + _move_back(p, "the entry that replaced it")
        )


def _move_back(p: Plan, what: str = "the old directory", lead: str = "") -> str:
    """Rename the entry aside back; the sentence that tells the administrator, to end a
    refusal with (``lead`` starts it when the move succeeded)."""
    try:
        renameat2(
            p.aside_name, p.name, RENAME_NOREPLACE, old_dir_fd=p.parent_fd, new_dir_fd=p.parent_fd
        )
    except OSError as exc:
        sentence = (
            f"{lead}{p.path} could not be restored ({exc.strerror}): {what} is at {p.aside}; "
            f"once nothing uses {p.path}, put it back with `mv -T {p.aside} {p.path}`"
        )
    else:
        sentence = f"{lead}{what} is back in place; nothing was changed."
    return f". {sentence[0].upper()}{sentence[1:]}"


def _mount_command(p: Plan) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + MOUNT_PATH}
    if p.unit is not None:
        return ["systemctl", "start", p.unit], env
    return ["mount", "-t", FSTYPE, "lockfs", p.path, "-o", p.options], env


def _mount_new(p: Plan, old: os.stat_result) -> NewMount:
    """Make the new mountpoint with the old owner and mode and mount lockfs on it."""
    new = p.new = NewMount(p.parent_fd, p.name, p.path)
    try:
        new.make(old.st_uid, old.st_gid, stat.S_IMODE(old.st_mode))
    except MountFailed as exc:
        raise Refused(f"{exc}{_move_back(p)}") from None
    try:
        new.mount(*_mount_command(p))
    except MountFailed as exc:
        if new.is_mounted():
            raise Refused(
                f"{exc}; something is mounted there now: the old directory is at {p.aside}; "
                f"once nothing uses {p.path}, put it back with `umount {p.path} && mv -T "
                f"{p.aside} {p.path}`"
            ) from None
        raise Refused(f"{exc}{new.discard()}{_move_back(p)}") from None
    return new


def _undo_mount(p: Plan, new: NewMount) -> str:
    """After a failed copy: unmount (never lazily), restore the old directory; what is left."""
    try:
        new.unmount()
    except OSError as exc:
        return (
            f". The new mount could not be removed ({exc.strerror}); the old directory, "
            f"complete, is at {p.aside}; once nothing uses {p.path}, put it back with "
            f"`umount {p.path} && mv -T {p.aside} {p.path}`"
        )
    left = new.discard()
    if left:
        return (
            f". The new mount was removed{left}; the old directory, complete, is at {p.aside}; "
            f"once nothing uses {p.path}, put it back with `mv -T {p.aside} {p.path}`"
        )
    return _move_back(p, lead="the new mount was removed and ")


def _remove_old_tree(p: Plan, tree: Tree) -> str | None:
    """Remove the old tree (through its descriptor); a warning with what is left, if any."""
    left = remove_contents(p.root_fd, tree)
    if not left:
        moved = p.lstat(p.aside_name)
        try:
            if moved is None or not same_file(moved, tree.root_st):
                raise OSError(errno.ESTALE, "it was moved")
            os.rmdir(p.aside_name, dir_fd=p.parent_fd)
            return None
        except OSError as exc:
            left = [f"{p.aside} itself ({exc.strerror})"]
    return (
        f"the old directory {p.aside} could not be removed completely (the switch-over itself "
        "succeeded): "
        + "; ".join(left[:10])
        + ("; ..." if len(left) > 10 else "")
        + f". Look at what is left, then remove it: `rm -r {p.aside}`"
    )


def main(argv: Sequence[str]) -> int:
    """Replace the plain lock directory DIR by a lockfs mount, keeping its data files.

    Refuses, changing nothing, while any process holds or awaits a lock on, has open, or works
    in anything in DIR, when DIR is a mountpoint, and when DIR is a symlink or a path through
    one (give the real path). Otherwise moves DIR aside, checks again, mounts lockfs in its
    place (systemctl start of its mount unit where systemd has one, else mount -t fuse.lockfs
    with DIR's owner and mode), copies every non-empty file (such as PBS's move-journal) in
    with its owner, mode and content, and removes the old tree with its stale, empty lock
    files. A DIR that is a lockfs mount already is left alone. Root only.
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
    path = os.path.abspath(args.dir)
    try:
        hooks = from_environment()
        if os.geteuid() != 0:
            raise Refused("must run as root (it mounts, and gives files their owners)")
        real = os.path.realpath(args.dir)
        if real != path:
            raise Refused(
                f"{path} is a symlink or passes through one (it leads to {real}): give the "
                "real path (the switch-over follows no symlink, which whoever owns its "
                "directory could point anywhere)"
            )
        planned = plan(path, args.options)
        if planned is None:
            print(f"{path} is a lockfs mount already: nothing to do")
            return 0
        try:
            if args.check:
                data = ", ".join(e.rel for e in planned.tree.data) or "none"
                print(
                    f"{path} can be switched over (mount options {planned.options}); it would "
                    f"carry over: {data}; leave behind {len(planned.tree.empty)} empty lock "
                    "files"
                )
                return 0
            hooks.at_switch_over_step("checked")
            done = execute(planned, hooks)
        finally:
            planned.close()
        print(done.summary)
        if done.warning:
            print(f"lockfs switch-over: warning: {done.warning}", file=sys.stderr)
    except (Refused, HookError) as exc:
        print(f"lockfs switch-over: {exc}", file=sys.stderr)
        return 1
    return 0
