"""The status record: its JSON interface, its text and its Prometheus form, without FUSE."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support import Daemons, release, wait_for

from lockfs.admin import describe_log
from lockfs.linux import parse_proc_locks
from lockfs.logs import log_path
from lockfs.metrics import prometheus_text
from lockfs.options import MountOptions
from lockfs.status import MountStatus, format_text

#: The JSON interface: scripts and lockfs-bench read these names, so none may change.
STABLE_KEYS = {
    "mountpoint", "pid", "uptime_s", "nodes", "files", "dirs", "open", "referenced",
    "reclaim_backlog", "created", "reclaimed", "invalidations", "requests", "faults",
    "rss_bytes", "options", "log", "thread_faults", "invalidations_stuck",
    "invalidations_stuck_total", "stuck_directories",
}  # fmt: skip
STABLE_OPTION_KEYS = {
    "uid", "gid", "mode", "reclaim_delay", "dir_grace", "debug", "kernel_flags", "metrics_file",
    "max_entries", "max_file_size", "max_depth",
}  # fmt: skip


def sample(**changes: Any) -> MountStatus:
    options = MountOptions(uid=34, gid=34, mode=0o750, kernel_flags=["rw", "nosuid", "nodev"])
    values: dict[str, Any] = dict(
        mountpoint="/run/proxmox-backup/locks",
        pid=4242,
        uptime_s=3723.5,
        nodes=4,
        files=2,
        dirs=2,
        open=1,
        referenced=3,
        reclaim_backlog=1,
        created=9,
        reclaimed=5,
        invalidations=6,
        requests={"lookup": 7, "open": 3, "getattr": 7, "release": 2},
        faults=0,
        rss_bytes=25 << 20,
        options=options,
        log="syslog (/dev/log)",
    )
    values.update(changes)
    return MountStatus(**values)


def test_json_round_trip_keeps_the_field_names() -> None:
    status = sample()
    document = json.loads(json.dumps(status.to_json()))
    assert set(document) >= STABLE_KEYS
    assert set(document["options"]) >= STABLE_OPTION_KEYS
    assert document["options"]["mode"] == "0750"
    assert document["options"]["kernel_flags"] == ["rw", "nosuid", "nodev"]
    assert MountStatus.from_json(document) == status


def test_from_json_ignores_what_a_newer_daemon_adds() -> None:
    document = sample().to_json()
    document["added_later"] = 1
    document["options"]["added_later"] = "x"
    assert MountStatus.from_json(document) == sample()


@pytest.mark.parametrize(
    "document",
    [[], "status", {"mountpoint": "/x"}, {**sample().to_json(), "options": {"mode": "9x"}}],
    ids=["list", "string", "fields-missing", "bad-mode"],
)
def test_from_json_refuses_what_is_not_a_status(document: Any) -> None:
    with pytest.raises(ValueError):
        MountStatus.from_json(document)


def test_text_shows_names_flags_and_durations() -> None:
    text = format_text(sample())
    by_label = {line[:17].strip(): line[17:] for line in text.splitlines()}
    assert by_label["mountpoint"] == "/run/proxmox-backup/locks (daemon pid 4242)"
    assert by_label["uptime"] == "1h02m"
    assert by_label["requests"] == "19 (getattr 7, lookup 7, open 3, release 2)"
    assert by_label["options"].startswith("uid=backup, gid=backup, mode=0750, reclaim_delay=0.5")
    assert "debug" not in by_label["options"] and "metrics_file" not in by_label["options"]
    assert by_label["kernel flags"] == "rw, nosuid, nodev"
    assert by_label["log"] == "syslog (/dev/log)"
    assert "[" not in text and "]" not in text


def test_thread_health_in_text_json_and_metrics() -> None:
    """Thread faults and stuck invalidations: a line each, the directories in the JSON, the
    counts as metrics; none stuck reads "none"."""
    by_label = {line[:17].strip(): line[17:] for line in format_text(sample()).splitlines()}
    assert by_label["thread faults"].startswith("0 (errors that ended the invalidation thread")
    assert by_label["stuck"] == "none (0 since mount)"
    stuck = {"/run/proxmox-backup/locks/store1": 12.3, "/run/proxmox-backup/locks/b": 75.0}
    status = sample(
        thread_faults=2, invalidations_stuck=2, invalidations_stuck_total=3, stuck_directories=stuck
    )
    document = json.loads(json.dumps(status.to_json()))
    assert document["stuck_directories"] == stuck
    assert MountStatus.from_json(document) == status
    by_label = {line[:17].strip(): line[17:] for line in format_text(status).splitlines()}
    assert by_label["thread faults"].startswith("2 (")
    assert by_label["stuck"] == (
        "2 entry invalidations: 1m15s in /run/proxmox-backup/locks/b, 12.3s in "
        "/run/proxmox-backup/locks/store1 (reclaim waits there; 3 since mount)"
    )
    lines = prometheus_text(status).splitlines()
    mp = 'mountpoint="/run/proxmox-backup/locks"'
    assert f"lockfs_thread_faults_total{{{mp}}} 2" in lines
    assert f"lockfs_invalidations_stuck{{{mp}}} 2" in lines
    assert f"lockfs_invalidations_stuck_total{{{mp}}} 3" in lines
    # A daemon from before these fields: all zero.
    older = {k: v for k, v in sample().to_json().items() if k not in STUCK_KEYS}
    assert MountStatus.from_json(older) == sample()


STUCK_KEYS = {
    "thread_faults",
    "invalidations_stuck",
    "invalidations_stuck_total",
    "stuck_directories",
}


def test_text_shows_numbers_for_ids_without_a_name() -> None:
    options = MountOptions(uid=48879, gid=48879, debug=True)
    text = format_text(sample(options=options, requests={}))
    assert "options          uid=48879, gid=48879, mode=0755," in text
    assert ", debug," in text
    assert "requests         0 (none)" in text
    assert "kernel flags     none" in text


def test_a_log_file_not_written_yet_is_said_to_be_empty(tmp_path: Path) -> None:
    """The fallback log file is created with the daemon's first line: until then `lockfs
    status` must not send an administrator to a file that is not there."""
    missing, written = tmp_path / "missing.log", tmp_path / "written.log"
    written.write_text("a line\n")
    assert describe_log(str(missing)) == f"{missing} (nothing logged yet)"
    assert describe_log(str(written)) == str(written)
    earlier = f"{missing} (earlier lines also in syslog (/dev/log))"
    assert describe_log(earlier) == f"{missing} (nothing logged yet) " + earlier.split(" ", 1)[1]
    for other in ("syslog (/dev/log)", "journal (/run/systemd/journal/socket)", "stderr"):
        assert describe_log(other) == other


def test_status_names_the_log_file_once_a_line_is_in_it(daemons: Daemons, tmp_path: Path) -> None:
    """A detached daemon without syslog or journal (a test hook points both at missing paths)
    logs to its file under /run/lockfs, which appears with its first line."""
    path = daemons.mountpoint()
    log_file = Path(log_path(str(path)))
    hooks = f"syslog={tmp_path}/no-dev-log,journal={tmp_path}/no-journal"
    result = daemons.lockfs(path, LOCKFS_TEST_HOOKS=hooks)
    assert result.returncode == 0, result.stderr
    pid = daemons.daemon_pid(path)
    status = daemons.lockfs("status", path)
    assert f"log              {log_file} (nothing logged yet)\n" in status.stdout, status.stdout
    assert not log_file.exists()
    # A first line: SIGTERM while a lock is held is logged and refused (the mount stays).
    holder, _ = daemons.hold("plain", path / "held")
    os.kill(pid, signal.SIGTERM)
    wait_for(
        lambda: log_file.exists() and "not unmounting" in log_file.read_text(),
        10,
        "the refusal in the log file",
    )
    status = daemons.lockfs("status", path)
    assert f"log              {log_file}\n" in status.stdout, status.stdout
    assert json.loads(daemons.lockfs("status", path, "--json").stdout)["log"] == str(log_file)
    release(holder)


LOCKS = """\
1: FLOCK  ADVISORY  WRITE 4368 00:27:2 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4370 00:27:2 0 EOF
2: OFDLCK ADVISORY  READ -1 00:27:6 0 EOF
"""


def test_prometheus_text() -> None:
    text = prometheus_text(sample(mountpoint='/a "b"'), parse_proc_locks(LOCKS))
    mp = 'mountpoint="/a \\"b\\""'
    for line in (
        "# TYPE lockfs_nodes gauge",
        f'lockfs_nodes{{{mp},kind="file"}} 2',
        f'lockfs_nodes{{{mp},kind="dir"}} 2',
        f"lockfs_open_files{{{mp}}} 1",
        "# TYPE lockfs_entries_reclaimed_total counter",
        f"lockfs_entries_reclaimed_total{{{mp}}} 5",
        f'lockfs_requests_total{{{mp},op="lookup"}} 7',
        f"lockfs_uptime_seconds{{{mp}}} 3723.5",
        f'lockfs_locks{{{mp},kind="flock",mode="exclusive",state="held"}} 1',
        f'lockfs_locks{{{mp},kind="flock",mode="exclusive",state="waiting"}} 1',
        f'lockfs_locks{{{mp},kind="ofd",mode="shared",state="held"}} 1',
        f'lockfs_locks{{{mp},kind="posix",mode="shared",state="held"}} 0',
    ):
        assert line in text.splitlines(), line
    assert text.count("# HELP lockfs_nodes ") == 1
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert len(names) == 15
