"""The one seam through which the test suite makes lockfs fail on demand.

``lockfs`` reads the environment variable ``LOCKFS_TEST_HOOKS`` once, when the mount or the
switch-over command starts (:func:`from_environment`), and hands the result to the code that
acts on it; nothing else in lockfs looks at the environment for test purposes. Production
never sets it. Its value is a comma-separated list of hooks:

``fault-entry``
    Any request that names an entry called ``__lockfs_fault__`` raises inside its handler, so a
    test sees the error boundary answer EIO, count a fault and keep serving.
``hang-entry``
    Any request that names ``__lockfs_hang__`` blocks its handler for ever: the event loop
    stops, and the hang watchdog (lockfs.watchdog) must fail the mount closed.
``deadlock-entry``
    Any request that names ``__lockfs_deadlock__`` calls the synchronous entry invalidation
    from its handler: a real deadlock in the kernel (it waits for the directory lock that the
    caller holds while it waits for this request), which only an aborted connection ends.
``watchdog-exit-only``
    The hang watchdog ends the process without aborting the connection through fusectl, to
    show that the exit alone aborts it.
``startup=STEP``
    The daemon signals itself at a start-up step, to check that the command then fails and
    leaves no mount behind, or that a SIGTERM arriving during start-up is acted on once the
    daemon serves instead of killing it. STEP is one of :data:`STARTUP_FAULTS`.
``syslog=PATH``, ``journal=PATH``
    A detached daemon uses these sockets instead of ``/dev/log`` and the journal's native
    socket (lockfs.logs), so a test can take them away or stand in for them.
``switch-over-pause=STEP``
    ``lockfs switch-over`` stops at STEP (one of :data:`SWITCH_OVER_STEPS`), says so in one
    line on stderr and goes on once it reads a line on stdin: a test changes the tree at that
    moment, as a racing process could, and the race is deterministic.

An unknown hook is an error (the command refuses to start), so a test never silently runs
without the failure it asked for. To add a hook: a field on :class:`TestHooks`, a branch in
:func:`parse`, and the code that acts on the field.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

ENV = "LOCKFS_TEST_HOOKS"

#: The entry names that make a handler raise, block or deadlock (``fault-entry``,
#: ``hang-entry``, ``deadlock-entry``).
FAULT_NAME = b"__lockfs_fault__"
HANG_NAME = b"__lockfs_hang__"
DEADLOCK_NAME = b"__lockfs_deadlock__"

#: ``startup=STEP``: the step at which the daemon signals itself, and the signal.
STARTUP_FAULTS = {
    "kill-after-mount": ("after-mount", signal.SIGKILL),
    "term-after-mount": ("after-mount", signal.SIGTERM),
    "kill-when-ready": ("when-ready", signal.SIGKILL),
}

#: ``switch-over-pause=STEP``: ``checked`` (everything checked, nothing changed yet),
#: ``before-copy`` (the old directory moved aside and checked again, lockfs mounted in its
#: place, no data carried yet).
SWITCH_OVER_STEPS = ("checked", "before-copy")

#: Called at the start of every request handler with the handler's name and arguments.
RequestHook = Callable[[str, tuple[Any, ...]], None]


class HookError(ValueError):
    """``LOCKFS_TEST_HOOKS`` names a hook that does not exist."""


@dataclass(frozen=True)
class TestHooks:
    """The hooks in force for one lockfs process; the default is none."""

    __test__ = False  # not a pytest test class

    fault_entry: bool = False
    hang_entry: bool = False
    deadlock_entry: bool = False
    watchdog_exit_only: bool = False
    startup: str | None = None
    syslog_socket: str | None = None
    journal_socket: str | None = None
    switch_over_pause: str | None = None

    def request_hook(self) -> RequestHook | None:
        """What the request handlers call first, or None when no request hook is set."""
        hooks = [
            hook
            for enabled, hook in (
                (self.fault_entry, _raise_on_fault_name),
                (self.hang_entry, _block_on_hang_name),
                (self.deadlock_entry, _deadlock_on_deadlock_name),
            )
            if enabled
        ]
        if not hooks:
            return None
        if len(hooks) == 1:
            return hooks[0]

        def all_hooks(handler: str, args: tuple[Any, ...]) -> None:
            for hook in hooks:
                hook(handler, args)

        return all_hooks

    def log_sockets(self) -> dict[str, str]:
        """Keyword arguments for lockfs.logs.detached: the sockets these hooks replace."""
        sockets = {"syslog_socket": self.syslog_socket, "journal_socket": self.journal_socket}
        return {key: path for key, path in sockets.items() if path is not None}

    def at_startup_step(self, step: str) -> None:
        """Signal this process if ``startup=`` names this step."""
        if self.startup is not None:
            at, signum = STARTUP_FAULTS[self.startup]
            if at == step:
                os.kill(os.getpid(), signum)

    def at_switch_over_step(self, step: str) -> None:
        """Pause the switch-over here if ``switch-over-pause=`` names this step: one line on
        stderr, then wait for a line on stdin."""
        if self.switch_over_pause == step:
            print(f"lockfs switch-over: paused at {step}", file=sys.stderr, flush=True)
            sys.stdin.readline()


#: No hooks: what production runs with.
NO_HOOKS = TestHooks()


def _raise_on_fault_name(handler: str, args: tuple[Any, ...]) -> None:
    if FAULT_NAME in args:
        raise RuntimeError(f"injected fault in {handler}")


def _block_on_hang_name(handler: str, args: tuple[Any, ...]) -> None:
    if HANG_NAME in args:
        threading.Event().wait()


def _deadlock_on_deadlock_name(handler: str, args: tuple[Any, ...]) -> None:
    if DEADLOCK_NAME in args:
        import pyfuse3  # loaded by the daemon long before: no import happens here

        parent, name = args[0], args[1]
        # Never do this in a handler: it deadlocks. It returns only once the watchdog aborted
        # the connection, and then the handler stays stuck until the process exits.
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
        threading.Event().wait()


def parse(value: str) -> TestHooks:
    """The hooks named in ``value`` (see the module docstring)."""
    hooks = TestHooks()
    for item in filter(None, value.split(",")):
        name, _, arg = item.partition("=")
        if name in ("fault-entry", "hang-entry", "deadlock-entry", "watchdog-exit-only"):
            if arg:
                raise HookError(f"{ENV}: unknown test hook {item!r}")
            flags: dict[str, Any] = {name.replace("-", "_"): True}
            hooks = replace(hooks, **flags)
        elif name == "startup" and arg in STARTUP_FAULTS:
            hooks = replace(hooks, startup=arg)
        elif name == "switch-over-pause" and arg in SWITCH_OVER_STEPS:
            hooks = replace(hooks, switch_over_pause=arg)
        elif name in ("syslog", "journal") and arg.startswith("/"):
            sockets: dict[str, Any] = {f"{name}_socket": arg}
            hooks = replace(hooks, **sockets)
        else:
            raise HookError(f"{ENV}: unknown test hook {item!r}")
    return hooks


def from_environment(environ: Mapping[str, str] = os.environ) -> TestHooks:
    """The hooks set in the environment: read once, when lockfs starts."""
    return parse(environ.get(ENV, ""))
