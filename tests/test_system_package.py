"""The installed package on Debian 12 and Debian 13 (systemd as PID 1, in containers): where
mount(8) finds lockfs, the mount helper path with every way to end a mount, the documented fstab
line, the failures through the helper, a held lock that keeps a mount, a dead daemon and the
recovery by hand, ``lockfs switch-over`` in a scratch directory, ``mount/setup`` with a .deb
built elsewhere, removal and purge; lintian on Debian 13.

Each test boots a fresh container (tests/system_hosts.py) and installs the .deb built from this
checkout with apt; mountpoints live in /srv/t inside. Nothing here touches this host's lockfs.
"""

from __future__ import annotations

import functools
import re

import pytest
from debian_package import Deb
from support import wait_for
from support.containers import RELEASES, Release
from support.pbs_host import CHECKOUT, DEBS, LOCKER, SERVICES, UNIT, PbsHost, docs_fstab_line
from system_hosts import BootPbsHost

BY_CODENAME = {release.codename: release for release in RELEASES}
ALL = pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.codename)
SCRATCH = "/srv/t"
NOT_CONNECTED = "Transport endpoint is not connected"
JOURNAL = b"move 0123abcd store1 -> store2\nmove 4567ef01 store1 -> store2\n"


def installed_host(boot: BootPbsHost, release: Release, deb: Deb) -> PbsHost:
    host = boot(release, deb)
    host.run("apt-get", "install", "-y", "--no-install-recommends", f"{DEBS}/{deb.path.name}")
    assert host.dpkg_status() == f"ii  {deb.version}"
    host.run("mkdir", "-p", SCRATCH)
    return host


def mountpoint(host: PbsHost, name: str) -> str:
    path = f"{SCRATCH}/{name}"
    host.run("mkdir", path)
    return path


def mount(host: PbsHost, path: str, options: str = "rw") -> int:
    """``mount -t fuse.lockfs`` (from /, as systemd does); the daemon's pid."""
    result = host.run("mount", "-t", "fuse.lockfs", "lockfs", path, "-o", options)
    assert (result.stdout, result.stderr) == ("", ""), result
    return host.daemon_pid(path)


def mounts(host: PbsHost) -> str:
    """The lockfs mounts, ``TARGET FSTYPE`` a line."""
    table = host.run("findmnt", "-rn", "-o", "TARGET,FSTYPE", "-t", "fuse.lockfs", check=False)
    return table.stdout


def gone(host: PbsHost, pid: int) -> bool:
    return host.run("kill", "-0", str(pid), check=False).returncode != 0


