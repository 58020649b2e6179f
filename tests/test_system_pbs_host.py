"""A PBS host's whole life with lockfs, on Debian 12 and on Debian 13 with systemd as PID 1.

One scenario per release walks what an administrator does, in one container (tests/
system_hosts.py): PBS (its stand-in services, taking chunk, group and namespace locks the PBS
way) runs on a plain lock directory with thousands of stale lock files and a move-journal; the
package installs with apt from what the release ships; the README's switch-over; a reboot; other
users kept out; a restart of the mount; an upgrade under held locks; ``kill -9`` of the daemon;
a refused removal; a poweroff with locks held; the documented removal and purge. Each step says
what it checks (``step``), so a failure names the step.
"""

from __future__ import annotations

import re

import pytest
from debian_package import Deb
from support import REPO, wait_for
from support.containers import RELEASES, Release
from support.pbs_host import (
    DEBS,
    HELD_LOCKS,
    LOCKER,
    LOCKS,
    SERVICES,
    UNIT,
    PbsHost,
)
from system_hosts import BootPbsHost

JOURNAL = f"{LOCKS}/store1/move-journal"
#: Console lines of a shutdown that did not go cleanly.
UNCLEAN = re.compile(r"Failed unmounting|FAILED|[Tt]imed out|[Ff]reezing|Killing process")


def step(text: str) -> None:
    """Name the step that follows (shown with the output of a failed test)."""
    print(f"== {text}", flush=True)


def shell_block(path: str, heading: str) -> str:
    """The first ```sh block after ``heading`` in the document ``path`` of this checkout."""
    text = (REPO / path).read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def file_count(host: PbsHost) -> int:
    return int(host.sh(f"find {LOCKS} -type f | wc -l").stdout)


