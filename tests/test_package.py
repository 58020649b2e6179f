"""The Debian package: built by mount/build-deb, lintian-clean, installed with apt on this
machine, serving mounts from the packaged code, upgraded under a held lock, and removed.

These tests install and remove the package system-wide (only the packaging work runs them;
others deselect tests/test_package*.py). Mounts live in temporary directories and are
unmounted in teardown (the ``daemons`` fixture).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from debian_package import (
    COMMAND,
    PBS_SERVICES,
    UNIT,
    UNIT_FILE,
    Deb,
    dpkg,
    install,
    installed_version,
    run,
)
from support import REPO, Daemons

from lockfs.mounts import FSTYPE, entries_at

BACKUP_ID = 34  # Debian's fixed uid/gid of `backup`


def contents(package: Deb) -> list[str]:
    listing = run("dpkg-deb", "-c", package.path).stdout.splitlines()
    return [line.split(maxsplit=5)[5].removeprefix(".") for line in listing]


def maintainer_scripts(package: Deb, tmp_path: Path) -> dict[str, str]:
    control = tmp_path / "control"
    assert run("dpkg-deb", "-e", package.path, control).returncode == 0
    return {
        name: (control / name).read_text()
        for name in ("preinst", "postinst", "prerm", "postrm")
        if (control / name).exists()
    }


def mount(daemons: Daemons, path: Path, options: str = "uid=backup,gid=backup") -> int:
    """``mount -t fuse.lockfs`` (the packaged helper path); the daemon's pid."""
    result = daemons.run("mount", "-t", FSTYPE, "lockfs", path, "-o", options)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return daemons.daemon_pid(path)


def hold(daemons: Daemons, path: Path) -> subprocess.Popen[str]:
    """A process holding an exclusive flock on ``path`` (PBS's sequence) until told to stop."""
    holder = daemons.helper("pbs", path)
    assert holder.stdout is not None and holder.stdout.readline().startswith("locked ")
    return holder


def lock_is_busy(daemons: Daemons, path: Path) -> bool:
    """Whether a non-blocking exclusive lock on ``path`` is refused (someone holds it)."""
    return daemons.helper("pbs", path, "--release").wait(timeout=10) == 3


# --- The package file ------------------------------------------------------------------------


