"""A Proxmox Backup Server host in a container (support.containers), as the system tests use
it: stand-ins of PBS's services under their real names, already running on a plain lock
directory when the test starts, and lockfs's packages ready to install.

* The stand-ins (tests/helpers/pbs-standin/: ``proxmox-backup.service`` as root,
  ``proxmox-backup-proxy.service`` as ``backup``, PBS's tmpfs ``/run/proxmox-backup``) run
  tests/helpers/pbs_standin.py, which takes chunk, group and namespace locks with PBS's
  sequence; they are enabled, so they start at every boot.
* This checkout's files (without .git) are in :data:`CHECKOUT` inside, for the stand-ins and
  for ``mount/setup``; the .deb files given are in :data:`DEBS`.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .containers import Container
from .expect import wait_for
from .processes import HELPERS, REPO

#: Where this checkout is inside (readable by ``backup``, who runs the proxy stand-in).
CHECKOUT = "/usr/local/lib/lockfs-tests"
DEBS = "/root/debs"
LOCKS = "/run/proxmox-backup/locks"
UNIT = "run-proxmox\\x2dbackup-locks.mount"
SERVICES = ("proxmox-backup.service", "proxmox-backup-proxy.service")
STANDIN_UNITS = HELPERS / "pbs-standin"
UNIT_DIR = "/usr/lib/systemd/system"
LOCKER = f"{CHECKOUT}/tests/helpers/locker.py"
#: The locks the stand-ins hold while they run (pbs_standin.hold_locks).
HELD_LOCKS = {
    "proxmox-backup-proxy.service": f"{LOCKS}/store1/a:b:c/vm-100",
    "proxmox-backup.service": f"{LOCKS}/store2/a:b:c/vm-100",
}
#: The locker's exit status for "busy" (tests/helpers/locker.py).
EXIT_BUSY = 3
#: Numbers of the transient units of :meth:`PbsHost.hold`.
HOLDER_NUMBERS = itertools.count(1)


def docs_fstab_line() -> str:
    """The fstab line docs/deploying.md documents (there must be exactly one)."""
    lines = [
        line
        for line in (REPO / "docs" / "deploying.md").read_text().splitlines()
        if line.startswith(f"lockfs {LOCKS} fuse.lockfs ")
    ]
    assert len(lines) == 1, "docs/deploying.md must show exactly one fstab line"
    return lines[0]


def checkout_files() -> list[str]:
    """This checkout's files (tracked or not ignored) relative to its root."""
    listed = subprocess.run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        return [name for name in listed.stdout.split("\0") if name and (REPO / name).is_file()]
    skip = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
    return [
        str(path.relative_to(REPO))
        for path in REPO.rglob("*")
        if path.is_file() and not skip & set(path.relative_to(REPO).parts)
    ]


