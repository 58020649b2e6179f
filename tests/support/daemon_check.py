"""The check every daemon gets at teardown: it ran clean.

A handler bug fails the daemon closed (it exits 70); other bugs may only be logged while the
daemon keeps serving, so a test that does not look stays green. After every test, each daemon
it started must have

* counted no faults (``faults`` in its status, read before it is stopped);
* exited with status 0 (stopped by SIGTERM, or by the test's own umount);
* left no mount that needed ``umount -l`` (the lazy fallback cleans up, and fails the test);
* logged no traceback, no "internal error" and no "Exception ignored" (foreground daemons,
  and daemonized ones where the machine has no syslog: they log to their file under
  /run/lockfs, which teardown reads and removes).

The opt-outs are markers, for what a test does on purpose, and allow only that:

``@pytest.mark.injects_faults``
    the test injects faults (``LOCKFS_TEST_HOOKS=fault-entry``, ``raise-at=``): faults may be
    counted, and the log may hold the injected ones (a traceback ending in "injected fault"),
    no others; each fails its daemon closed, so such a test is ``kills_daemon`` too;
``@pytest.mark.kills_daemon``
    the test kills a daemon, or makes it fail or hang: its exit status need not be 0, and one
    that does not answer or exit when stopped is killed without failing the test.

The fixtures stop and unmount everything first and check afterwards, so a failed check never
leaves a mount behind; the failure names each problem and shows the daemon log's tail.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

import pytest

#: Lines of the daemon log shown with a failed check.
LOG_TAIL_LINES = 40

#: The first line of a log record (lockfs's format on stderr).
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* lockfs\[\d+\] [A-Z]+: ")
#: What a clean daemon never logs.
_BAD_SIGNS = ("Traceback (most recent call last)", "internal error", "Exception ignored in")
#: The last line of the traceback of a fault injected by ``fault-entry`` or ``raise-at``.
_INJECTED = re.compile(r"RuntimeError: injected fault in \w+( at \w+\.py:\d+)?")


@dataclass(frozen=True)
class Expectations:
    """What the test does to its daemons on purpose (from its markers)."""

    #: ``injects_faults``: faults, and the injected faults' log records, are fine.
    faults: bool = False
    #: ``kills_daemon``: a non-zero exit status, or a daemon unresponsive when stopped, is fine.
    killed: bool = False

    @classmethod
    def of(cls, item: pytest.Item) -> Expectations:
        return cls(
            faults=item.get_closest_marker("injects_faults") is not None,
            killed=item.get_closest_marker("kills_daemon") is not None,
        )


def log_records(text: str) -> list[list[str]]:
    """The log split into records: a record's first line and the lines that continue it (a
    traceback). Lines before the first record form one record of their own."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if _RECORD_START.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    return records


def _is_injected_fault(record: list[str]) -> bool:
    return "internal error in " in record[0] and bool(_INJECTED.fullmatch(record[-1].strip()))


def log_problems(text: str, expect: Expectations) -> list[str]:
    """The log records a clean daemon never writes: one line each (the record's first)."""
    problems = []
    for record in log_records(text):
        if not any(sign in line for line in record for sign in _BAD_SIGNS):
            continue
        if expect.faults and _is_injected_fault(record):
            continue
        problems.append(f"its log has: {record[0][:300]}")
    return problems


def describe_exit(code: int) -> str:
    """How a daemon ended, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        return f"the daemon was killed by {signal.Signals(-code).name}"
    return f"the daemon exited with status {code}"


def report(what: str, problems: list[str], log: str | None) -> str:
    """One failed check: ``what`` was checked, its problems, and the daemon log's tail."""
    lines = [f"{what}: the daemon did not run clean:", *(f"  - {p}" for p in problems)]
    if log is None:
        lines.append("  (no daemon log: a daemonized lockfs logs to syslog)")
    else:
        tail = log.splitlines()[-LOG_TAIL_LINES:]
        lines.append(f"--- daemon log, last {len(tail)} lines ---")
        lines.extend(tail)
    return "\n".join(lines)


def fail_on(reports: list[str]) -> None:
    """Fail the test (at teardown) with every report, if there is any."""
    if reports:
        pytest.fail("\n\n".join(reports), pytrace=False)
