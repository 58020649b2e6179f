"""The test-hook seam: what LOCKFS_TEST_HOOKS may hold, and that nothing else is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockfs import testing_hooks
from lockfs.testing_hooks import (
    FAULT_NAME,
    NO_HOOKS,
    STUCK_NAME,
    WATCHDOG_NAME,
    HookError,
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
    ],
)
def test_unknown_hooks_are_refused(value: str) -> None:
    with pytest.raises(HookError, match="unknown test hook"):
        from_environment({"LOCKFS_TEST_HOOKS": value})
