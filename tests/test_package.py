"""The Debian package file, on this host without installing it: built by mount/build-deb,
lintian-clean, its files and dependencies, maintainer scripts that start, stop and enable
nothing, and what ``systemctl enable`` of its unit creates (read offline with --root).

Installing, upgrading under held locks and removing it run in Debian 12 and 13 containers:
tests/test_system_*.py (Debian 13's lintian too).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from debian_package import Deb, run
from support import REPO
from support.pbs_host import SERVICES as PBS_SERVICES
from support.pbs_host import UNIT

COMMAND = "/usr/sbin/lockfs"
UNIT_FILE = f"/usr/lib/systemd/system/{UNIT}"


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
        COMMAND,
        "/usr/share/man/man8/lockfs.8.gz",
        UNIT_FILE,
        *(f"/usr/lib/systemd/system/{s}.d/lockfs.conf" for s in PBS_SERVICES),
        "/usr/lib/systemd/system/lockfs-heal.service",
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
    """`systemctl enable` makes exactly the two PBS services require the unit (read offline
    with systemctl --root; the system tests enable it for real)."""
    root = tmp_path / "root"
    unit_dir = root / "lib" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    shutil.copy(REPO / "systemd" / UNIT, unit_dir / UNIT)
    result = run("systemctl", f"--root={root}", "enable", UNIT)
    assert result.returncode == 0, result.stderr
    links = sorted(str(p.relative_to(root)) for p in (root / "etc").rglob("*") if p.is_symlink())
    assert links == [f"etc/systemd/system/{s}.requires/{UNIT}" for s in sorted(PBS_SERVICES)]


# --- The set-up scripts -----------------------------------------------------------------


def test_setup_refuses_conflicting_modes() -> None:
    for args in (["--debian", "--dev"], ["--dev", "--deb"], ["--dev", "--package", "x.deb"]):
        result = run(REPO / "mount" / "setup", *args)
        assert result.returncode == 2
        assert "conflicting modes" in result.stderr, result.stderr
    result = run(REPO / "mount" / "setup", "--package")
    assert result.returncode == 2 and "usage: mount/setup" in result.stderr


def test_lockfs_mount_help_is_the_header_only() -> None:
    result = run(REPO / "mount" / "lockfs-mount", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Install lockfs from this checkout as a Debian package")
    assert "mount/lockfs-mount [MOUNTPOINT] [-o OPTIONS]" in result.stdout
    assert "set -euo" not in result.stdout and "#" not in result.stdout
