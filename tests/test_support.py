"""The tests' own support code (tests/support): waiting, fake clocks, the test layers, and the
teardown check that every daemon ran clean."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    REPO,
    Expectations,
    FakeClock,
    FakeWallClock,
    errno_of,
    log_problems,
    report,
    wait_for,
)
from support.daemon_check import LOG_TAIL_LINES, describe_exit, log_records
from support.layers import layer_markers

from lockfs.mounts import FSTYPE, mount_table

# --- wait_for and errno_of -------------------------------------------------------------------


def test_wait_for_returns_the_first_truthy_result() -> None:
    results: Iterator[object] = iter([None, 0, [], "done", "late"])
    assert wait_for(lambda: next(results), 5) == "done"


def test_wait_for_fails_after_its_timeout_naming_what_it_awaited() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for the moon"):
        wait_for(lambda: False, 0.1, "the moon")
    assert 0.1 <= time.monotonic() - start < 2


def test_errno_of() -> None:
    assert errno_of(os.stat, "/nonexistent/x") == errno.ENOENT
    assert errno_of(os.open, "/", flags=os.O_WRONLY) == errno.EISDIR
    with pytest.raises(pytest.fail.Exception):
        errno_of(os.getpid)  # no error: the calling test fails


# --- Fake clocks -----------------------------------------------------------------------------


def test_fake_clock_moves_only_forward_and_only_when_told() -> None:
    clock = FakeClock(start=100.0)
    assert clock() == clock() == 100.0
    clock.advance(0.5)
    assert clock() == clock.now == 100.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    assert clock() == 100.5


def test_fake_wall_clock_ticks_on_every_reading() -> None:
    wall = FakeWallClock(start_ns=0, tick_ns=1)
    assert [wall(), wall(), wall()] == [1, 2, 3]
    default = FakeWallClock()
    first = default()
    assert default() - first == 1000 and first > 1_600_000_000 * 10**9  # a plausible date
    with pytest.raises(ValueError):
        FakeWallClock(tick_ns=0)


# --- Layers ----------------------------------------------------------------------------------


def test_layer_markers() -> None:
    assert layer_markers(Path("tests/test_nodes.py"), ["table", "clock"]) == []
    assert layer_markers(Path("tests/test_locks.py"), ["mnt", "make_mount", "fuse_required"]) == [
        "fuse"
    ]
    for name in ("test_deploy.py", "test_package.py", "test_package_switchover.py"):
        assert layer_markers(Path("tests") / name, []) == ["deploy", "fuse"]
    for name in ("test_system_pbs_host.py", "test_system_package.py"):
        assert layer_markers(Path("tests") / name, []) == ["system", "deploy", "fuse"]


def test_the_unit_layer_selects_no_mounting_test() -> None:
    """``-m "not fuse"`` in a real collection: the unit tests stay, the tests that mount
    (through any mounting fixture) and the deployment tests go."""
    files = ["test_status.py", "test_locks.py", "test_cli.py", "test_bench.py", "test_deploy.py"]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"]
    cmd += ["-m", "not fuse", *(f"tests/{name}" for name in files)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    selected = {line.split("::")[0] for line in out.splitlines() if "::" in line}
    assert selected == {"tests/test_status.py"}, out


def test_no_test_imports_conftest() -> None:
    """conftest only defines fixtures: what tests share is imported from support."""
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("*.py")
        if re.search(r"^\s*(from conftest import|import conftest)", path.read_text(), re.M)
    ]
    assert offenders == []


# --- The teardown check ----------------------------------------------------------------------

HEADER = "2026-11-22 04:09:13,824 lockfs[13768] "
INJECTED = f"""{HEADER}INFO: mounted lockfs at /tmp/m
{HEADER}CRITICAL: internal error in lookup(parent_inode=1, name=b'__lockfs_fault__', ctx=pid 9 \
uid 0): RuntimeError: injected fault in lookup; failing closed: aborting the FUSE connection
Traceback (most recent call last):
  File "/work/lockfs/fuse_ops.py", line 57, in wrapper
    self.fault_hook(name, args)
RuntimeError: injected fault in lookup
{HEADER}INFO: lockfs at /tmp/m stopped
"""
REAL_BUG = f"""{HEADER}CRITICAL: internal error in getattr(inode=5, ctx=pid 9 uid 0): \
ZeroDivisionError: division by zero; failing closed: aborting the FUSE connection
Traceback (most recent call last):
  File "/work/lockfs/nodes.py", line 300, in getattr
