"""The lockfs Debian package for the tests, and the promise that the suite leaves this host's own
lockfs alone.

The package is built once per session by the project's own ``mount/build-deb`` (into
build/deb); the tests read it (lintian, contents) and install it only inside the system tests'
containers (tests/system_hosts.py), never on this host. ``upgrade_deb`` is the same code as a
higher version.

:func:`host_left_alone` (autouse, session): this host's lockfs package (its dpkg status,
selection and version) and whatever is mounted at /run/proxmox-backup/locks, with its daemon's
pid, are the same after the session as before it. The suite only reads them; a host where an
administrator installed and mounted lockfs (the README's quick start) keeps both.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import REPO

from lockfs import __version__
from lockfs.mounts import entries_at

#: Debian's tools, not the interpreter the machine image puts first on PATH.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's PBS lock directory: the suite never mounts, unmounts or writes there.
HOST_LOCKS = "/run/proxmox-backup/locks"


@dataclass(frozen=True)
class Deb:
    path: Path
    version: str


def run(
    *cmd: str | os.PathLike[str], timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` from / with Debian's PATH, output captured as text."""
    kwargs.setdefault("cwd", "/")
    kwargs.setdefault("env", {**os.environ, "PATH": SYSTEM_PATH})
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )


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


@pytest.fixture(scope="session")
def deb() -> Deb:
    """The package of this checkout, built (not installed)."""
    return build()


@pytest.fixture(scope="session")
def upgrade_deb(deb: Deb) -> Deb:
    """The same code as a higher version: an upgrade of ``deb``."""
    return build(f"{deb.version}+upgrade1")


def host_lockfs_state() -> dict[str, object]:
    """This host's lockfs package (status, selection, version), the mounts at
    /run/proxmox-backup/locks and the pids of lockfs daemons serving that path."""
    query = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Status}|${Version}", "lockfs")
    daemons = []
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if HOST_LOCKS.encode() in argv and any(a.endswith(b"/lockfs") for a in argv[:2]):
            daemons.append(int(pid))
    return {
        "dpkg -l lockfs": query.stdout.strip() if query.returncode == 0 else "not installed",
        f"mounts at {HOST_LOCKS}": [
            (e.mount_id, e.fstype, e.source) for e in entries_at(HOST_LOCKS, resolve_path=False)
        ],
        f"lockfs daemons of {HOST_LOCKS}": sorted(daemons),
    }


@pytest.fixture(scope="session", autouse=True)
def host_left_alone() -> Iterator[None]:
    """Fails the session's last test if the suite changed this host's lockfs (see above)."""
    before = host_lockfs_state()
    yield
    after = host_lockfs_state()
    assert after == before, f"the test suite changed this host's lockfs: {before} -> {after}"