class PbsHost(Container):
    """A container set up as a PBS host (see the module docstring)."""

    def prepare(self, debs: Iterable[Path]) -> None:
        """Before the first boot: the checkout, the .deb files, and the enabled stand-ins."""
        c = self
        target = c.path(CHECKOUT)
        for name in checkout_files():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
        for deb in debs:
            c.copy_in(deb, DEBS)
        wants = {".service": "multi-user.target.wants", ".mount": "local-fs.target.wants"}
        for unit in sorted(STANDIN_UNITS.iterdir()):
            shutil.copy(unit, c.path(UNIT_DIR) / unit.name)
            link = c.path("/etc/systemd/system") / wants[unit.suffix] / unit.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"{UNIT_DIR}/{unit.name}")

    # --- Asking the host ----------------------------------------------------------------------

    def show(self, unit: str, prop: str) -> str:
        """``systemctl show -P PROP UNIT``."""
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def show_list(self, unit: str, prop: str) -> list[str]:
        """A list property of ``unit`` (Debian 13's systemctl quotes names with backslashes)."""
        return shlex.split(self.show(unit, prop))

    def main_pid(self, service: str) -> int:
        return int(self.show(service, "MainPID"))

    def active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def failed_units(self) -> list[str]:
        listing = self.run("systemctl", "list-units", "--failed", "--plain", "--no-legend")
        return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]

    def fstype(self, path: str = LOCKS) -> str:
        """The file system type at ``path`` (``findmnt``'s answer for the nearest mountpoint)."""
        return self.run("findmnt", "-n", "-o", "FSTYPE", "-T", path).stdout.strip()

    def not_connected(self, path: str = LOCKS) -> bool:
        """Whether ``stat PATH`` fails with ENOTCONN (a dead lockfs; a request that was in
        flight when the daemon died fails with ECONNABORTED instead)."""
        return "Transport endpoint is not connected" in self.run("stat", path, check=False).stderr

    def daemon_pid(self, path: str = LOCKS) -> int:
        """The pid of the lockfs daemon serving ``path`` (from ``lockfs status``)."""

        def status() -> int | None:
            out = self.run("lockfs", "status", path, check=False).stdout
            found = re.search(r"\(daemon pid (\d+)\)", out)
            return int(found.group(1)) if found else None

        return wait_for(status, 10, f"lockfs status {path}")

    def journal(self, unit: str) -> str:
        """The journal lines of ``unit`` (this boot)."""
        return self.run(
            "journalctl", "-b", "-o", "cat", "--no-pager", "-u", unit, check=False
        ).stdout

    def lock_is_busy(self, path: str) -> bool:
        """Whether PBS's non-blocking exclusive lock on ``path`` is refused (someone holds it)."""
        attempt = self.run("python3", LOCKER, "pbs", path, "--release", check=False)
        assert attempt.returncode in (0, EXIT_BUSY), attempt.stdout + attempt.stderr
        return attempt.returncode == EXIT_BUSY

    def standins_started_on(self, fstype: str) -> None:
        """Both stand-ins run, and their latest start took their locks on ``fstype``."""
        for service in SERVICES:
            found = wait_for(functools.partial(self._last_start, service), 30, f"{service} to run")
            assert found == fstype, f"{service} took its locks on {found}, not on {fstype}"

    def _last_start(self, service: str) -> str | None:
        """The file system type the running ``service`` last started on (None: not running)."""
        if self.active(service) != "active":
            return None
        role = "proxy" if "proxy" in service else "api"
        starts = re.findall(rf"^{role}: started .* on (\S+)$", self.journal(service), re.M)
        return starts[-1] if starts else None

    def main_pids(self) -> dict[str, int]:
        """The main pid of each PBS service (0: not running)."""
        return {service: self.main_pid(service) for service in SERVICES}

    def wait_restarted(self, before: dict[str, int], timeout: float = 30) -> dict[str, int]:
        """Wait until both PBS services run with other main pids than ``before`` (systemctl
        returns once the job it was asked for is done, not the jobs it caused); the new pids."""

        def restarted() -> dict[str, int] | None:
            now = self.main_pids()
            fresh = all(now[s] not in (0, before[s]) and self.active(s) == "active" for s in now)
            return now if fresh else None

        return wait_for(restarted, timeout, f"the PBS services to restart (were {before})")

    def hold(self, script: str) -> str:
        """Run the shell ``script`` as a transient service that prints ``locked`` once it
        holds what it holds (a lock, an open file, a working directory) and then keeps it
        until :meth:`let_go`; its unit name, once it holds."""
        unit = f"lockfs-test-holder-{next(HOLDER_NUMBERS)}.service"
        self.run("systemd-run", f"--unit={unit}", "--quiet", "--", "/bin/sh", "-c", script)
        wait_for(lambda: "locked" in self.journal(unit), 30, f"{unit} to hold: {script}")
        return unit

    def hold_lock(self, path: str, mode: str = "pbs") -> str:
        """A process holding a lock on ``path`` (tests/helpers/locker.py MODE: ``pbs`` is
        PBS's sequence and flock, ``posix`` an fcntl lock); its unit name."""
        return self.hold(f"sleep infinity | exec python3 {LOCKER} {mode} '{path}'")

    def let_go(self, unit: str) -> None:
        self.run("systemctl", "stop", unit)

    def dpkg_status(self) -> str:
        """``dpkg-query``'s abbreviated status and version of lockfs (e.g. ``ii  0.1.0``), or
        ``not installed``."""
        query = self.run(
            "dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "lockfs", check=False
        )
        return query.stdout.strip() if query.returncode == 0 else "not installed"
