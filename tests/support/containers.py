"""Debian 12 and Debian 13 booted with systemd as PID 1 in systemd-nspawn containers: the
machines of the system tests (tests/test_system_*.py), so that nothing of a test touches this
host's own packages, units or /run/proxmox-backup.

* :func:`cached_root`: each release's root file system is built once with debootstrap from the
  Debian archive that apt on this host uses (:func:`debian_mirror`) and kept under
  :data:`CACHE` in a directory named by a hash of the release and its package list
  (:class:`Release`): a changed list builds a new root, and the old one is removed once no
  container uses it. The root holds everything the tests install from Debian (lockfs's
  dependencies among them), so apt inside a container never needs the network.
* :class:`Container`: one boot of a cached root on a throwaway overlayfs (upper and work
  directories in a temporary directory under :data:`CACHE`, removed afterwards), with
  ``/dev/fuse`` bound in and no network (only loopback: whatever a test installs must be in the
  root already). This host's PID 1 need not be systemd: ``systemd-nspawn
  --register=no --keep-unit`` runs the container in this process's own control group.
  Commands run inside with ``nsenter`` into all namespaces of the container's PID 1.

A container is killed and its overlay removed by :meth:`Container.destroy`, whatever state the
test left it in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lockfs.harness import wait_until

#: Where the cached roots and the containers' overlays live (not /tmp: a root is ~300 MB).
CACHE = Path(os.environ.get("LOCKFS_SYSTEM_CACHE", "/var/tmp/lockfs-system"))
#: Bump when what :func:`_build_root` does besides debootstrap changes: every root is rebuilt.
RECIPE = "1"
#: The archive when this host's apt sources name none (``LOCKFS_DEBIAN_MIRROR`` overrides).
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Debian's tools, whatever comes first on this process's PATH.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: What every root holds: systemd as init, lockfs's dependencies (so that the .deb installs
#: offline), and what the tests and the PBS stand-ins run (python3, procps, psmisc, man-db).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "util-linux",
    "fuse3",
    "python3",
    "python3-pyfuse3",
    "python3-trio",
    "procps",
    "psmisc",
    "man-db",
)


@dataclass(frozen=True)
class Release:
    """A Debian release the system tests boot, and what its root holds."""

    codename: str
    number: int
    #: Packages on top of :data:`BASE_PACKAGES`.
    extra_packages: tuple[str, ...] = ()

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(sorted({*BASE_PACKAGES, *self.extra_packages}))

    def key(self) -> str:
        """What names the cached root: a hash of the release and its package list."""
        text = f"{self.codename}\n{' '.join(self.packages)}\n{RECIPE}\n"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return f"Debian {self.number} ({self.codename})"


#: PBS 3 runs on Debian 12, PBS 4 on Debian 13; lintian checks the package on Debian 13 too.
RELEASES = (Release("bookworm", 12), Release("trixie", 13, ("lintian",)))


def debian_mirror() -> str:
    """The Debian archive apt on this host uses (its first ``deb`` source whose URI ends in
    ``/debian``), or :data:`DEFAULT_MIRROR`; ``LOCKFS_DEBIAN_MIRROR`` overrides both."""
    if os.environ.get("LOCKFS_DEBIAN_MIRROR"):
        return os.environ["LOCKFS_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if source.suffix not in (".list", ".sources") or not source.is_file():
            continue
        text = source.read_text(errors="replace")
        if source.suffix == ".list":
            uris = re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        else:
            uris = [u for line in re.findall(r"^URIs:(.*)$", text, re.M) for u in line.split()]
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder or cleaner of :data:`CACHE` at a time (other test sessions included)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_root(release: Release) -> Path:
    """The root file system of ``release``, built with debootstrap on first use (1-3 minutes
    and ~300 MB per release); roots of an older package list are removed if unused."""
    root = CACHE / f"{release.codename}-{release.key()}" / "root"
    with _cache_lock():
        if not root.is_dir():
            _build_root(release, root)
        _remove_stale_roots(release, root.parent)
    return root


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, timeout: float = 1800) -> str:
    env = {**os.environ, "PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise AssertionError(f"{what} failed (exit status {result.returncode}):\n{output}")
    return result.stdout


def _build_root(release: Release, root: Path) -> None:
    """debootstrap ``release`` with its packages into a temporary directory, then rename it
    to ``root`` (so a half-built root is never used)."""
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            raise AssertionError(
                f"{tool} is missing: `mount/setup --dev` installs it (Debian packages "
                "debootstrap and systemd-container)"
            )
    building = Path(tempfile.mkdtemp(prefix=f".{release.codename}-", dir=CACHE))
    try:
        target = building / "root"
        mirror = debian_mirror()
        _run(
            ["debootstrap", "--variant=minbase", release.codename, target, mirror],
            f"debootstrap of {release} from {mirror}",
        )
        # apt, not debootstrap, resolves the packages: debootstrap's own resolver cannot
        # configure some (lintian's Perl modules).
        in_root = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            f"--directory={target}",
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "--",
            "apt-get",
        ]
        _run([*in_root, "update", "-qq"], f"apt-get update in {release}")
        _run(
            [*in_root, "install", "-y", "-qq", "--no-install-recommends", *release.packages],
            f"apt-get install in {release}",
        )
        _run([*in_root, "clean"], f"apt-get clean in {release}")
        (target / "etc" / "hostname").write_text(f"lockfs-{release.codename}\n")
        # No timer of the image may reach for the network or rewrite databases mid-test.
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer"):
            (target / "etc" / "systemd" / "system" / timer).symlink_to("/dev/null")
        (building / "packages").write_text("\n".join(release.packages) + "\n")
        root.parent.mkdir(parents=True, exist_ok=True)
        target.rename(root)
        (building / "packages").rename(root.parent / "packages")
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _remove_stale_roots(release: Release, current: Path) -> None:
    """Remove the roots of ``release`` built from another package list, unless a container
    (of another test session) still uses one as its lower layer."""
    in_use = Path("/proc/self/mountinfo").read_text()
    for old in CACHE.glob(f"{release.codename}-*"):
        if old != current and old.is_dir() and f"lowerdir={old}/" not in in_use:
            shutil.rmtree(old, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _is_namespace_init(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of a PID namespace below this one (its ``NSpid:`` line has
    more than one entry and ends in 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) > 1 and ids[-1] == "1"
    return False


def find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: the descendant of ``nspawn_pid`` that is a PID namespace's init."""
    pending = [nspawn_pid]
    while pending:
        pid = pending.pop()
        if pid != nspawn_pid and _is_namespace_init(pid):
            return pid
        pending += _children(pid)
    return None


