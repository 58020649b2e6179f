"""The one seam through which the test suite makes lockfs fail on demand.

``lockfs`` reads the environment variable ``LOCKFS_TEST_HOOKS`` once, when the mount or the
switch-over command starts (:func:`from_environment`), and hands the result to the code that
acts on it; nothing else in lockfs looks at the environment for test purposes. Production
never sets it. Its value is a comma-separated list of hooks:

``fault-entry``
    Any request that names an entry called ``__lockfs_fault__`` raises inside its handler, so a
    test sees the daemon fail closed (lockfs.fuse_ops: an internal error aborts the mount).
``hang-entry``
    Any request that names ``__lockfs_hang__`` blocks its handler for ever: the event loop
    stops, and the hang watchdog (lockfs.watchdog) must fail the mount closed.
``deadlock-entry``
    Any request that names ``__lockfs_deadlock__`` calls the synchronous entry invalidation
    from its handler: a real deadlock in the kernel (it waits for the directory lock that the
    caller holds while it waits for this request), which only an aborted connection ends.
``raise-at=HANDLER:N``
    Once a request has named ``__lockfs_arm__`` (say, a ``stat`` of it: the test's set-up is
    done), the next request served by HANDLER (``rename``, ``unlink``, ``forget``, ...) raises
    at the N-th line the node table's code (:data:`TABLE_FILES`: lockfs/nodes.py and the
    modules it builds on) executes for it (:class:`LineFault`, with ``sys.settrace`` on the
    thread that serves requests; if it runs fewer lines, no fault): a bug at any point of a
    change, for the all-or-nothing tests.
``watchdog-exit-only``
    The hang watchdog ends the process without aborting the connection through fusectl, to
    show that the exit alone aborts it.
``watchdog-fault=raise`` or ``watchdog-fault=block``
    Once a request names ``__lockfs_watchdog__``, the hang watchdog's thread raises (it ends)
    or blocks for ever at its next sample: the trio side must notice and fail closed.
``invalidation-fault``
    An entry invalidation of a name ``__lockfs_fault__`` raises in the invalidation thread
    (not an OSError: a bug), which must be logged and the thread restarted.
``stuck-invalidation=PATH``
    An entry invalidation of a name ``__lockfs_stuck__`` blocks while the file PATH exists,
    standing in for the kernel keeping it waiting on the directory's lock (lockfs.invalidator).
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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from . import entryorder, filedata, idle, limits, namespace, node, nodes

ENV = "LOCKFS_TEST_HOOKS"

#: The entry names that make a handler raise, block or deadlock (``fault-entry``,
#: ``hang-entry``, ``deadlock-entry``).
FAULT_NAME = b"__lockfs_fault__"
HANG_NAME = b"__lockfs_hang__"
DEADLOCK_NAME = b"__lockfs_deadlock__"
#: The entry name a request names to set off ``watchdog-fault``; the one whose invalidation
#: blocks under ``stuck-invalidation`` (``invalidation-fault`` uses FAULT_NAME).
WATCHDOG_NAME = b"__lockfs_watchdog__"
STUCK_NAME = b"__lockfs_stuck__"
WATCHDOG_FAULTS = ("raise", "block")
#: Set once a request named WATCHDOG_NAME (``watchdog-fault``): read by the watchdog's thread.
_watchdog_fault_armed = threading.Event()
#: The entry name whose mention arms ``raise-at``.
ARM_NAME = b"__lockfs_arm__"

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
    watchdog_fault: str | None = None
    invalidation_fault: bool = False
    stuck_invalidation: str | None = None
    startup: str | None = None
    syslog_socket: str | None = None
    journal_socket: str | None = None
    switch_over_pause: str | None = None
    #: ``raise-at=HANDLER:N``: the handler and the line count.
    raise_at: tuple[str, int] | None = None

    def request_hook(self) -> RequestHook | None:
        """What the request handlers call first, or None when no request hook is set."""
        hooks: list[RequestHook] = [
            hook
            for enabled, hook in (
                (self.fault_entry, _raise_on_fault_name),
                (self.hang_entry, _block_on_hang_name),
                (self.deadlock_entry, _deadlock_on_deadlock_name),
                (self.watchdog_fault is not None, _arm_watchdog_fault),
            )
            if enabled
        ]
        if self.raise_at is not None:
            hooks.append(LineFault(*self.raise_at))
        if not hooks:
            return None
        if len(hooks) == 1:
            return hooks[0]

        def all_hooks(handler: str, args: tuple[Any, ...]) -> None:
            for hook in hooks:
                hook(handler, args)

        return all_hooks

    def watchdog_hook(self) -> Callable[[], None] | None:
        """What the watchdog's thread calls at every sample (``watchdog-fault``), or None."""
        if self.watchdog_fault is None:
            return None
        block = self.watchdog_fault == "block"

        def fault() -> None:
            if _watchdog_fault_armed.is_set():
                if block:
                    threading.Event().wait()
                raise RuntimeError("injected fault in watchdog")

        return fault

    def invalidation_hook(
        self, notify: Callable[[int, bytes], None]
    ) -> Callable[[int, bytes], None]:
        """``notify`` (the entry invalidation) with ``invalidation-fault`` and
        ``stuck-invalidation`` applied."""
        fault, stuck = self.invalidation_fault, self.stuck_invalidation
        if not fault and stuck is None:
            return notify

        def hooked(parent: int, name: bytes) -> None:
            if fault and name == FAULT_NAME:
                raise RuntimeError("injected fault in invalidation")
            if stuck is not None and name == STUCK_NAME:
                while os.path.exists(stuck):
                    time.sleep(0.05)
            notify(parent, name)

        return hooked

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