ZeroDivisionError: division by zero
"""


def test_log_records_keep_tracebacks_with_their_message() -> None:
    records = log_records("early line\n" + INJECTED)
    assert [len(r) for r in records] == [1, 1, 5, 1]
    assert records[2][-1] == "RuntimeError: injected fault in lookup"


def test_a_clean_log_has_no_problems() -> None:
    clean = f"{HEADER}INFO: mounted\n{HEADER}ERROR: not unmounting /m: it is busy (1 open)\n"
    assert log_problems(clean, Expectations()) == []


def test_only_injected_faults_are_allowed_and_only_when_expected() -> None:
    (problem,) = log_problems(INJECTED, Expectations())
    assert "internal error in lookup" in problem
    assert log_problems(INJECTED, Expectations(faults=True)) == []
    (bug,) = log_problems(INJECTED + REAL_BUG, Expectations(faults=True))
    assert "internal error in getattr" in bug


@pytest.mark.parametrize(
    "text",
    [
        "Traceback (most recent call last):\n  File 'x'\nValueError: early\n",
        f"{HEADER}INFO: x\nException ignored in: <function f>\nTraceback (most recent ...\n",
        f"{HEADER}CRITICAL: internal error in serve; failing closed\n",
    ],
    ids=["before-logging", "unraisable", "no-traceback"],
)
def test_other_bad_signs_are_problems(text: str) -> None:
    assert len(log_problems(text, Expectations(faults=True, killed=True))) == 1


def test_describe_exit() -> None:
    assert describe_exit(1) == "the daemon exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "the daemon was killed by SIGKILL"


def test_a_report_names_the_problems_and_shows_the_log_tail() -> None:
    log = "".join(f"line {i}\n" for i in range(100))
    text = report("lockfs -f at /m", ["it counted 2 fault(s)", "umount -l"], log)
    assert text.startswith("lockfs -f at /m: the daemon did not run clean:\n")
    assert "  - it counted 2 fault(s)\n  - umount -l\n" in text
    assert text.endswith("line 99") and f"line {100 - LOG_TAIL_LINES}\n" in text
    assert f"line {99 - LOG_TAIL_LINES}\n" not in text
    assert "no daemon log" in report("daemonized", ["x"], None)


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
def test_markers_are_the_opt_outs(request: pytest.FixtureRequest) -> None:
    assert Expectations.of(request.node) == Expectations(faults=True, killed=True)


def test_no_marker_no_opt_out(request: pytest.FixtureRequest) -> None:
    assert Expectations.of(request.node) == Expectations()


def test_the_teardown_check_fails_unclean_daemons(tmp_path: Path, fuse_required: None) -> None:
    """The check for real, in a pytest of its own (tests/helpers/teardown_cases.py): faults,
    a killed daemon and a lazy unmount each fail their test at teardown, with the daemon log's
    tail; the marked opt-outs pass; and nothing stays mounted."""
    xml = tmp_path / "results.xml"
    cmd = [
        *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
        *(f"--basetemp={tmp_path / 'in'}", f"--junitxml={xml}"),
        "tests/helpers/teardown_cases.py",
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    outcomes: dict[str, str] = {}
    for case in ET.parse(xml).iter("testcase"):
        error = case.find("error")
        outcomes[case.attrib["name"]] = (
            "" if error is None else error.attrib["message"] + (error.text or "")
        )
    assert {name for name, message in outcomes.items() if not message} == {
        "test_clean_passes",
        "test_marked_fault_passes",
        "test_marked_kill_passes",
    }, run.stdout
    for name, message in outcomes.items():
        if name.endswith("_fails"):
            assert "failed on teardown" in message and "did not run clean" in message, message
    fault = outcomes["test_fault_fails"]
    assert "the daemon exited with status 70" in fault and "its log has: " in fault
    assert "--- daemon log" in fault and "RuntimeError: injected fault in lookup" in fault
    assert "the daemon was killed by SIGKILL" in outcomes["test_kill_fails"]
    assert "it needed umount -l" in outcomes["test_lazy_unmount_fails"]
    assert "the daemon exited with status 70" in outcomes["test_daemonized_fault_fails"]
    inner = str(tmp_path / "in")
    assert [e for e in mount_table() if e.fstype == FSTYPE and e.mountpoint.startswith(inner)] == []
