"""Option parsing: ``-o`` strings as they arrive from the command line, fstab, mount units and
mount.fuse3 (no FUSE needed)."""

from __future__ import annotations

import pwd

import pytest

from lockfs.options import (
    ALWAYS,
    KERNEL_FLAGS,
    NO_EFFECT_FLAGS,
    MountOptions,
    OptionError,
    parse_options,
)

BACKUP = pwd.getpwnam("backup")


def test_defaults() -> None:
    opts = parse_options([])
    assert (opts.uid, opts.gid, opts.mode) == (0, 0, 0o755)
    assert (opts.reclaim_delay, opts.dir_grace, opts.debug) == (0.5, 10.0, False)
    assert opts.hang_timeout == 30.0
    assert opts.kernel_flags == []
    assert opts.fuse_options("lockfs") == {*ALWAYS, "fsname=lockfs", "subtype=lockfs"}


def test_fstab_line() -> None:
    """Every option a PBS fstab line may carry: the filesystem's own, kernel flags, and the
    ones meant for mount(8)/systemd (which lockfs run by hand also accepts)."""
    line = (
        "lockfs /run/proxmox-backup/locks fuse.lockfs "
        "defaults,uid=backup,gid=backup,mode=0755,nosuid,nodev,noexec,noatime,"
        "x-systemd.requires-mounts-for=/run/proxmox-backup,"
        "x-systemd.before=proxmox-backup.service,x-systemd.mount-timeout=30,"
        "X-mount.mkdir,comment=systemd.automount,nofail,_netdev,auto,noauto,users 0 0"
    )
    source, where, fstype, options, _dump, _pass = line.split()
    assert (source, where, fstype) == ("lockfs", "/run/proxmox-backup/locks", "fuse.lockfs")
    opts = parse_options([options])
    assert (opts.uid, opts.gid, opts.mode) == (BACKUP.pw_uid, BACKUP.pw_gid, 0o755)
    assert opts.kernel_flags == ["nosuid", "nodev", "noexec", "noatime"]


def test_what_mount_fuse3_passes() -> None:
    """mount(8) + mount.fuse3 turn the line above into this (numeric ids, rw, and dev/suid
    when nodev/nosuid are absent)."""
    opts = parse_options(["rw,nosuid,nodev,noexec,uid=34,gid=34,mode=0755"])
    assert (opts.uid, opts.gid, opts.mode) == (34, 34, 0o755)
    assert opts.kernel_flags == ["rw", "nosuid", "nodev", "noexec"]
    opts = parse_options(["rw,dev,suid"])
    assert opts.kernel_flags == ["rw", "dev", "suid"]
    assert {"rw", "dev", "suid"} <= opts.fuse_options("lockfs")


def test_several_option_strings_and_empty_items() -> None:
    opts = parse_options(["uid=1", " gid=2 ,, ", "", "mode=700,reclaim_delay=0,dir_grace=2.5"])
    assert (opts.uid, opts.gid, opts.mode) == (1, 2, 0o700)
    assert (opts.reclaim_delay, opts.dir_grace) == (0.0, 2.5)


def test_hang_timeout() -> None:
    assert parse_options(["hang_timeout=0"]).hang_timeout == 0.0  # off
    assert parse_options(["hang_timeout=0.5"]).hang_timeout == 0.5
    assert parse_options(["hang_timeout=120"]).hang_timeout == 120.0


def test_later_options_win() -> None:
    opts = parse_options(["uid=1,mode=700", "uid=2,mode=0750"])
    assert (opts.uid, opts.mode) == (2, 0o750)
    opts = parse_options(["rw,dev,suid,nodev,ro,exec,noexec,nosuid,suid"])
    assert opts.kernel_flags == ["nodev", "ro", "noexec", "suid"]


def test_every_kernel_flag_reaches_libfuse_and_no_effect_flags_do_not() -> None:
    for flag in KERNEL_FLAGS:
        assert flag in parse_options([flag]).fuse_options("lockfs")
    for flag in NO_EFFECT_FLAGS:
        assert parse_options([flag]).kernel_flags == []


def test_always_on_options_are_accepted() -> None:
    opts = parse_options(["default_permissions,allow_other,debug"])
    assert opts.debug and opts.kernel_flags == []


def test_names_and_numbers() -> None:
    opts = parse_options(["uid=backup,gid=backup"])
    assert (opts.uid, opts.gid) == (BACKUP.pw_uid, BACKUP.pw_gid)
    assert parse_options(["mode=1777"]).mode == 0o1777


def test_parses_into_given_options() -> None:
    base = MountOptions(uid=5, gid=6)
    assert parse_options(["mode=700"], base) is base
    assert (base.uid, base.gid, base.mode) == (5, 6, 0o700)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("bogus", "unknown mount option: bogus"),
        ("uid", "unknown mount option: uid"),
        ("nosuid=1", "unknown mount option: nosuid=1"),
        ("uid=no-such-user-here", "no such user"),
        ("gid=no-such-group-here", "no such group"),
        ("mode=999", "not an octal number"),
        ("mode=17777", "out of range"),
        ("reclaim_delay=soon", "not a number of seconds"),
        ("dir_grace=-1", "between 0 and 86400"),
        ("hang_timeout=0.1", "must be 0 \\(off\\) or at least 0.5 seconds"),
        ("hang_timeout=never", "not a number of seconds"),
        ("hang_timeout=-5", "between 0 and 86400"),
        ("auto_unmount", "new callers could take locks that old holders still hold"),
        ("nonempty", "never mounts over a non-empty directory"),
        ("remount", "remount is not supported"),
        ("drop_privileges", "drop_privileges is not supported"),
        ("setuid=backup", "setuid= is not supported"),
        ("allow_root", "allow_root is not supported"),
    ],
)
def test_errors(option: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_options([f"rw,{option},nosuid"])