def assert_up(host: PbsHost, state: str, fstype: str) -> None:
    """Booted without a failed unit, and both PBS stand-ins took their locks on ``fstype``."""
    assert state == "running", f"system {state}, failed units: {host.failed_units()}"
    host.standins_started_on(fstype)
    assert host.failed_units() == []


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.codename)
def test_a_pbs_host_with_lockfs_from_install_to_purge(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb, upgrade_deb: Deb
) -> None:
    host = boot_pbs_host(release, deb, upgrade_deb)

    step("PBS runs on a plain directory with thousands of stale lock files and a move-journal")
    host.run("python3", LOCKER, "bulk", f"{LOCKS}/store1", "3000", user="backup")
    journal = host.run("cat", JOURNAL).stdout
    assert re.fullmatch(r"proxy started pid \d+\n", journal), journal
    assert file_count(host) > 3000
    before = host.main_pids()

    step("installing the package (apt, offline) mounts, enables and restarts nothing")
    host.run("apt-get", "install", "-y", "--no-install-recommends", f"{DEBS}/{deb.path.name}")
    assert host.dpkg_status() == f"ii  {deb.version}"
    assert host.fstype() == "tmpfs"
    assert host.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert host.main_pids() == before
    assert host.run("pgrep", "-f", "/usr/sbin/lockfs", check=False).stdout == ""
    for service in SERVICES:  # the drop-ins order, and require nothing yet
        assert UNIT in host.show_list(service, "After"), service
        assert UNIT not in host.show_list(service, "Requires"), service

    step("the README's switch-over carries the move-journal and leaves the stale files")
    switch = host.sh(shell_block("README.md", "## Deploying on a PBS host"))
    assert "Carried over: store1/move-journal" in switch.stdout, switch.stdout
    assert host.fstype() == "fuse.lockfs"
    assert host.active(UNIT) == "active"  # mounted through the unit: its daemon belongs to it
    assert host.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert_up(host, "running", "fuse.lockfs")
    assert host.run("cat", JOURNAL).stdout.startswith(journal)  # and the new start's line
    assert file_count(host) < 100
    assert host.run("ls", "-A", "/run/proxmox-backup").stdout.split() == ["locks"]

    step("reboot: the lock directory is mounted before the services, no unit fails")
    assert_up(host, host.reboot(), "fuse.lockfs")
    mounted = int(host.show(UNIT, "ActiveEnterTimestampMonotonic"))
    for service in SERVICES:
        started = int(host.show(service, "ExecMainStartTimestampMonotonic"))
        assert 0 < mounted < started, (service, mounted, started)

    step("other users are kept out; backup's service still takes locks")
    mode = host.run("stat", "-c", "%U:%G %a", LOCKS).stdout.split()
    assert mode == ["backup:backup", "750"]
    host.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "mallory")
    held = HELD_LOCKS["proxmox-backup-proxy.service"]
    for attempt in (
        ["ls", LOCKS],
        ["ls", f"{LOCKS}/store1"],
        ["stat", f"{LOCKS}/store1"],
        ["cat", JOURNAL],
        ["python3", "-c", f"import os; os.open('{held}', os.O_PATH)"],
        ["python3", LOCKER, "pbs", held, "--release"],
    ):
        denied = host.run(*attempt, user="mallory", check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (attempt, denied)
    assert host.run("sh", "-c", f"cd {LOCKS}", user="mallory", check=False).returncode != 0
    assert host.lock_is_busy(held)
    proxy = "proxmox-backup-proxy.service"
    cycles = host.journal(proxy).count("cycles")
    wait_for(lambda: host.journal(proxy).count("cycles") > cycles, 30, "the proxy's next cycles")

    step("restarting the mount restarts the services around it")
    daemon, before = host.daemon_pid(), host.main_pids()
    host.run("systemctl", "restart", UNIT)
    assert host.daemon_pid() != daemon
    host.wait_restarted(before)
    host.standins_started_on("fuse.lockfs")

    step("an upgrade while locks are held keeps the daemon, its locks and the services")
    daemon, before = host.daemon_pid(), host.main_pids()
    assert all(host.lock_is_busy(path) for path in HELD_LOCKS.values())
    upgrade = host.run("apt-get", "install", "-y", f"{DEBS}/{upgrade_deb.path.name}")
    assert host.dpkg_status() == f"ii  {upgrade_deb.version}"
    notes = [line for line in upgrade.stdout.splitlines() if "left alone" in line]
    assert len(notes) == 1 and deb.version in notes[0], upgrade.stdout
    assert re.search(rf"^\s+pid {daemon} .*{LOCKS}", upgrade.stdout, re.M), upgrade.stdout
    # The same daemon serves on, and the new `lockfs status` talks to it.
    assert host.daemon_pid() == daemon and host.main_pids() == before
    assert all(host.lock_is_busy(path) for path in HELD_LOCKS.values())
    version = host.run("lockfs", "--version").stdout.strip()
    assert version == f"lockfs {upgrade_deb.version}"

    step("kill -9 of the daemon: the lock directory answers ENOTCONN, never an empty directory")
    host.run("kill", "-9", str(daemon))
    # A request in flight at that moment fails with ECONNABORTED, every later one ENOTCONN.
    wait_for(host.not_connected, 10, "ENOTCONN")
    step("the documented recovery: systemctl restart of the mount")
    host.run("systemctl", "restart", UNIT)
    assert host.daemon_pid() != daemon
    host.wait_restarted(before)
    host.standins_started_on("fuse.lockfs")
    assert host.failed_units() == []

    step("removal is refused while lockfs serves, and the package stays selected")
    daemon = host.daemon_pid()
    refused = host.run("apt-get", "remove", "-y", "lockfs", check=False)
    assert refused.returncode != 0
    assert "refusing to remove lockfs while it serves a mount" in refused.stderr + refused.stdout
    assert host.dpkg_status() == f"ii  {upgrade_deb.version}"
    refused = host.run("dpkg", "-r", "lockfs", check=False)
    assert refused.returncode != 0
    assert "echo lockfs install | dpkg --set-selections" in refused.stderr, refused.stderr
    assert host.dpkg_status() == f"ri  {upgrade_deb.version}"
    host.sh("echo lockfs install | dpkg --set-selections")
    assert host.dpkg_status() == f"ii  {upgrade_deb.version}"
    assert host.daemon_pid() == daemon
    assert all(host.active(s) == "active" for s in SERVICES)

    step("poweroff with locks held is clean; the next boot mounts lockfs again")
    assert all(host.lock_is_busy(path) for path in HELD_LOCKS.values())
    code, seconds = host.poweroff()
    shutdown = host.console_text(host.boots)
    assert code == 0, shutdown[-3000:]
    assert seconds < 20 and not UNCLEAN.search(shutdown), shutdown[-3000:]
    assert_up(host, host.boot(), "fuse.lockfs")

    step("docs/deploying.md's removal: the services run on a plain directory, nothing is left")
    removal = shell_block("docs/deploying.md", "## Removing")
    host.run("/bin/sh", "-ec", removal, input="y\n")  # the administrator answers apt's question
    assert host.dpkg_status() == "not installed"
    assert host.fstype() == "tmpfs"
    host.standins_started_on("tmpfs")
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "restart", *SERVICES)
    host.standins_started_on("tmpfs")
    assert host.failed_units() == []
    left = host.sh(
        "find /etc /usr /var/lib/dpkg/info \\( -name '*lockfs*' -o -name '*x2dbackup-locks*' \\)"
        " -not -path '/usr/local/lib/lockfs-tests*' -print"
    )
    assert left.stdout == ""
    assert_up(host, host.reboot(), "tmpfs")
