"""Seeing inside a mount: `lockfs locks`, `lockfs status`, `lockfs metrics` and the metrics file."""

from __future__ import annotations

import json
import os
import pwd
import resource
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from support import (
    Daemons,
    MakeMount,
    Mount,
    as_user,
    daemon_env,
    lockfs_command,
    release,
    run_lockfs,
    wait_for,
    waiters,
)

from lockfs.control import socket_path


def locks_json(mnt: Mount, *extra: str) -> list[dict[str, Any]]:
    result = run_lockfs("locks", mnt, *extra, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_locks_lists_holders_modes_kinds_and_waiters(mnt: Mount) -> None:
    (mnt / "store").mkdir()
    exclusive, ex_ino = mnt.hold("pbs", mnt / "store/vm-100")
    waiter = mnt.helper("pbs", mnt / "store/vm-100", "--timeout", "30")
    wait_for(lambda: waiters(mnt, ex_ino), 10, "the waiter to block")
    shared = [mnt.hold("pbs", mnt / "store/ns-lock", "--shared")[0] for _ in range(2)]
    posix, _ = mnt.hold("posix", mnt / "store/posix")
    ofd, _ = mnt.hold("ofd", mnt / "store/ofd")
    gone, _ = mnt.hold("plain", mnt / "store/gone")
    os.unlink(mnt / "store/gone")

    rows = locks_json(mnt)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)

    held, waiting = by_path["store/vm-100"]
    assert (held["kind"], held["mode"], held["state"]) == ("flock", "exclusive", "held")
    assert held["pid"] == exclusive.pid and held["waiters"] == 1
    assert held["command"].startswith("python") and held["held_for"] >= 0
    assert (waiting["state"], waiting["pid"], waiting["held_for"]) == ("waiting", waiter.pid, None)
    assert sorted(r["pid"] for r in by_path["store/ns-lock"]) == sorted(p.pid for p in shared)
    assert {(r["mode"], r["state"]) for r in by_path["store/ns-lock"]} == {("shared", "held")}
    assert [(r["kind"], r["pid"]) for r in by_path["store/posix"]] == [("posix", posix.pid)]
    assert [(r["kind"], r["pid"]) for r in by_path["store/ofd"]] == [("ofd", ofd.pid)]
    (unlinked,) = by_path["store/gone"]  # the path it had when it was unlinked
    assert unlinked["unlinked"] and unlinked["pid"] == gone.pid

    assert {r["path"] for r in locks_json(mnt, "store/ns")} == {"store/ns-lock"}
    table = run_lockfs("locks", mnt)
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["PATH", "KIND", "MODE", "STATE", "PID", "COMMAND", "WAITERS", "HELD"]
    assert any("store/gone (unlinked)" in line for line in lines)
    assert len(lines) == len(rows), (table.stdout, rows)

    for proc in (exclusive, *shared, posix, ofd, gone):
        release(proc)
    assert waiter.stdout.readline().startswith("locked")
    release(waiter)
    mnt.wait_reclaimed(10)
    assert run_lockfs("locks", mnt).stdout.strip() == "no locks held or awaited"


def test_status_and_metrics_counters_move(mnt: Mount) -> None:
    before = mnt.status().requests
    for _ in range(5):
        mnt.run_helper("plain", mnt / "lock", "--release")
    after = mnt.status().requests
    assert after["open"] + after.get("create", 0) >= before.get("open", 0) + 5
    assert after["release"] >= before.get("release", 0) + 5

    human = run_lockfs("status", mnt)
    assert human.returncode == 0
    assert "live entries" in human.stdout and "reclaim backlog" in human.stdout
    assert json.loads(run_lockfs("status", mnt, "--json").stdout)["mountpoint"] == str(mnt.path)

    holder, _ = mnt.hold("plain", mnt / "held")
    metrics = run_lockfs("metrics", mnt).stdout
    mp = f'mountpoint="{mnt.path}"'
    assert f'lockfs_requests_total{{{mp},op="release"}} ' in metrics
    held = f'lockfs_locks{{{mp},kind="flock",mode="exclusive",state="held"}} 1'
    assert held in metrics
    assert "# TYPE lockfs_entries_reclaimed_total counter" in metrics
    release(holder)


def test_metrics_file_is_written_periodically(make_mount: MakeMount, tmp_path: Path) -> None:
    prom = tmp_path / "lockfs.prom"
    mnt = make_mount(f"metrics_file={prom},metrics_interval=0.1")
    wait_for(prom.exists, 10, "the metrics file")
    (mnt / "d").mkdir()
    wait_for(
        lambda: f'lockfs_nodes{{mountpoint="{mnt.path}",kind="dir"}} 2' in prom.read_text(),
        10,
        "the metrics file to count the new directory",
    )
    assert not list(tmp_path.glob(".lockfs.prom.*"))  # no temporary file left


def test_control_socket_is_root_only(mnt: Mount) -> None:
    cmd = [*as_user(pwd.getpwnam("nobody")), *lockfs_command("status", mnt)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=daemon_env(), timeout=60)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr
    assert os.listdir(mnt.path) == []  # nothing of the control channel shows in the mount


#: Connections a flood of the control socket tries to hold open at once.
FLOOD = 1100


def test_a_connection_flood_never_ends_the_daemon(mnt: Mount) -> None:
    """~1,100 connections held open at once, with the daemon allowed only 16 more open files
    than it has: accept() fails with EMFILE, which is logged once and waited out; the mount
    serves throughout, and `lockfs status` answers once the flood is gone."""
    pid = mnt.proc.pid
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 16
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (own[1], own[1]))
    path = socket_path(str(mnt.path))
    flood: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 3
        for _ in range(FLOOD):
            if time.monotonic() > deadline:
                break
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.1)  # a full backlog makes connect() wait
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                continue
            flood.append(sock)
        wait_for(
            lambda: "cannot accept" in mnt.log_text() or mnt.proc.poll() is not None,
            10,
            "accept() to fail with EMFILE",
        )
        (mnt / "during-the-flood").mkdir()  # the mount serves
        assert mnt.proc.poll() is None
    finally:
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, own)
    assert mnt.status().pid == pid
    assert (mnt / "during-the-flood").is_dir()
    log = mnt.log_text()
    assert log.count("cannot accept") == 1, log
    assert "Too many open files" in log, log


def test_the_daemon_raises_its_open_file_limit(daemons: Daemons) -> None:
    """Started with a soft RLIMIT_NOFILE of 256 under a hard limit of 4096, the daemon runs with
    4096: a connection flood or a big mount does not run it out of descriptors early."""
    path = daemons.mountpoint()
    result = daemons.run("prlimit", "--nofile=256:4096", *lockfs_command(path), env=daemon_env())
    assert result.returncode == 0, result.stderr
    pid = daemons.daemon_pid(path)
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    (line,) = (line for line in limits if line.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line