class Container:
    """One Debian release booted with systemd as PID 1 on a throwaway overlay.

    :meth:`boot` starts it and returns once systemd reports the system up (``running``, or
    ``degraded`` when a unit failed: the caller checks); :meth:`run` runs a command inside;
    :meth:`reboot` and :meth:`poweroff` go through systemd inside; :meth:`destroy` kills
    whatever is left and removes the overlay. Files written below :meth:`path` (the overlay,
    not /run or /tmp, which are the container's own tmpfs) appear inside at once.
    """

    def __init__(self, release: Release, lower: Path, name: str) -> None:
        self.release = release
        self.name = name
        runs = CACHE / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=runs))
        (self.workdir / "owner").write_text(f"{os.getpid()}\n")
        self.merged = self.workdir / "merged"
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir()
        upper, work = self.workdir / "upper", self.workdir / "work"
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        _run(["mount", "-t", "overlay", "overlay", "-o", options, self.merged], "overlay mount")
        self.console = self.workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    # --- Files ----------------------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """Where the container's ``inside`` (an absolute path on its overlay) is on this host."""
        if not inside.startswith("/") or inside.split("/")[1] in ("run", "tmp", "proc", "sys"):
            raise ValueError(f"{inside}: not a path on the container's overlay")
        return self.merged / inside.lstrip("/")

    def copy_in(self, source: Path, inside_dir: str) -> str:
        """Copy the file ``source`` into the directory ``inside_dir``; its path inside."""
        target = self.path(inside_dir)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / source.name)
        return f"{inside_dir.rstrip('/')}/{source.name}"

    # --- Booting and stopping ---------------------------------------------------------------

    def boot(self, timeout: float = 90) -> str:
        """Boot, wait until systemd's manager answers and the boot is done; the system state
        (``systemctl is-system-running --wait``)."""
        assert self.nspawn is None or self.nspawn.poll() is not None, "already running"
        self.boots += 1
        with open(self.console, "ab") as console:
            console.write(f"\n===== boot {self.boots}\n".encode())
            console.flush()
            self.nspawn = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--quiet",
                    "--register=no",
                    "--keep-unit",
                    "--link-journal=no",
                    "--console=read-only",
                    "--bind=/dev/fuse",
                    "--private-network",
                    f"--machine={self.name}",
                    f"--directory={self.merged}",
                    "--boot",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8"},
            )
        nspawn = self.nspawn

        def leader() -> int | None:
            if nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {self.console_text()[-3000:]}")
            pid = find_leader(nspawn.pid)
            if pid and Path(f"/proc/{pid}/root/run/systemd/private").exists():
                return pid
            return None

        polled = wait_until(leader, timeout)
        if polled is None:
            raise AssertionError(f"{self.release} did not boot: {self.console_text()[-3000:]}")
        self.leader = polled[0]
        state = self.run("systemctl", "is-system-running", "--wait", timeout=timeout)
        return state.stdout.strip()

    def reboot(self, timeout: float = 90) -> str:
        """``systemctl reboot`` inside, then boot again from the same overlay (systemd-nspawn
        restarts a rebooting container only where /run is a tmpfs, so this does it); the
        system state after the new boot."""
        self.run("systemctl", "reboot", check=False)
        code = self._wait_nspawn(timeout)
        tail = self.console_text()[-2000:]
        assert "Rebooting." in tail, f"the container did not reboot (exit status {code}):\n{tail}"
        return self.boot(timeout)

    def poweroff(self, timeout: float = 90) -> tuple[int, float]:
        """``systemctl poweroff`` inside: systemd-nspawn's exit status and the seconds the
        shutdown took."""
        start = time.monotonic()
        self.run("systemctl", "poweroff", check=False)
        code = self._wait_nspawn(timeout)
        return code, time.monotonic() - start

    def _wait_nspawn(self, timeout: float) -> int:
        assert self.nspawn is not None
        try:
            return self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the container did not stop within {timeout}s:\n{self.console_text()[-3000:]}"
            ) from None

    def console_text(self, boot: int | None = None) -> str:
        """What systemd printed on the console: of every boot, or of boot number ``boot``."""
        text = self.console.read_text(errors="replace")
        if boot is None:
            return text
        return text.split(f"\n===== boot {boot}\n", 1)[1].split("\n===== boot ", 1)[0]

    def destroy(self) -> None:
        """Kill the container if it still runs, unmount and remove its overlay."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.leader:  # the whole PID namespace goes with its init
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        remove_overlay(self.workdir)

    def running(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    # --- Commands inside --------------------------------------------------------------------

    def command(
        self, *cmd: str, user: str | None = None, env: dict[str, str] | None = None
    ) -> list[str]:
        """The host command line that runs ``cmd`` inside, as root or ``user``, with a clean
        environment (Debian's PATH, C.UTF-8, noninteractive debconf) plus ``env``."""
        assert self.running(), f"{self.release} is not running"
        variables = {
            "PATH": SYSTEM_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "DEBIAN_FRONTEND": "noninteractive",
            **(env or {}),
        }
        as_user = ["runuser", "-u", user, "--"] if user else []
        return [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in variables.items()),
            *as_user,
            *cmd,
        ]

    def run(
        self,
        *cmd: str,
        user: str | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside to its end (from ``/``); with ``check``, a non-zero exit status
        fails the test with the command's output."""
        result = subprocess.run(
            self.command(*cmd, user=user, env=env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in {self.release}: `{shlex.join(cmd)}` exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``/bin/sh -e`` script inside as root (see :meth:`run`)."""
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)


def remove_overlay(workdir: Path) -> None:
    """Unmount a container's overlay (``workdir/merged``) and remove ``workdir``."""
    merged = workdir / "merged"
    if f" {merged} " in Path("/proc/self/mountinfo").read_text():
        subprocess.run(["umount", merged], capture_output=True)
    if f" {merged} " not in Path("/proc/self/mountinfo").read_text():
        shutil.rmtree(workdir, ignore_errors=True)


def remove_abandoned_overlays() -> None:
    """Remove the overlays of test sessions that ended without cleaning up (killed)."""
    for workdir in (CACHE / "runs").glob("*"):
        try:
            owner = int((workdir / "owner").read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            remove_overlay(workdir)
