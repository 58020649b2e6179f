"""Deployment on a PBS host, checked on this host without installing anything: the systemd
mount unit and drop-ins (``systemd-analyze verify``, what ``systemctl enable`` would create), the
documented fstab line (through systemd's fstab generator) and the deployment documents.

Installing, mounting through mount(8), fstab and the units, the switch-over, upgrades and
removal run in Debian 12 and 13 containers with systemd as PID 1: tests/test_system_*.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO
from support.pbs_host import docs_fstab_line

from lockfs.control import escape_path
from lockfs.mounts import FSTYPE
from lockfs.options import parse_options

SYSTEMD = REPO / "systemd"
DOCS = REPO / "docs" / "deploying.md"
LOCKS = "/run/proxmox-backup/locks"
MOUNT_UNIT = SYSTEMD / (escape_path(LOCKS) + ".mount")
PBS_SERVICES = ("proxmox-backup.service", "proxmox-backup-proxy.service")
FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")
BACKUP_ID = 34  # Debian's fixed uid/gid of `backup`
#: Unit settings that start another unit along (or require it): what an installed package
#: must not add to PBS's services before the administrator enables lockfs.
PULLING = {"Requires", "Wants", "BindsTo", "Requisite", "Upholds", "RequiresMountsFor", "PartOf"}


def read_unit(path: Path) -> dict[str, dict[str, str]]:
    """A unit file's settings; a setting given several times (lists such as Before=) has its
    values joined by spaces, as systemd joins them."""
    unit: dict[str, dict[str, str]] = {}
    section: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        section[key] = f"{section[key]} {value}" if key in section else value
    return unit


@pytest.fixture(scope="session")
def systemd_analyze(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``systemd-analyze``, installed through ``mount/setup --dev --packages-only`` if needed;
    skips (with the reason) only where it cannot run at all."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        subprocess.run(
            [REPO / "mount" / "setup", "--dev", "--packages-only"],
            capture_output=True,
            timeout=1800,
        )
        tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(
            "systemd-analyze is missing and `mount/setup --dev --packages-only` could not "
            "install it (Debian package systemd)"
        )
    probe = tmp_path_factory.mktemp("probe") / "lockfs-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    result = subprocess.run([tool, "verify", probe], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    return tool


def verify(tool: str, *units: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "verify", *units], capture_output=True, text=True)


# --- The systemd units -----------------------------------------------------------------------


def unit_files() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.is_file())


def drop_ins() -> list[Path]:
    return sorted(SYSTEMD.glob("*.d/*.conf"))


def test_the_mount_unit_matches_its_path_and_orders_pbs() -> None:
    assert MOUNT_UNIT.name == "run-proxmox\\x2dbackup-locks.mount"
    unit = read_unit(MOUNT_UNIT)
    assert unit["Mount"]["Where"] == LOCKS
    assert (unit["Mount"]["What"], unit["Mount"]["Type"]) == ("lockfs", FSTYPE)
    assert "/run/proxmox-backup" in unit["Unit"]["RequiresMountsFor"].split()
    assert set(PBS_SERVICES) <= set(unit["Unit"]["Before"].split())
    # PBS runs as root and backup; everyone else is kept out (the fstab line says the same).
    fstab_options = docs_fstab_line().split()[3]
    for options in (unit["Mount"]["Options"], fstab_options):
        opts = parse_options([options])
        assert (opts.uid, opts.gid, opts.mode) == (BACKUP_ID, BACKUP_ID, 0o750), options
        assert {"nosuid", "nodev", "noexec"} <= set(opts.kernel_flags)
    # `systemctl enable` makes the PBS services require the mount (and nothing else).
    assert unit["Install"] == {"RequiredBy": " ".join(PBS_SERVICES)}
    for key in PULLING & set(unit["Unit"]):  # it never starts PBS itself
        assert not set(PBS_SERVICES) & set(unit["Unit"][key].split()), key
    # The drop-ins the package installs only order: installing enables nothing.
    for service in PBS_SERVICES:
        drop_in = read_unit(SYSTEMD / f"{service}.d" / "lockfs.conf")
        assert drop_in == {"Unit": {"After": MOUNT_UNIT.name}}


def test_systemd_analyze_verify_every_unit(systemd_analyze: str, tmp_path: Path) -> None:
    """Every unit as shipped, except that its commands name the development ``lockfs``: verify
    checks that a command exists, and this host need not have the package (the containers
    verify the installed units). The man pages the units name are the package's (checked
    here, not by running man(1), which needs them installed)."""
    units = unit_files()
    assert MOUNT_UNIT in units
    dev_lockfs = Path(sys.executable).parent / "lockfs"
    assert os.access(dev_lockfs, os.X_OK), dev_lockfs
    shipped_pages = {
        Path(line).name for line in (REPO / "debian" / "lockfs.manpages").read_text().split()
    }
    for unit in units:  # all copied first: verify loads the units a unit names beside it
        text = unit.read_text()
        for page, section in re.findall(r"man:([\w.-]+)\((\d)\)", text):
            assert f"{page}.{section}" in shipped_pages, (unit, page)
        (tmp_path / unit.name).write_text(text.replace("=/usr/sbin/lockfs ", f"={dev_lockfs} "))
    for unit in units:
        result = verify(systemd_analyze, "--man=no", tmp_path / unit.name)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), unit


def test_systemd_analyze_verify_drop_ins(systemd_analyze: str, tmp_path: Path) -> None:
    """The drop-ins on stand-ins of PBS's services (same [Service] type as PBS's units)."""
    for unit in unit_files():
        shutil.copy(unit, tmp_path)
    for service in PBS_SERVICES:
        (tmp_path / service).write_text(
            f"[Unit]\nDescription=stand-in for {service}\n\n"
            "[Service]\nType=notify\nExecStart=/bin/true\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        shutil.copytree(SYSTEMD / f"{service}.d", tmp_path / f"{service}.d")
    assert {p.parent.name for p in drop_ins()} == {f"{s}.d" for s in PBS_SERVICES}
    services = [tmp_path / s for s in PBS_SERVICES]
    result = verify(systemd_analyze, *services)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # Proof that verify reads drop-ins laid out like this: a bad one is reported.
    probe = tmp_path / f"{PBS_SERVICES[1]}.d" / "zz-probe.conf"
    probe.write_text("[Unit]\nNoSuchSetting=1\n")
    result = verify(systemd_analyze, services[1])
    assert "zz-probe.conf" in result.stderr and "NoSuchSetting" in result.stderr


def test_fstab_line_generates_an_equivalent_unit(systemd_analyze: str, tmp_path: Path) -> None:
    if not FSTAB_GENERATOR.exists():
        pytest.skip(f"{FSTAB_GENERATOR} is missing")
    fstab = tmp_path / "fstab"
    fstab.write_text(docs_fstab_line() + "\n")
    out = tmp_path / "generated"
    out.mkdir()
    env = {**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_LOG_LEVEL": "err"}
    subprocess.run([FSTAB_GENERATOR, out, out, out], env=env, check=True, capture_output=True)
    generated = out / MOUNT_UNIT.name
    unit = read_unit(generated)
    assert (unit["Mount"]["What"], unit["Mount"]["Where"]) == ("lockfs", LOCKS)
    assert unit["Mount"]["Type"] == FSTYPE
    for service in PBS_SERVICES:  # x-systemd.required-by= and x-systemd.before=
        assert (out / f"{service}.requires" / MOUNT_UNIT.name).is_symlink()
        assert service in unit["Unit"]["Before"].split()
    result = verify(systemd_analyze, generated)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


# --- The docs ----------------------------------------------------------------------------------


def test_docs_section_and_files() -> None:
    text = DOCS.read_text()
    assert text.splitlines()[2] == "## Deploying on a PBS host"
    for name in [MOUNT_UNIT.name, *(f"{s}.d/lockfs.conf" for s in PBS_SERVICES)]:
        assert f"systemd/{name}" in text, name
    assert "systemctl restart 'run-proxmox\\x2dbackup-locks.mount'" in text
    assert "umount -l" in text and "ENOTCONN" in text
    # The switch-over never deletes the old directory blindly (it held move-journal).
    for doc in (text, (REPO / "README.md").read_text()):
        assert "lockfs switch-over /run/proxmox-backup/locks" in doc
        assert "rm -rf /run/proxmox-backup/locks" not in doc
    assert "](docs/deploying.md)" not in text  # no link to itself
