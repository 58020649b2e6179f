"""Mount options: parsing ``-o`` strings (command line, fstab, mount units) into settings.

What reaches lockfs through ``mount -t fuse.lockfs`` (util-linux 2.38 mount(8), then fuse3 3.14
mount.fuse3, which runs ``lockfs SOURCE MOUNTPOINT -o OPTIONS`` through ``/bin/sh -c``):

* mount(8) drops ``defaults``, ``noauto``, ``x-*``/``X-*`` and ``comment=`` options, turns
  ``uid=NAME``/``gid=NAME`` into numbers, and always adds ``rw`` or ``ro``;
* mount.fuse3 drops ``user``, ``nouser``, ``users``, ``auto``, ``noauto``, ``nofail``,
  ``_netdev`` and empty items, consumes ``setuid=USER`` and ``drop_privileges`` itself, and
  adds ``dev`` and ``suid`` unless ``nodev``/``nosuid`` were given.

lockfs accepts all of these (and the ones mount(8) would have dropped, for ``lockfs -o`` run by
hand), so that any option line valid in fstab or a mount unit is valid here. Unknown options
are errors, never silently ignored, and options that would weaken the lock guarantees are
refused with the reason.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: VFS flags handed to the kernel mount through libfuse (the ones libfuse 3.14 accepts).
KERNEL_FLAGS = frozenset(
    {
        "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
        "atime", "noatime", "sync", "async", "dirsync",
    }
)  # fmt: skip

#: Each kernel flag and the flag it cancels: of the two, the one given last is in force.
OPPOSITES = {
    "rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec", "atime": "noatime",
    "sync": "async",
}  # fmt: skip
OPPOSITES.update({flag: opposite for opposite, flag in OPPOSITES.items()})

#: Access-time and message flags that mount(8) may pass but libfuse rejects. They make no
#: difference to a lock directory (its timestamps live in the daemon): accepted and ignored.
NO_EFFECT_FLAGS = frozenset(
    {
        "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "lazytime", "nolazytime", "silent", "loud",
    }
)  # fmt: skip

#: Options meant for mount(8), fstab or systemd, not for the filesystem: accepted and ignored.
IGNORED = frozenset(
    {
        "defaults", "auto", "noauto", "user", "nouser", "users", "group", "owner",
        "nofail", "_netdev",
    }
)  # fmt: skip
IGNORED_PREFIXES = ("x-", "X-", "comment=", "fsname=", "subtype=", "user=", "helper=")

#: The shortest hang_timeout (see lockfs.watchdog): shorter ones could trip on ordinary pauses.
MIN_HANG_TIMEOUT = 0.5

#: Always in force: the kernel checks permissions, and every user may use the lock directory.
ALWAYS = ("default_permissions", "allow_other")

#: Options refused with a reason: each would break mutual exclusion or the safe shutdown.
REFUSED = {
    "auto_unmount": "auto_unmount would unmount the lock directory when the daemon dies, so "
    "new callers could take locks that old holders still hold; lockfs fails closed instead "
    "(the mount answers ENOTCONN until an administrator unmounts it)",
    "nonempty": "nonempty: lockfs never mounts over a non-empty directory, because lock files "
    "in it could be held",
    "remount": "remount is not supported: unmount and mount again (once no locks are held)",
    "drop_privileges": "drop_privileges is not supported: lockfs must check the mountpoint "
    "before mounting and unmount itself only when nothing is open, which needs root",
    "setuid": "setuid= is not supported: lockfs runs as root (use uid=, gid= and mode= to "
    "give a user the lock directory)",
    "allow_root": "allow_root is not supported: lockfs always mounts with allow_other",
}


class OptionError(ValueError):
    """A mount option is unknown or has a bad value."""


@dataclass
class MountOptions:
    """Settings of one mount; defaults suit a PBS host."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o755
    reclaim_delay: float = 0.5
    dir_grace: float = 10.0
    debug: bool = False
    kernel_flags: list[str] = field(default_factory=list)
    #: Prometheus text file rewritten every ``metrics_interval`` seconds (node-exporter's
    #: textfile collector), or None.
    metrics_file: str | None = None
    metrics_interval: float = 15.0
    #: Limits (see lockfs.nodes.Limits): live entries, bytes per file, directory depth.
    max_entries: int = 1_000_000
    max_file_size: int = 64 << 20
    max_depth: int = 32
    #: Fail closed when the daemon is stuck this long (seconds; 0: never). See lockfs.watchdog.
    hang_timeout: float = 30.0
    #: Where data files are kept across restarts of the mount (lockfs.persist), or None: off.
    data_dir: str | None = "/run/lockfs/data"

    def fuse_options(self, fsname: str) -> set[str]:
        """The option set handed to ``pyfuse3.init``."""
        return {*ALWAYS, f"fsname={fsname}", "subtype=lockfs", *self.kernel_flags}


