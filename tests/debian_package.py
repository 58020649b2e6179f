"""The lockfs Debian package for the tests that install it (test_deploy, test_package*).

The package is built once per session by the project's own ``mount/build-deb`` (into
build/deb, where ``mount/setup`` finds it again) and installed the way the README's command
installs it, with ``mount/setup`` (apt, Debian's python3-pyfuse3 and python3-trio). Tests that
change the installed state (upgrade, removal) leave it to the ``installed`` fixture of the next
test to install the session's package again. apt and dpkg run under the same lock as
``mount/setup``, so that parallel set-ups never collide.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import REPO, require_fuse

from lockfs import __version__

COMMAND = Path("/usr/sbin/lockfs")
UNIT = "run-proxmox\\x2dbackup-locks.mount"
UNIT_FILE = Path("/lib/systemd/system") / UNIT
PBS_SERVICES = ("proxmox-backup.service", "proxmox-backup-proxy.service")
SETUP_LOCK = "/run/lock/lockfs-setup.lock"
#: Debian's tools, not the interpreter the machine image puts first on PATH.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Deb:
    path: Path
    version: str


def run(
    *cmd: str | os.PathLike[str], timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` from / (mount(8) would turn a source ``lockfs`` into ./lockfs)."""
    kwargs.setdefault("cwd", "/")
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def system_env() -> dict[str, str]:
    return {**os.environ, "PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive"}


def dpkg(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``dpkg ARGS`` under the set-up lock."""
    return run("flock", SETUP_LOCK, "dpkg", *args, env=system_env())


def installed_version() -> str | None:
    """The installed lockfs version, None if it is not installed (config files count not).
    A refused removal leaves the package installed, with dpkg's selection set to remove."""
    query = run("dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", "lockfs")
    status, _, version = query.stdout.partition(" ")
    return version.strip() if query.returncode == 0 and status == "installed" else None


def build(version: str | None = None) -> Deb:
    """``mount/build-deb`` (reuses a .deb built from the same tracked files)."""
    cmd: list[str | os.PathLike[str]] = [
        REPO / "mount" / "build-deb",
        *(["--version", version] if version else []),
    ]
    result = run(*cmd, timeout=1800)
    assert result.returncode == 0, f"mount/build-deb failed:\n{result.stdout}\n{result.stderr}"
    path = Path(result.stdout.strip().splitlines()[-1])
    built = run("dpkg-deb", "-f", path, "Version").stdout.strip()
    assert built == (version or __version__), f"{path} is version {built}"
    return Deb(path, built)


def matches_installed(deb: Deb) -> bool:
    """Whether exactly this .deb is installed (same version and file checksums)."""
    if installed_version() != deb.version:
        return False
    sums = run("dpkg-deb", "-I", deb.path, "md5sums").stdout
    return sums == Path("/var/lib/dpkg/info/lockfs.md5sums").read_text()


def install(deb: Deb) -> subprocess.CompletedProcess[str]:
    """Install ``deb`` with dpkg (its dependencies are there since the first install)."""
    return dpkg("-i", deb.path)


@pytest.fixture(scope="session")
def deb() -> Deb:
    """The package of this checkout, installed with the README's set-up (``mount/setup``)."""
    require_fuse()
    setup = run(REPO / "mount" / "setup", timeout=1800)
    assert setup.returncode == 0, f"mount/setup failed:\n{setup.stdout}\n{setup.stderr}"
    package = build()
    assert matches_installed(package), setup.stdout
    return package


@pytest.fixture(scope="session")
def upgrade_deb(deb: Deb) -> Deb:
    """The same code as a higher version: an upgrade of ``deb``."""
    return build(f"{deb.version}+upgrade1")


@pytest.fixture
def installed(deb: Deb) -> Deb:
    """The session's package is installed (again, if an earlier test changed that)."""
    if not matches_installed(deb):
        result = install(deb)
        assert result.returncode == 0, result.stderr
        assert matches_installed(deb)
    return deb
