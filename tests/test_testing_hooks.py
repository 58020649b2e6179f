"""The test-hook seam: what LOCKFS_TEST_HOOKS may hold, and that nothing else is accepted."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from lockfs import testing_hooks
from lockfs.testing_hooks import (
    ARM_NAME,
    FAULT_NAME,
    NO_HOOKS,
    STUCK_NAME,
    TABLE_FILES,
    WATCHDOG_NAME,
    HookError,
    LineFault,
    TestHooks,
    from_environment,
)


def test_no_variable_means_no_hooks() -> None:
    assert from_environment({}) == NO_HOOKS
    assert NO_HOOKS.request_hook() is None
    NO_HOOKS.at_startup_step("after-mount")  # does nothing


def test_hooks_are_parsed() -> None:
    hooks = from_environment({"LOCKFS_TEST_HOOKS": "fault-entry,startup=kill-when-ready"})
    assert hooks == TestHooks(fault_entry=True, startup="kill-when-ready")
    hook = hooks.request_hook()
    assert hook is not None
    hook("lookup", (1, b"other"))
    with pytest.raises(RuntimeError, match="injected fault in lookup"):
        hook("lookup", (1, FAULT_NAME))


def test_raise_at_is_parsed() -> None:
    hooks = from_environment({"LOCKFS_TEST_HOOKS": "raise-at=rename:12"})
    assert hooks == TestHooks(raise_at=("rename", 12))
    hook = hooks.request_hook()
    assert isinstance(hook, LineFault) and (hook.handler, hook.line) == ("rename", 12)
    assert not hook.armed
    hook("lookup", (1, ARM_NAME))
    assert hook.armed


def test_log_socket_hooks() -> None:
    hooks = from_environment({"LOCKFS_TEST_HOOKS": "syslog=/tmp/x/log,journal=/tmp/x/journal"})
    assert hooks.log_sockets() == {
        "syslog_socket": "/tmp/x/log",
        "journal_socket": "/tmp/x/journal",
    }
    assert NO_HOOKS.log_sockets() == {}


def test_thread_hooks(tmp_path: Path) -> None:
    """``invalidation-fault`` and ``stuck-invalidation`` wrap the entry invalidation;
    ``watchdog-fault`` arms the watchdog thread's fault from a request."""
    block = tmp_path / "block"
    value = f"invalidation-fault,stuck-invalidation={block},watchdog-fault=raise"
    hooks = from_environment({"LOCKFS_TEST_HOOKS": value})
    assert hooks == TestHooks(
        invalidation_fault=True, stuck_invalidation=str(block), watchdog_fault="raise"
    )
    sent: list[bytes] = []
    notify = hooks.invalidation_hook(lambda parent, name: sent.append(name))
    notify(1, b"x")
    notify(1, STUCK_NAME)  # PATH does not exist: it does not block
    with pytest.raises(RuntimeError, match="injected fault in invalidation"):
        notify(1, FAULT_NAME)
    assert sent == [b"x", STUCK_NAME]
    plain = sent.append
    assert NO_HOOKS.invalidation_hook(plain) is plain  # type: ignore[arg-type]
    assert NO_HOOKS.watchdog_hook() is None
    fault, request = hooks.watchdog_hook(), hooks.request_hook()
    assert fault is not None and request is not None
    fault()  # not armed yet
    request("lookup", (1, WATCHDOG_NAME))
    with pytest.raises(RuntimeError, match="injected fault in watchdog"):
        fault()
    testing_hooks._watchdog_fault_armed.clear()  # process-wide: disarm for later tests


def test_switch_over_pause_hook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = from_environment({"LOCKFS_TEST_HOOKS": "switch-over-pause=before-copy"})
    assert hooks == TestHooks(switch_over_pause="before-copy")
    lines = iter(["go on\n"])
    monkeypatch.setattr("sys.stdin.readline", lambda: next(lines))
    hooks.at_switch_over_step("checked")  # not this step: no pause, nothing read
    assert capsys.readouterr().err == ""
    hooks.at_switch_over_step("before-copy")
    assert capsys.readouterr().err == "lockfs switch-over: paused at before-copy\n"
    assert next(lines, None) is None  # the line was read


@pytest.mark.parametrize(
    "value",
    [
        "fault",
        "startup=nonsense",
        "fault-entry=1",
        "startup",
        "syslog",
        "journal=rel",
        "watchdog-fault=later",
        "stuck-invalidation=rel",
        "invalidation-fault=1",
        "switch-over-pause",
        "switch-over-pause=later",
        "raise-at=rename",
        "raise-at=rename:0",
        "raise-at=:3",
        "raise-at=re-name:3",
    ],
)
def test_unknown_hooks_are_refused(value: str) -> None:
    with pytest.raises(HookError, match="unknown test hook"):
        from_environment({"LOCKFS_TEST_HOOKS": value})


def test_raise_at_traces_every_module_the_table_is_made_of() -> None:
    """Each lockfs module that nodes.py builds on (imports, directly or not) is in TABLE_FILES,
    so a fault can be injected at any line of table code; options.py only gives defaults and
    tablecheck.py is the tests' consistency check, never run for a request."""
    untraced = {"lockfs.options", "lockfs.tablecheck"}
    seen: set[str] = set()
    todo = ["lockfs.nodes"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = importlib.import_module(name)
        for value in vars(module).values():
            home = getattr(value, "__module__", None) or getattr(value, "__name__", None)
            if isinstance(home, str) and home.startswith("lockfs.") and home not in untraced:
                todo.append(home)
    files = {importlib.import_module(name).__file__ for name in seen}
    assert len(files) >= 7 and files == set(TABLE_FILES)