def _arm_watchdog_fault(handler: str, args: tuple[Any, ...]) -> None:
    if WATCHDOG_NAME in args:
        _watchdog_fault_armed.set()


#: The files of the node table's code, whose lines ``raise-at`` counts: nodes.py and every
#: module it builds on.
TABLE_FILES = frozenset(
    module.__file__ for module in (nodes, namespace, idle, limits, node, entryorder, filedata)
)


class LineFault:
    """``raise-at=HANDLER:N`` as a request hook. Once armed (a request named
    :data:`ARM_NAME`, or ``armed=True``), at the start of the next request of ``handler`` it
    traces the serving thread (``sys.settrace``) and raises RuntimeError at the ``line``-th
    line the table's code executes within that request; at the start of the next request it
    stops tracing. Only frames called from that very request count (the adapter's wrapper
    frame holding the request's argument tuple is on their stack), so reclaim passes between
    requests do not.

    A trace function that raises is removed (Python's rule): after the fault nothing is
    traced. ``lines_seen`` is how many lines the traced request executed so far.
    """

    def __init__(self, handler: str, line: int, *, armed: bool = False) -> None:
        self.handler = handler
        self.line = line
        self.armed = armed
        self.lines_seen = 0
        self._args: tuple[Any, ...] | None = None

    def __call__(self, handler: str, args: tuple[Any, ...]) -> None:
        sys.settrace(None)
        if not self.armed:
            self.armed = ARM_NAME in args
            return
        if handler != self.handler or self._args is not None:
            return
        self._args = args
        sys.settrace(self._on_call)

    def _in_request(self, frame: FrameType) -> bool:
        caller = frame.f_back
        while caller is not None:
            if caller.f_code.co_name == "wrapper" and caller.f_locals.get("args") is self._args:
                return True
            caller = caller.f_back
        return False

    def _on_call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call" or frame.f_code.co_filename not in TABLE_FILES:
            return None
        return self._on_line if self._in_request(frame) else None

    def _on_line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines_seen += 1
            if self.lines_seen == self.line:
                where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                raise RuntimeError(f"injected fault in {self.handler} at {where}")
        return self._on_line


def parse(value: str) -> TestHooks:
    """The hooks named in ``value`` (see the module docstring)."""
    hooks = TestHooks()
    for item in filter(None, value.split(",")):
        name, _, arg = item.partition("=")
        flag_hooks = (
            "fault-entry",
            "hang-entry",
            "deadlock-entry",
            "watchdog-exit-only",
            "invalidation-fault",
        )
        if name in flag_hooks:
            if arg:
                raise HookError(f"{ENV}: unknown test hook {item!r}")
            flags: dict[str, Any] = {name.replace("-", "_"): True}
            hooks = replace(hooks, **flags)
        elif name == "startup" and arg in STARTUP_FAULTS:
            hooks = replace(hooks, startup=arg)
        elif name == "watchdog-fault" and arg in WATCHDOG_FAULTS:
            hooks = replace(hooks, watchdog_fault=arg)
        elif name == "stuck-invalidation" and arg.startswith("/"):
            hooks = replace(hooks, stuck_invalidation=arg)
        elif name == "switch-over-pause" and arg in SWITCH_OVER_STEPS:
            hooks = replace(hooks, switch_over_pause=arg)
        elif name == "raise-at" and _is_handler_line(arg):
            handler, _, line = arg.partition(":")
            hooks = replace(hooks, raise_at=(handler, int(line)))
        elif name in ("syslog", "journal") and arg.startswith("/"):
            sockets: dict[str, Any] = {f"{name}_socket": arg}
            hooks = replace(hooks, **sockets)
        else:
            raise HookError(f"{ENV}: unknown test hook {item!r}")
    return hooks


def _is_handler_line(arg: str) -> bool:
    handler, _, line = arg.partition(":")
    return handler.isidentifier() and line.isdigit() and int(line) >= 1


def from_environment(environ: Mapping[str, str] = os.environ) -> TestHooks:
    """The hooks set in the environment: read once, when lockfs starts."""
    return parse(environ.get(ENV, ""))
