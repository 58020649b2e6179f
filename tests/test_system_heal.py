"""Self-healing under systemd as PID 1, on Debian 12 and Debian 13 (tests/system_hosts.py):
the package installed, PBS's stand-ins switched over to lockfs, and the daemon made to fail
four times within 10 minutes.

1. ``kill -9``: the lock directory serves again, with both stand-ins restarted, within 15 s;
2. SIGSTOP with ``hang_timeout=2`` (a drop-in's ``Options=``): the watcher fails it closed and
   the directory serves again within hang_timeout + 15 s;
3. ``kill -9`` while a process outside the services holds a lock on the mount: nothing is
   remounted while it lives (the log names it), the directory serves again within 15 s of its
   exit;
4. ``kill -9`` once more: failed 4 times in 10 minutes, so the mount stays failed closed with
   one critical log line naming the command that recovers it; that command does.

Throughout, a lock witness (tests/helpers/lock_witness.py: a service requiring the mount, and
the outside holder of step 3) logs every time it holds one lock; no two holders ever overlap.
The move-journal is checked across the recoveries where the package keeps data files across
remounts (lockfs/persist.py).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from debian_package import Deb
from support import REPO, wait_for
from support.containers import RELEASES, Release
from support.pbs_host import CHECKOUT, DEBS, LOCKS, SERVICES, UNIT, UNIT_DIR, PbsHost
from system_hosts import BootPbsHost
from test_system_pbs_host import step

HEAL = "lockfs-heal.service"
HANG_TIMEOUT = 2
#: Seconds within which the lock directory must serve again after a failure was noticed.
BACK_WITHIN = 15
WITNESS = f"{CHECKOUT}/tests/helpers/lock_witness.py"
WITNESS_LOCK = f"{LOCKS}/store3/witness"
WITNESS_LOG = "/var/log/lock-witness.log"
WITNESS_UNIT = "lock-witness.service"
JOURNAL = f"{LOCKS}/store1/move-journal"
#: Data files outlive a remount only where the package restores them (the persistence work).
PERSISTS = (REPO / "lockfs" / "persist.py").exists()


def unit_options() -> str:
    """The ``Options=`` of the packaged mount unit."""
    text = (REPO / "systemd" / UNIT).read_text()
    return re.search(r"^Options=(.*)$", text, re.M)[1]  # type: ignore[index]


def serving(host: PbsHost, not_pid: int) -> int | None:
    """The pid of the daemon that answers at LOCKS, if it is not ``not_pid``."""
    out = host.run("lockfs", "status", LOCKS, "--timeout", "2", check=False).stdout
    found = re.search(r"\(daemon pid (\d+)\)", out)
    return int(found[1]) if found and int(found[1]) != not_pid else None


def heal_lines(host: PbsHost) -> list[str]:
    journal = host.run("journalctl", "-b", "-t", "lockfs", "-o", "cat", "--no-pager")
    return [line for line in journal.stdout.splitlines() if line.startswith("heal: ")]


def come_back(
    host: PbsHost, daemon: int, services: dict[str, int], since: float, budget: float
) -> float:
    """Wait until a new daemon serves and both stand-ins were restarted on it; the seconds
    since ``since`` (at most ``budget``)."""
    wait_for(lambda: serving(host, daemon), budget - (time.monotonic() - since) + 1, "a new daemon")
    host.wait_restarted(services, timeout=max(1.0, budget - (time.monotonic() - since) + 1))
    took = time.monotonic() - since
    host.standins_started_on("fuse.lockfs")
    assert took <= budget, f"back after {took:.1f} s, more than {budget} s"
    return took


def witness_holders(host: PbsHost) -> list[tuple[int, float, float]]:
    """The witness log as (pid, acquired, released) intervals; asserts none overlap."""
    held: list[tuple[int, float, float]] = []
    holder: tuple[int, float] | None = None
    for line in host.run("cat", WITNESS_LOG).stdout.splitlines():
        at, event, pid = line.split()[:3]
        if event == "acquired":
            assert holder is None, f"pid {pid} acquired while pid {holder} held it: {line}"
            holder = (int(pid), float(at))
        elif event == "releasing":
            assert holder is not None and holder[0] == int(pid), line
            held.append((holder[0], holder[1], float(at)))
            holder = None
    return held


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.codename)
def test_the_lock_directory_heals_itself_and_never_twice_holds_a_lock(
    release: Release, boot_pbs_host: BootPbsHost, deb: Deb
) -> None:
    host = boot_pbs_host(release, deb)
    step("install the package, switch over, enable the mount unit")
    host.run("apt-get", "install", "-y", "--no-install-recommends", f"{DEBS}/{deb.path.name}")
    host.sh(
        "systemctl stop proxmox-backup-proxy.service proxmox-backup.service\n"
        f"lockfs switch-over {LOCKS}\n"
        f"systemctl enable '{UNIT}'\n"
        "systemctl start proxmox-backup.service proxmox-backup-proxy.service\n"
    )
    host.standins_started_on("fuse.lockfs")

    step("the mount unit upholds the watcher, which is bound to it; both verify")
    assert host.show_list(UNIT, "Upholds") == [HEAL]
    assert host.show_list(HEAL, "BindsTo") == [UNIT] and UNIT in host.show_list(HEAL, "After")
    assert host.active(HEAL) == "active"
    verify = host.run("systemd-analyze", "verify", f"{UNIT_DIR}/{HEAL}", check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), verify
    assert host.run("systemctl", "is-enabled", HEAL, check=False).stdout.strip() == "static"

    step(f"hang_timeout={HANG_TIMEOUT} (a drop-in), and a lock witness that requires the mount")
    host.path(f"/etc/systemd/system/{UNIT}.d").mkdir(parents=True)
    host.path(f"/etc/systemd/system/{UNIT}.d/test.conf").write_text(
        f"[Mount]\nOptions={unit_options()},hang_timeout={HANG_TIMEOUT}\n"
    )
    host.path(f"/etc/systemd/system/{WITNESS_UNIT}").write_text(
        f"[Unit]\nRequires={UNIT}\nAfter={UNIT}\n\n"
        f"[Service]\nExecStart=/usr/bin/python3 {WITNESS} loop {WITNESS_LOCK} {WITNESS_LOG}\n"
    )
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "restart", UNIT)
    host.run("systemctl", "start", WITNESS_UNIT)
    host.standins_started_on("fuse.lockfs")
    status = json.loads(host.run("lockfs", "status", LOCKS, "--json").stdout)
    assert status["options"]["hang_timeout"] == HANG_TIMEOUT, status
    assert set(host.show_list(UNIT, "RequiredBy")) == {*SERVICES, WITNESS_UNIT}
    wait_for(lambda: len(witness_holders(host)) >= 3 or None, 20, "the witness's first locks")
    journal = host.run("cat", JOURNAL).stdout
    took: dict[str, float] = {}

    step("1. kill -9: back within 15 s, the stand-ins restarted")
    daemon, before = host.daemon_pid(), host.main_pids()
    witness = host.main_pid(WITNESS_UNIT)
    killed = time.monotonic()
    host.run("kill", "-9", str(daemon))
    took["kill -9"] = come_back(host, daemon, before, killed, BACK_WITHIN)
    assert host.main_pid(WITNESS_UNIT) not in (0, witness)

    step("2. SIGSTOP: failed closed after hang_timeout, back within hang_timeout + 15 s")
    daemon, before = host.daemon_pid(), host.main_pids()
    stopped = time.monotonic()
    host.run("kill", "-STOP", str(daemon))
    took["SIGSTOP"] = come_back(host, daemon, before, stopped, HANG_TIMEOUT + BACK_WITHIN)
    assert host.run("kill", "-0", str(daemon), check=False).returncode != 0  # it was killed
    hung = [line for line in heal_lines(host) if "has not answered for" in line]
    assert len(hung) == 1 and f"(hang_timeout={HANG_TIMEOUT}, its process stopped)" in hung[0]

    step("3. kill -9 while a process outside the services holds the witness's lock")
    outside = "lockfs-test-outside-witness.service"
    host.run(
        "systemd-run", f"--unit={outside}", "--quiet", "/usr/bin/python3", WITNESS, "once",
        WITNESS_LOCK, WITNESS_LOG, "8",
    )  # fmt: skip
    holder = host.main_pid(outside)
    wait_for(
        lambda: f" acquired {holder}" in host.run("cat", WITNESS_LOG).stdout or None,
        20,
        "the outside holder to hold the lock",
    )
    daemon, before = host.daemon_pid(), host.main_pids()
    host.run("kill", "-9", str(daemon))
    wait_for(
        lambda: any(f"pid {holder} (python3" in line for line in heal_lines(host)) or None,
        BACK_WITHIN,
        "the watcher to name the outside holder",
    )
    while host.active(outside) == "active":  # never remounted while it lives
        assert host.not_connected(), "remounted while a holder of the dead mount lives"
        assert all(host.active(s) != "active" for s in (*SERVICES, WITNESS_UNIT))
        time.sleep(0.3)
    released = time.monotonic()
    took["kill -9, after the holder's exit"] = come_back(
        host, daemon, before, released, BACK_WITHIN
    )

    step("4. the fourth failure in 10 minutes stays failed closed, with one line")
    daemon = host.daemon_pid()
    host.run("kill", "-9", str(daemon))
    command = f"systemctl restart '{UNIT}'"
    wait_for(
        lambda: any("staying failed closed" in line for line in heal_lines(host)) or None,
        BACK_WITHIN,
        "the watcher to give up",
    )
    time.sleep(5)
    assert host.not_connected() and host.active(HEAL) == "active"
    gave_up = [line for line in heal_lines(host) if "staying failed closed" in line]
    assert len(gave_up) == 1, gave_up
    assert (
        f"failed 4 times in 10 minutes (at most 3 are recovered automatically); staying "
        f"failed closed; recover with: {command}" in gave_up[0]
    )
    priority = host.run("journalctl", "-b", "-t", "lockfs", "-p", "crit", "-o", "cat", "--no-pager")
    assert "staying failed closed" in priority.stdout
    step("the command it names recovers")
    host.sh(command)
    host.run("systemctl", "reset-failed")
    host.run("systemctl", "start", *SERVICES, WITNESS_UNIT)
    assert serving(host, daemon)
    host.standins_started_on("fuse.lockfs")
    wait_for(lambda: host.active(WITNESS_UNIT) == "active" or None, 10, "the witness")

    step("the witness never saw two holders; what the watcher logged")
    held = witness_holders(host)
    holders = {pid for pid, _, _ in held}
    assert holder in holders and len(holders) >= 4, held
    serves_again = [line for line in heal_lines(host) if "serves again" in line]
    assert len(serves_again) == 3, heal_lines(host)
    print(f"{release}: back after", {k: round(v, 1) for k, v in took.items()})
    print("\n".join(heal_lines(host)))
    if PERSISTS:
        assert host.run("cat", JOURNAL).stdout.startswith(journal)
    assert host.failed_units() == []