@ALL
def test_the_packaged_command_and_the_mount_helper_path(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    host = installed_host(boot_pbs_host, release, deb)
    # mount(8) drops PATH: mount.fuse3's /bin/sh finds the packaged command on its default PATH.
    found = host.run("env", "-i", "/bin/sh", "-c", "command -v lockfs; lockfs --version")
    assert found.stdout.split("\n")[:2] == ["/usr/sbin/lockfs", f"lockfs {deb.version}"]
    helper = host.run("readlink", "-f", "/sbin/mount.fuse").stdout.strip()
    assert helper.endswith("/mount.fuse3")  # fuse3's; lockfs adds no helper of its own
    assert host.run("sh", "-c", "ls /sbin/mount.fuse.lockfs", check=False).returncode != 0
    assert host.run("head", "-n1", "/usr/sbin/lockfs").stdout == "#!/usr/bin/python3\n"
    page = host.run("man", "lockfs", env={"MANWIDTH": "100", "MANPAGER": "cat"}).stdout
    for heading in ("COMMANDS", "MOUNT OPTIONS", "GUARANTEES", "FAILURE BEHAVIOUR", "SECURITY"):
        assert re.search(rf"^{heading}$", page, re.M), heading

    for end in ("umount", "fusermount3", "SIGTERM"):
        path = mountpoint(host, end)
        options = "uid=backup,gid=backup,mode=0750,nosuid,nodev,noexec,nofail,_netdev,x-foo=1"
        pid = mount(host, path, options)
        table = host.run("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", path).stdout.split()
        assert table[:2] == ["lockfs", "fuse.lockfs"]
        assert {"nosuid", "nodev", "noexec"} <= set(table[2].split(","))
        assert host.run("stat", "-c", "%i %U:%G %a", path).stdout.split() == [
            "1",
            "backup:backup",
            "750",
        ]
        # The packaged code on Debian's python3 and python3-pyfuse3, nothing of a checkout.
        cmdline = host.run("cat", f"/proc/{pid}/cmdline").stdout.split("\0")
        assert cmdline[:2] == ["/usr/bin/python3", "/usr/sbin/lockfs"], cmdline
        maps = host.run("cat", f"/proc/{pid}/maps").stdout
        assert "/usr/lib/python3/dist-packages/pyfuse3" in maps
        assert "lockfs-tests" not in maps
        host.run("python3", LOCKER, "pbs", f"{path}/store1/vm-100", "--release")
        if end == "SIGTERM":
            host.run("kill", "-TERM", str(pid))
        else:
            host.run(*(["umount"] if end == "umount" else ["fusermount3", "-u"]), path)
        wait_for(functools.partial(gone, host, pid), 10, f"daemon {pid} to exit after {end}")
        assert path not in mounts(host)

    # The documented fstab line, with mount -T.
    path = mountpoint(host, "locks")
    fstab = docs_fstab_line().replace(" /run/proxmox-backup/locks ", f" {path} ", 1)
    host.path("/root/fstab").write_text(f"# lockfs test\n{fstab}\n")
    host.run("mount", "-T", "/root/fstab", path)
    assert host.run("stat", "-c", "%U:%G %a", path).stdout.split() == ["backup:backup", "750"]
    again = host.run("mount", "-T", "/root/fstab", path, check=False)
    assert again.returncode != 0
    host.run("umount", path)


@ALL
def test_mount_failures_through_the_helper_leave_no_mount(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    host = installed_host(boot_pbs_host, release, deb)
    host.run("mkdir", f"{SCRATCH}/full")
    host.run("touch", f"{SCRATCH}/full/lock")
    mounted = mountpoint(host, "mounted")
    mount(host, mounted)
    dead = mountpoint(host, "dead")
    host.run("kill", "-9", str(mount(host, dead)))
    wait_for(functools.partial(host.not_connected, dead), 10, "ENOTCONN")
    plain = mountpoint(host, "plain")
    for path, options, message in (
        (f"{SCRATCH}/missing", "rw", "does not exist"),
        (f"{SCRATCH}/full", "rw", "is not empty"),
        (mounted, "rw", "is already a lockfs mount"),
        (dead, "rw", "is a dead lockfs mount"),
        (plain, "uid=backup,bogus", "unknown mount option: bogus"),
        (plain, "auto_unmount", "auto_unmount would unmount"),
        (plain, "uid=nosuchuser", "uid=nosuchuser"),
    ):
        before = mounts(host)
        result = host.run("mount", "-t", "fuse.lockfs", "lockfs", path, "-o", options, check=False)
        assert result.returncode != 0 and message in result.stderr, (options, result)
        assert mounts(host) == before
    # mount.fuse3 mounts by itself for drop_privileges; lockfs refuses the descriptor, and the
    # unchecked mount mount.fuse3 made is dead: plain umount removes it.
    refused = host.run(
        "mount", "-t", "fuse.lockfs", "lockfs", plain, "-o", "drop_privileges", check=False
    )
    assert refused.returncode != 0 and "drop_privileges): not supported" in refused.stderr
    if plain in mounts(host):
        assert NOT_CONNECTED in host.run("stat", plain, check=False).stderr
        host.run("umount", plain)
    assert plain not in mounts(host)


@ALL
def test_a_held_lock_keeps_the_mount_and_a_dead_daemon_fails_closed(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    host = installed_host(boot_pbs_host, release, deb)
    path = mountpoint(host, "locks")
    pid = mount(host, path)
    holder = host.hold_lock(f"{path}/vm-100")
    # What `systemctl stop` of a mount runs: refused while a lock is held; SIGTERM too.
    busy = host.run("umount", path, "-c", check=False)
    assert busy.returncode != 0 and "target is busy" in busy.stderr
    host.run("kill", "-TERM", str(pid))
    assert not gone(host, pid) and host.lock_is_busy(f"{path}/vm-100")
    host.let_go(holder)
    wait_for(lambda: not host.lock_is_busy(f"{path}/vm-100"), 10, "the lock to be free")
    host.run("umount", path)
    wait_for(lambda: gone(host, pid), 10, f"daemon {pid} to exit")

    # A dead daemon: ENOTCONN for everyone, never an empty directory; umount is refused while
    # a holder lives; stopping it, umount and mount recover (docs/deploying.md, by hand).
    pid = mount(host, path)
    holder = host.hold_lock(f"{path}/vm-100")
    host.run("kill", "-9", str(pid))
    wait_for(functools.partial(host.not_connected, path), 10, "ENOTCONN")
    second = host.run("python3", LOCKER, "pbs", f"{path}/vm-100", "--release", check=False)
    assert second.returncode not in (0, 3) and NOT_CONNECTED in second.stderr
    again = host.run("mount", "-t", "fuse.lockfs", "lockfs", path, check=False)
    assert again.returncode != 0 and "dead lockfs mount" in again.stderr
    busy = host.run("umount", path, check=False)
    assert busy.returncode != 0 and "target is busy" in busy.stderr
    host.let_go(holder)
    host.run("umount", path)
    mount(host, path)
    host.run("python3", LOCKER, "pbs", f"{path}/vm-100", "--release")
    host.run("umount", path)


def plain_lock_dir(host: PbsHost, parent: str) -> str:
    """A lock directory as PBS leaves it: owned by backup, a move-journal holding lines, stale
    (empty) lock files of chunks, groups and snapshots, and an empty directory."""
    locks = f"{parent}/locks"
    host.sh(
        f"mkdir -p {parent} {locks}/store1/.chunks/0123 {locks}/store1/vm/100 {locks}/empty-dir\n"
        f"touch {locks}/store1/.chunks/0123/0123abcd {locks}/store1/vm/100.lck"
        f" {locks}/store1/vm/100/snap\n"
        f"chown -R backup:backup {locks}\n"
        f"chmod 0750 {locks}/store1\n"
    )
    journal = host.path(f"{locks}/store1/move-journal")
    journal.write_bytes(JOURNAL)
    host.run("chown", "backup:backup", f"{locks}/store1/move-journal")
    host.run("chmod", "0640", f"{locks}/store1/move-journal")
    return locks


def tree(host: PbsHost, root: str) -> str:
    """Every entry's inode, type, owner, mode, size and checksum: what "unchanged" means."""
    listing = host.sh(
        f"cd {root} && find . -printf '%p %i %y %U:%G %m %s\\n' | sort;"
        f" find . -type f -size +0 -exec md5sum {{}} + | sort"
    )
    return listing.stdout


@ALL
def test_switch_over_of_a_scratch_directory(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    """The switch-over outside PBS's path (no unit there: it mounts with mount(8)), its
    refusals and its roll-back; the scenario test switches PBS's directory over."""
    host = installed_host(boot_pbs_host, release, deb)

    # Refused while anything uses the old directory, changing nothing.
    locks = plain_lock_dir(host, f"{SCRATCH}/in-use")
    target = f"{locks}/store1/vm/100.lck"
    for script in (
        f"sleep infinity | exec python3 {LOCKER} pbs {target}",
        f"sleep infinity | exec python3 {LOCKER} posix {target}",
        f"exec 3<{target}; echo locked; exec sleep infinity",
        f"cd {locks}/store1 && echo locked && exec sleep infinity",
    ):
        before = tree(host, f"{SCRATCH}/in-use")
        holder = host.hold(script)
        refused = host.run("lockfs", "switch-over", locks, check=False)
        assert refused.returncode == 1 and "is in use" in refused.stderr, refused
        assert "Nothing was changed" in refused.stderr
        assert tree(host, f"{SCRATCH}/in-use") == before and locks not in mounts(host)
        host.let_go(holder)

    # Refused beside a leftover of an earlier switch-over, and on another mount.
    locks = plain_lock_dir(host, f"{SCRATCH}/leftover")
    host.run("mkdir", f"{SCRATCH}/leftover/.locks.lockfs-switch-over")
    refused = host.run("lockfs", "switch-over", locks, check=False)
    assert refused.returncode == 1 and "earlier switch-over" in refused.stderr, refused
    tmpfs = mountpoint(host, "tmpfs")
    host.run("mount", "-t", "tmpfs", "none", tmpfs)
    refused = host.run("lockfs", "switch-over", tmpfs, check=False)
    assert refused.returncode == 1 and "is a mountpoint (tmpfs)" in refused.stderr

    # A failure after the move (max_depth=1 cannot hold the journal's directory level): the
    # new mount goes and the old directory, with its inodes, is back.
    locks = plain_lock_dir(host, f"{SCRATCH}/rollback")
    before = tree(host, f"{SCRATCH}/rollback")
    failed = host.run("lockfs", "switch-over", locks, "--options", "max_depth=1", check=False)
    assert failed.returncode == 1, failed
    assert "carrying the data into the new mount failed" in failed.stderr
    assert "the old directory is back" in failed.stderr
    assert tree(host, f"{SCRATCH}/rollback") == before and locks not in mounts(host)

    # The switch-over itself: the journal arrives, the stale files stay behind.
    locks = plain_lock_dir(host, f"{SCRATCH}/switch")
    done = host.run("lockfs", "switch-over", locks)
    assert "Carried over: store1/move-journal (62 bytes)" in done.stdout, done.stdout
    assert f"{locks} fuse.lockfs" in mounts(host)
    journal = f"{locks}/store1/move-journal"
    assert host.run("cat", journal).stdout.encode() == JOURNAL
    owners = host.run("stat", "-c", "%U:%G %a", locks, f"{locks}/store1", journal)
    assert owners.stdout.split() == [  # as in the old directory (mount(8) with its mode)
        "backup:backup",
        "755",
        "backup:backup",
        "750",
        "backup:backup",
        "640",
    ]
    assert host.run("ls", "-A", f"{locks}/store1").stdout.split() == ["move-journal"]
    assert host.run("ls", "-A", f"{SCRATCH}/switch").stdout.split() == ["locks"]
    host.run("python3", LOCKER, "pbs", f"{locks}/store1/vm-100", "--release")
    again = host.run("lockfs", "switch-over", locks)
    assert "nothing to do" in again.stdout
    host.run("umount", locks)


@ALL
def test_setup_with_a_deb_from_elsewhere_and_removal(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    """``mount/setup --package`` installs, is idempotent and repairs the selection a refused
    ``dpkg -r`` leaves; removal of an enabled, unmounted lockfs disables it, and purge leaves
    nothing of the package."""
    host = boot_pbs_host(release, deb)
    setup = [f"{CHECKOUT}/mount/setup", "--package", f"{DEBS}/{deb.path.name}"]
    first = host.run(*setup)
    assert host.dpkg_status() == f"ii  {deb.version}"
    assert f"lockfs {deb.version} installed from" in first.stdout, first.stdout
    again = host.run(*setup)
    assert f"lockfs {deb.version} is installed" in again.stdout and "installing" not in again.stdout
    host.sh("echo lockfs deinstall | dpkg --set-selections")
    assert host.dpkg_status() == f"ri  {deb.version}"
    repaired = host.run(*setup)
    assert "now for install again" in repaired.stdout, repaired.stdout
    assert host.dpkg_status() == f"ii  {deb.version}"

    # Enabled but not mounted: removal disables the unit (the PBS services must not require a
    # unit that is gone), purge removes every file, and PBS starts on a plain directory.
    host.run("systemctl", "stop", *SERVICES)
    host.run("systemctl", "enable", UNIT)
    links = [f"/etc/systemd/system/{s}.requires/{UNIT}" for s in SERVICES]
    assert all(host.path(link).is_symlink() for link in links)
    files = host.run("dpkg", "-L", "lockfs").stdout.split()
    host.run("apt-get", "purge", "-y", "lockfs")
    assert not any(host.path(link).is_symlink() for link in links)
    assert host.dpkg_status() == "not installed"
    left = [f for f in files if host.run("test", "-f", f, check=False).returncode == 0]
    assert left == []
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "start", *SERVICES)
    host.standins_started_on("tmpfs")
    assert host.failed_units() == []


def test_lintian_on_debian_13(boot_pbs_host: BootPbsHost, deb: Deb) -> None:
    """Debian 13's lintian finds no error and no warning either (the build runs on Debian 12,
    whose lintian tests/test_package.py runs)."""
    host = boot_pbs_host(BY_CODENAME["trixie"], deb)
    package = f"{DEBS}/{deb.path.name}"
    result = host.run("lintian", "--pedantic", "--display-info", package, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert (result.returncode, tags) == (0, []), result.stdout + result.stderr
