"""Parsing /proc/locks and joining it with node info, without FUSE."""

from __future__ import annotations

import os
from typing import Any

from lockfs.humanize import format_duration
from lockfs.linux import parse_proc_locks
from lockfs.locks import lock_rows
from lockfs.options import OptionError, parse_options

SAMPLE = """\
1: FLOCK  ADVISORY  WRITE 4368 00:27:2 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4370 00:27:2 0 EOF
1: -> FLOCK  ADVISORY  READ 4371 00:27:2 0 EOF
2: POSIX  ADVISORY  READ 1234 103:0a:5 0 99
3: OFDLCK ADVISORY  WRITE -1 00:27:6 0 EOF
4: LEASE  ACTIVE    READ 77 00:27:9 0 EOF
"""


def test_parse_proc_locks() -> None:
    locks = parse_proc_locks(SAMPLE)
    assert [(lk.kind, lk.waiting, lk.exclusive, lk.pid, lk.ino) for lk in locks] == [
        ("flock", False, True, 4368, 2),
        ("flock", True, True, 4370, 2),
        ("flock", True, False, 4371, 2),
        ("posix", False, False, 1234, 5),
        ("ofd", False, True, None, 6),
    ]
    assert locks[0].dev == os.makedev(0, 0x27)
    assert locks[3].dev == os.makedev(0x103, 0x0A) and locks[3].end == "99"


def test_rows_count_waiters_and_mark_unlinked_nodes() -> None:
    nodes: dict[int, dict[str, Any]] = {
        2: {"path": "store/vm-100", "linked": True, "open_for": 3.5},
        6: {"path": "x", "linked": False},
    }
    rows = lock_rows(parse_proc_locks(SAMPLE), nodes, ofd_pids={6: [42]})
    assert [(r.path, r.state, r.waiters, r.held_for) for r in rows[:3]] == [
        ("store/vm-100", "held", 2, 3.5),
        ("store/vm-100", "waiting", 0, None),
        ("store/vm-100", "waiting", 0, None),
    ]
    unlinked, unknown = rows[3:]
    assert (unlinked.path, unlinked.unlinked, unlinked.pid, unlinked.mode) == (
        "x",
        True,
        42,
        "exclusive",
    )
    assert unknown.path == "<inode 5>"  # the daemon does not know it: last


UNSORTED = """\
1: FLOCK  ADVISORY  WRITE 300 00:27:7 0 EOF
1: -> FLOCK  ADVISORY  WRITE 302 00:27:7 0 EOF
1: -> FLOCK  ADVISORY  WRITE 301 00:27:7 0 EOF
2: FLOCK  ADVISORY  READ 201 00:27:3 0 EOF
3: FLOCK  ADVISORY  READ 200 00:27:3 0 EOF
4: POSIX  ADVISORY  WRITE 100 00:27:9 0 EOF
5: FLOCK  ADVISORY  WRITE 400 00:27:8 0 EOF
"""


def test_rows_come_by_path_each_holder_before_its_waiters() -> None:
    """/proc/locks lists locks in the kernel's order; people look a path up by its name. Rows
    of one file: holders by pid, then its waiters by pid (their counts stay with the holder)."""
    nodes: dict[int, dict[str, Any]] = {
        3: {"path": "store1/ns-lock", "linked": True},
        7: {"path": "store1/vm-100", "linked": True},
        8: {"path": "store1/vm-100", "linked": False},
        9: {"path": "store1/.chunks/0000/00ff", "linked": True},
    }
    rows = lock_rows(parse_proc_locks(UNSORTED), nodes)
    assert [(r.path, r.unlinked, r.state, r.pid, r.waiters) for r in rows] == [
        ("store1/.chunks/0000/00ff", False, "held", 100, 0),
        ("store1/ns-lock", False, "held", 200, 0),
        ("store1/ns-lock", False, "held", 201, 0),
        ("store1/vm-100", False, "held", 300, 2),
        ("store1/vm-100", False, "waiting", 301, 0),
        ("store1/vm-100", False, "waiting", 302, 0),
        ("store1/vm-100", True, "held", 400, 0),
    ]


def test_metrics_options() -> None:
    opts = parse_options(["metrics_file=/var/lib/x.prom,metrics_interval=5"])
    assert (opts.metrics_file, opts.metrics_interval) == ("/var/lib/x.prom", 5.0)
    for bad in ("metrics_file=relative.prom", "metrics_interval=0", "metrics_interval=x"):
        try:
            parse_options([bad])
        except OptionError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_durations_show_at_most_two_units() -> None:
    cases = {0.25: "0.2s", 59.94: "59.9s", 60: "1m00s", 123: "2m03s", 3599: "59m59s"}
    cases |= {3600: "1h00m", 3723: "1h02m", 86399: "23h59m", 97200: "1d03h"}
    assert {s: format_duration(s) for s in cases} == cases
