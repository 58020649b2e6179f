"""Mount options: parsing ``-o`` strings (command line, fstab, mount units) into settings."""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass, field

#: Flags handed through to the kernel mount unchanged.
KERNEL_FLAGS = frozenset(
    {
        "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
        "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
        "strictatime", "sync", "async", "dirsync", "lazytime", "nolazytime",
    }
)  # fmt: skip

#: Options meant for mount(8), fstab or systemd, not for the filesystem: accepted and ignored.
IGNORED = frozenset(
    {"defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev", "owner"}
)
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")

#: Always in force: the kernel checks permissions, and every user may use the lock directory.
ALWAYS = ("default_permissions", "allow_other")


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

    def fuse_options(self, fsname: str) -> set[str]:
        """The option set handed to ``pyfuse3.init``."""
        return {*ALWAYS, f"fsname={fsname}", "subtype=lockfs", *self.kernel_flags}


def _user(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise OptionError(f"uid={value}: no such user") from None


def _group(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise OptionError(f"gid={value}: no such group") from None


def _mode(value: str) -> int:
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


def parse_options(option_strings: list[str], options: MountOptions | None = None) -> MountOptions:
    """Parse ``-o`` arguments (each a comma-separated list) into :class:`MountOptions`."""
    opts = options or MountOptions()
    for option_string in option_strings:
        for item in option_string.split(","):
            item = item.strip()
            if not item:
                continue
            key, has_value, value = item.partition("=")
            if key in ALWAYS and not has_value:
                continue
            if item in IGNORED or item.startswith(IGNORED_PREFIXES):
                continue
            if key in KERNEL_FLAGS and not has_value:
                opts.kernel_flags.append(key)
            elif key == "debug" and not has_value:
                opts.debug = True
            elif key == "uid" and has_value:
                opts.uid = _user(value)
            elif key == "gid" and has_value:
                opts.gid = _group(value)
            elif key == "mode" and has_value:
                opts.mode = _mode(value)
            elif key == "reclaim_delay" and has_value:
                opts.reclaim_delay = _seconds(key, value)
            elif key == "dir_grace" and has_value:
                opts.dir_grace = _seconds(key, value)
            else:
                raise OptionError(f"unknown mount option: {item}")
    return opts