def _user(key: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise OptionError(f"uid={value}: no such user") from None


def _group(key: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise OptionError(f"gid={value}: no such group") from None


def _mode(key: str, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise OptionError(f"mode={value}: not an octal number") from None
    if not 0 <= mode <= 0o7777:
        raise OptionError(f"mode={value}: out of range")
    return mode


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise OptionError(f"{key}={value}: not a number of seconds") from None
    if not 0 <= seconds <= 86400:
        raise OptionError(f"{key}={value}: must be between 0 and 86400 seconds")
    return seconds


def _positive_seconds(key: str, value: str) -> float:
    seconds = _seconds(key, value)
    if seconds <= 0:
        raise OptionError(f"{key}={value}: must be more than 0 seconds")
    return seconds


def _hang_timeout(key: str, value: str) -> float:
    seconds = _seconds(key, value)
    if 0 < seconds < MIN_HANG_TIMEOUT:
        raise OptionError(f"{key}={value}: must be 0 (off) or at least {MIN_HANG_TIMEOUT} seconds")
    return seconds


def _absolute_path(key: str, value: str) -> str:
    if not os.path.isabs(value):
        raise OptionError(f"{key}={value}: must be an absolute path")
    return value


def _data_dir(key: str, value: str) -> str | None:
    if value == "none":
        return None
    path = os.path.normpath(_absolute_path(key, value))
    if path == "/":
        raise OptionError(f"{key}={value}: must be a directory below /")
    return path


def _count(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise OptionError(f"{key}={value}: must be a whole number above 0")
    return int(value)


_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(key: str, value: str) -> int:
    number, suffix = value.rstrip("kKmMgG"), value[len(value.rstrip("kKmMgG")) :].lower()
    if not number.isdigit() or suffix not in _SIZE_SUFFIXES or len(suffix) > 1:
        raise OptionError(f"{key}={value}: must be a size in bytes (suffix K, M or G allowed)")
    return int(number) * _SIZE_SUFFIXES[suffix]


#: ``key=value`` options: the MountOptions attribute of the same name and its parser.
VALUE_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "uid": _user,
    "gid": _group,
    "mode": _mode,
    "reclaim_delay": _seconds,
    "dir_grace": _seconds,
    "metrics_file": _absolute_path,
    "metrics_interval": _positive_seconds,
    "max_entries": _count,
    "max_file_size": _size,
    "max_depth": _count,
    "hang_timeout": _hang_timeout,
    "data_dir": _data_dir,
}


def parse_options(option_strings: list[str], options: MountOptions | None = None) -> MountOptions:
    """Parse ``-o`` arguments (each a comma-separated list, as in fstab) into
    :class:`MountOptions`. Later options win: of a kernel flag and its opposite only the
    last one given is kept, so ``dev,suid,nodev`` means ``nodev,suid``."""
    opts = options or MountOptions()
    for option_string in option_strings:
        for item in option_string.split(","):
            item = item.strip()
            if not item:
                continue
            key, has_value, value = item.partition("=")
            if key in REFUSED:
                raise OptionError(REFUSED[key])
            if key in ALWAYS and not has_value:
                continue
            if item in IGNORED or item.startswith(IGNORED_PREFIXES):
                continue
            if key in KERNEL_FLAGS and not has_value:
                cancelled = (key, OPPOSITES.get(key))
                opts.kernel_flags = [f for f in opts.kernel_flags if f not in cancelled]
                opts.kernel_flags.append(key)
            elif key in NO_EFFECT_FLAGS and not has_value:
                continue
            elif key == "debug" and not has_value:
                opts.debug = True
            elif key in VALUE_OPTIONS and has_value:
                setattr(opts, key, VALUE_OPTIONS[key](key, value))
            else:
                raise OptionError(f"unknown mount option: {item}")
    return opts