def test_deb_is_lintian_clean(deb: Deb) -> None:
    """No error and no warning; the overrides each carry their reason."""
    result = run("lintian", "--pedantic", "--display-info", deb.path)
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIP]: ", line)]
    assert result.returncode == 0, result.stdout + result.stderr
    assert [t for t in tags if t.startswith(("E:", "W:"))] == [], tags
    overrides = (REPO / "debian" / "lockfs.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line.startswith("lockfs: "):
            assert i > 0 and overrides[i - 1].startswith("# "), f"no reason for {line}"


def test_deb_contents_and_dependencies(deb: Deb) -> None:
    assert deb.path.name == f"lockfs_{deb.version}_all.deb"
    files = contents(deb)
    for path in (
        str(COMMAND),
        "/usr/share/man/man8/lockfs.8.gz",
        str(UNIT_FILE),
        *(f"/lib/systemd/system/{s}.d/lockfs.conf" for s in PBS_SERVICES),
        "/usr/lib/python3/dist-packages/lockfs/daemon.py",
        "/usr/share/doc/lockfs/deploying.md.gz",
        "/usr/share/doc/lockfs/NEWS.Debian.gz",
    ):
        assert path.replace("\\", "\\\\") in files or path in files, path
    assert not any(f.startswith("/usr/bin/") or f.startswith("/etc/") for f in files), files
    fields = run("dpkg-deb", "-f", deb.path, "Architecture", "Depends").stdout
    assert "Architecture: all" in fields
    depends = fields.split("Depends:", 1)[1]
    for dependency in (
        "fuse3",
        "python3 (>= 3.11)",
        "python3-pyfuse3 (>= 3.2.1)",
        "python3-trio (>= 0.22)",
    ):
        assert dependency in depends, depends


def test_maintainer_scripts_start_stop_and_enable_nothing(deb: Deb, tmp_path: Path) -> None:
    """Installing, upgrading and removing never start, stop, restart, enable or mask a unit
    (the only systemctl calls: daemon-reload, and disable on removal)."""
    scripts = maintainer_scripts(deb, tmp_path)
    assert set(scripts) >= {"postinst", "prerm", "postrm"}
    for name, text in scripts.items():
        code = [line for line in text.splitlines() if not line.strip().startswith(("#", "echo "))]
        for line in code:
            assert "deb-systemd-invoke" not in line and "invoke-rc.d" not in line, (name, line)
            assert "deb-systemd-helper" not in line, (name, line)
            for verb in re.findall(r"(?<!-v )\bsystemctl\s+(?:--\S+\s+)*(\S+)", line):
                assert verb in ("daemon-reload", "is-enabled", "disable"), (name, line)
    disable = [line for line in scripts["prerm"].splitlines() if "systemctl" in line]
    assert disable, "prerm disables the unit on removal"


def test_what_enabling_the_unit_creates(deb: Deb, tmp_path: Path) -> None:
    """Installed, the unit is enabled nowhere; `systemctl enable` makes exactly the two PBS
    services require it (read offline with systemctl --root)."""
    assert not [p for p in Path("/etc/systemd/system").rglob("*") if UNIT in p.name]
    root = tmp_path / "root"
    unit_dir = root / "lib" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    shutil.copy(REPO / "systemd" / UNIT, unit_dir / UNIT)
    result = run("systemctl", f"--root={root}", "enable", UNIT)
    assert result.returncode == 0, result.stderr
    links = sorted(str(p.relative_to(root)) for p in (root / "etc").rglob("*") if p.is_symlink())
    assert links == [f"etc/systemd/system/{s}.requires/{UNIT}" for s in sorted(PBS_SERVICES)]


# --- Installed ---------------------------------------------------------------------------------


def test_installed_command_version_and_man_page(installed: Deb) -> None:
    # mount.fuse3 runs `lockfs` through /bin/sh with its default PATH.
    found = run("env", "-i", "/bin/sh", "-c", "command -v lockfs; lockfs --version")
    assert found.stdout.splitlines() == [str(COMMAND), f"lockfs {installed.version}"]
    where = run("man", "-w", "lockfs")
    assert where.stdout.strip() == "/usr/share/man/man8/lockfs.8.gz"
    page = run("man", "lockfs", env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"})
    assert page.returncode == 0, page.stderr
    for heading in (
        "COMMANDS",
        "MOUNT OPTIONS",
        "GUARANTEES",
        "FAILURE BEHAVIOUR",
        "FILES",
    ):
        assert re.search(rf"^{heading}$", page.stdout, re.M), heading
    for text in ("lockfs switch-over", "reclaim_delay=SECONDS", "Default: 0.5", "ENOTCONN"):
        assert text in page.stdout, text


def test_mount_is_served_by_the_packaged_code(installed: Deb, daemons: Daemons) -> None:
    """mount(8) -> mount.fuse3 -> /usr/sbin/lockfs on /usr/bin/python3 with Debian's pyfuse3."""
    path = daemons.mountpoint()
    pid = mount(daemons, path, "uid=backup,gid=backup,mode=0750")
    assert entries_at(path)[-1].source == "lockfs"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert cmdline[:2] == ["/usr/bin/python3", str(COMMAND)], cmdline
    assert b"PYTHONPATH=" not in Path(f"/proc/{pid}/environ").read_bytes()
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/usr/lib/python3/dist-packages/pyfuse3" in maps  # Debian's python3-pyfuse3
    assert str(REPO) not in maps and ".venv" not in maps
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (BACKUP_ID, BACKUP_ID, 0o750)
    (path / "store1").mkdir()
    assert daemons.helper("pbs", path / "store1" / "vm-100", "--release").wait(timeout=10) == 0
    daemons.end(path, pid, "umount")


def test_upgrade_keeps_the_daemon_and_its_held_lock(
    installed: Deb, upgrade_deb: Deb, daemons: Daemons
) -> None:
    """dpkg -i of a higher version while a flock is held: the lock stays held, the same
    daemon keeps serving (no restart), the package says so once, the new code is on disk."""
    path = daemons.mountpoint()
    pid = mount(daemons, path)
    holder = hold(daemons, path / "vm-100")
    result = install(upgrade_deb)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert installed_version() == upgrade_deb.version
    notes = [line for line in result.stdout.splitlines() if "left alone" in line]
    assert len(notes) == 1 and installed.version in notes[0], result.stdout
    assert re.search(rf"^\s+pid {pid} .*{re.escape(str(path))}", result.stdout, re.M)
    # The same daemon, still serving; the lock is still held.
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    assert daemons.daemon_pid(path) == pid
    assert lock_is_busy(daemons, path / "vm-100")
    assert daemons.helper("pbs", path / "vm-101", "--release").wait(timeout=10) == 0
    version = run(COMMAND, "--version")
    assert version.stdout.strip() == f"lockfs {upgrade_deb.version}"
    status = run(COMMAND, "status", path)  # the new command, the old daemon
    assert status.returncode == 0 and f"daemon pid {pid}" in status.stdout, status.stderr
    holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
    assert daemons.helper("pbs", path / "vm-100", "--release").wait(timeout=10) == 0
    daemons.end(path, pid, "umount")


def test_removal_is_refused_while_mounted(installed: Deb, daemons: Daemons) -> None:
    path = daemons.mountpoint()
    pid = mount(daemons, path)
    holder = hold(daemons, path / "vm-100")
    for action in ("--remove", "--purge"):
        result = dpkg(action, "lockfs")
        assert result.returncode != 0, result.stdout
        assert "refusing to remove lockfs while it serves a mount" in result.stderr
        assert result.stderr.startswith("lockfs: "), result.stderr  # nothing else went wrong
        assert re.search(rf"^\s+pid {pid} .*{re.escape(str(path))}", result.stderr, re.M)
        assert installed_version() == installed.version
    assert COMMAND.exists() and os.waitpid(pid, os.WNOHANG) == (0, 0)
    assert lock_is_busy(daemons, path / "vm-100")
    holder.communicate("\n", timeout=10)
    daemons.end(path, pid, "umount")


def test_remove_and_purge_leave_nothing_behind(installed: Deb) -> None:
    """Not mounted, even with the unit enabled: removal disables it (the PBS services must
    not require a unit that is gone) and purge leaves no file of the package anywhere."""
    listed = [Path(p) for p in dpkg("-L", "lockfs").stdout.splitlines()]
    owned = [p for p in listed if not p.is_dir()]  # files (/lib is a symlink to usr/lib)
    assert COMMAND in owned
    enable = run("systemctl", "enable", UNIT)
    assert enable.returncode == 0, enable.stderr
    requires = [Path(f"/etc/systemd/system/{s}.requires") / UNIT for s in PBS_SERVICES]
    assert all(link.is_symlink() for link in requires)
    try:
        removed = dpkg("--remove", "lockfs")
        assert removed.returncode == 0, removed.stderr
        assert not any(link.is_symlink() for link in requires)
        assert not any(link.parent.exists() for link in requires)
        assert [p for p in owned if p.exists() or p.is_symlink()] == []
        purged = dpkg("--purge", "lockfs")
        assert purged.returncode == 0, purged.stderr
    finally:
        for link in requires:  # only if removal failed to disable the unit
            if link.is_symlink():
                link.unlink()
                link.parent.rmdir()
    assert installed_version() is None
    assert run("dpkg-query", "-W", "lockfs").returncode != 0  # not even config files
    # An empty /run/lockfs goes (other lockfs daemons, not the package's, may still use it).
    run_dir = Path("/run/lockfs")
    assert not run_dir.exists() or any(run_dir.iterdir())
    assert list(Path("/var/lib/dpkg/info").glob("lockfs.*")) == []
    leftovers = [
        os.path.join(where, name)
        for top in ("/etc", "/usr", "/lib/systemd")
        for where, dirs, files in os.walk(top)
        for name in dirs + files
        if "lockfs" in name or "x2dbackup-locks" in name
    ]
    assert leftovers == []
    assert not Path("/usr/lib/python3/dist-packages/lockfs").exists()
    assert not Path(f"/lib/systemd/system/{UNIT}").exists()


def test_setup_refuses_conflicting_modes() -> None:
    for args in (["--debian", "--dev"], ["--dev", "--deb"]):
        result = run(REPO / "mount" / "setup", *args)
        assert result.returncode == 2
        assert "conflicting modes" in result.stderr, result.stderr


def test_lockfs_mount_help_is_the_header_only() -> None:
    result = run(REPO / "mount" / "lockfs-mount", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Install lockfs from this checkout as a Debian package")
    assert "mount/lockfs-mount [MOUNTPOINT] [-o OPTIONS]" in result.stdout
    assert "set -euo" not in result.stdout and "#" not in result.stdout
