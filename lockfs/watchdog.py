"""The hang watchdog: a stuck daemon fails closed within a bound instead of hanging its callers.

Every process that touches the lock directory waits in the kernel until the daemon answers; a
handler that blocks or spins (a bug, a deadlock in the kernel, a stuck system call) would hang
them all, and lock timeouts cannot help: they only interrupt ``flock``, not the OPEN or LOOKUP
before it. So an OS thread, independent of the trio loop, watches two signs of progress:

* *loop progress*: a counter that moves when a request completes (the request loop counts
  every wait for the next request, lockfs.request_loop) or when a trio task beats (every
  ``interval / 2``, also while no request comes). It stops when the loop stops (a handler
  blocked in a system call or spinning); a flood of slow but valid requests keeps it moving,
  however long the loop goes without a pass through trio's scheduler;
* the *request in service*: the adapter stores each request's arguments (one tuple, a new
  object per request) before running its handler and clears them afterwards. The same object
  seen for ``hang_timeout`` means one request has been in service that long, also when the
  loop itself still runs (a handler awaiting something that never comes, with the single
  worker task blocked). Identity is safe: the watchdog keeps a reference to the tuple it saw,
  so no later request's tuple can reuse its address.

Either stuck for ``hang_timeout`` seconds (as observed by the watchdog, which samples every
``interval = min(hang_timeout / 10, 1 s)``), and the daemon fails closed (:class:`FailClosed`,
also what any other unrecoverable fault calls):

1. one log line names what was stuck and for how long (the request, its arguments and its
   caller), then one record holds every thread's stack; both are written by a helper thread
   and waited for at most :data:`LOG_GRACE` seconds, in case the stuck thread holds the
   logger's lock;
2. the FUSE connection is aborted through fusectl (``/sys/fs/fuse/connections/<dev>/abort``):
   every waiting and future request fails at once (ECONNABORTED, then ENOTCONN). Where
   fusectl is not mounted, a short-lived child mounts it in a private mount namespace (no trace
   on the host) to write the same file. Aborting matters when the stuck thread sits in an
   uninterruptible wait (a synchronous invalidation from a handler waits for a directory lock
   held by a caller that waits for this very daemon): such a process cannot exit until the
   connection is aborted;
3. the process ends (``os._exit(EXIT_FAILED_CLOSED)``); the kernel aborts the connection
   anyway when the last descriptor of ``/dev/fuse`` goes. The mount then answers ENOTCONN like
   a crashed daemon's: recovery is a restart of the mount unit.

Who watches the watchdog: the trio task that beats also checks, at every beat, that the
watchdog thread is alive and has sampled within ``hang_timeout``; if not, it logs why and fails
closed itself. Time the watchdog thread itself did not run (a sample later than its interval:
the whole process stopped by SIGSTOP or starved of CPU, a VM paused, the interpreter lock held
by a full garbage collection of a large table) is not counted against the loop, which did not
run either; the trio side excuses its own late checks the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from . import logs

log = logging.getLogger(__name__)

#: Exit status of a daemon that failed closed: stuck, or an internal fault (EX_SOFTWARE).
EXIT_FAILED_CLOSED = 70
EXIT_HUNG = EXIT_FAILED_CLOSED
#: How long failing closed waits for its log records before it aborts anyway.
LOG_GRACE = 2.0
#: How long the abort through fusectl may take.
ABORT_TIMEOUT = 5.0
FUSECTL = "/sys/fs/fuse/connections"

#: Run by the child that aborts the connection where fusectl is not mounted: a private mount
#: namespace (propagation private, so nothing shows on the host), fusectl mounted in it, then
#: the connection's abort file written.
_PRIVATE_ABORT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x20000, 0x4000, 0x40000
if (libc.unshare(CLONE_NEWNS)
        or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        or libc.mount(b"fusectl", sys.argv[1].encode(), b"fusectl", 0, None)):
    sys.exit(os.strerror(ctypes.get_errno()))
with open(os.path.join(sys.argv[1], sys.argv[2], "abort"), "w") as abort:
    abort.write("1")
"""


class RequestState(Protocol):
    """What the adapter exposes about the request it is serving (see lockfs.fuse_ops)."""

    serving_name: str
    serving_args: tuple[Any, ...] | None


@dataclass(frozen=True)
class Stall:
    """What the watchdog found stuck: a request (its arguments) or, with ``args`` None, the
    event loop outside any request; ``seconds`` is a lower bound."""

    seconds: float
    args: tuple[Any, ...] | None = None


class StallDetector:
    """Decides from periodic samples whether the loop or one request is stuck.

    ``observe`` is called every ``interval`` seconds with the current monotonic time, the
    loop's progress counter (heartbeats plus requests completed) and the arguments of the
    request in service (or None).
    """

    def __init__(self, timeout: float, interval: float) -> None:
        self.timeout = timeout
        self.interval = interval
        self._last_sample: float | None = None
        self._progress = -1
        self._loop_since = 0.0
        self._request: tuple[Any, ...] | None = None
        self._request_since = 0.0

    def observe(self, now: float, progress: int, serving: tuple[Any, ...] | None) -> Stall | None:
        if self._last_sample is not None:
            # Time this sample came late is time the watchdog did not run: the process was
            # stopped or starved, or the interpreter lock held (a garbage collection of a
            # large table takes it for tens of milliseconds, more on a loaded machine). The
            # loop did not run either: not counted against it.
            lost = now - self._last_sample - self.interval
            if lost > 0:
                self._loop_since += lost
                self._request_since += lost
        self._last_sample = now
        if progress != self._progress:
            self._progress = progress
            self._loop_since = now
        if serving is None or serving is not self._request:
            self._request = serving
            self._request_since = now
        # A loop that stopped while a request is in service stopped inside that request (one
        # worker task; the adapter clears the request before anything else runs), even if
        # the last progress was seen before the request was.
        stuck_since = self._loop_since
        if self._request is not None:
            stuck_since = min(stuck_since, self._request_since)
        if now - stuck_since >= self.timeout:
            return Stall(now - stuck_since, args=self._request)
        return None


def check_interval(timeout: float) -> float:
    """How often the watchdog samples (the heartbeat runs twice as often)."""
    return min(timeout / 10, 1.0)


def fusectl_name(dev: int) -> str:
    """The fusectl directory of the FUSE connection whose mount has device number ``dev``
    (the kernel names it after its own dev_t: major << 20 | minor)."""
    return str((os.major(dev) << 20) | os.minor(dev))


def describe_request(ops: object, name: str, args: tuple[Any, ...]) -> str:
    """``lookup(parent_inode=1, name=b'x', ctx=pid 42 uid 0)``: the handler's parameter names
    with the values it was called with (a request context as its caller's pid and uid)."""
    try:
        params = list(inspect.signature(getattr(type(ops), name)).parameters)[1:]
    except (AttributeError, TypeError, ValueError):
        params = []
    parts = []
    for i, value in enumerate(args):
        if hasattr(value, "pid") and hasattr(value, "uid"):
            text = f"pid {value.pid} uid {value.uid}"
        else:
            text = repr(value)
            if len(text) > 200:
                text = text[:200] + "…"
        parts.append(f"{params[i]}={text}" if i < len(params) else text)
    return f"{name}({', '.join(parts)})"


def thread_stacks() -> str:
    """Every thread's stack, innermost call last, as one text (for one log record; works with
    any log handler, unlike faulthandler, which needs a file descriptor)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = ["stacks of the daemon's threads:"]
    for ident, frame in sys._current_frames().items():
        parts.append(f"thread {names.get(ident, '?')} ({ident}), innermost call last:")
        parts.append("".join(traceback.format_stack(frame)).rstrip("\n"))
    return "\n".join(parts)


class FailClosed:
    """Ends a daemon that can no longer be trusted to serve: logs why (and every thread's
    stack), aborts its FUSE connection and exits with :data:`EXIT_FAILED_CLOSED`.

    Call it with the reason, from any thread: ``fail_closed("daemon hung: ...")`` (and the
    exception, if one is the reason, for its traceback in the same record). It does not
    return (unless a test replaced ``exit``); a second caller waits until the first has ended
    the process. The mount then answers ENOTCONN, never a table that may disagree with the
    kernel.
    """

    def __init__(
        self,
        mountpoint: str,
        device: Callable[[], int],
        *,
        abort: bool = True,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.mountpoint = mountpoint
        #: Finds the mount's device number without touching the mount (from mountinfo).
        self._device = device
        #: Whether to abort through fusectl before exiting (tests turn it off to show that
        #: ending the process alone aborts the connection).
        self.abort = abort
        self._exit = exit
        self._connection: str | None = None
        self._lock = threading.Lock()

    def find_connection(self) -> None:
        """Note the mount's fusectl connection (once mounted): found at failure time, the mount
        table could have changed."""
        try:
            self._connection = fusectl_name(self._device())
        except OSError as exc:
            log.warning("FUSE connection of %s not found (%s)", self.mountpoint, exc)

    def line(self, reason: str) -> str:
        """The one log line: ``reason``, what is done about it, and how to recover."""
        return (
            f"{reason}; failing closed: aborting the FUSE connection of {self.mountpoint} "
            f"(callers get ENOTCONN) and exiting with status {EXIT_FAILED_CLOSED}; remount it "
            f"(stop the lock holders, umount, mount again)"
        )

    def __call__(self, reason: str, exc: BaseException | None = None) -> None:
        with self._lock:
            line = self.line(reason)
            stacks = thread_stacks()

            def emit() -> None:
                log.critical(line, exc_info=exc)  # with its traceback, if an exception
                log.error(stacks)
                logs.flush()

            writer = threading.Thread(target=emit, name="lockfs-fail-closed-log", daemon=True)
            writer.start()
            writer.join(LOG_GRACE)
            if self.abort and self._connection is None:
                self.find_connection()  # failing before serving began
            if self.abort and self._connection is not None:
                abort_connection(self._connection)
            self._exit(EXIT_FAILED_CLOSED)


class Watchdog:
    """Watches one daemon's loop and requests from an OS thread; fails closed on a hang.

    ``progress`` reads the request loop's count of completed requests; ``fault`` (test hooks
    only) is called at every sample and may raise or block, as a bug in this thread would.
    """

    def __init__(
        self,
        timeout: float,
        requests: RequestState,
        fail_closed: Callable[[str], None],
        *,
        progress: Callable[[], int] = lambda: 0,
        fault: Callable[[], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.interval = check_interval(timeout)
        self.requests = requests
        self.fail_closed = fail_closed
        self._progress = progress
        self._fault = fault
        self.detector = StallDetector(timeout, self.interval)
        #: Incremented by the heartbeat task while the trio loop runs.
        self.beats = 0
        #: When the thread last sampled, and when the trio side last checked it (monotonic).
        self.sampled_at = 0.0
        self._checked_at: float | None = None
        #: The sample the trio side last saw, and the time since then it excuses.
        self._sample_seen = 0.0
        self._excused = 0.0
        self._stop = threading.Event()
        self._firing = False
        self._thread: threading.Thread | None = None

    async def heartbeat(self) -> None:
        """Trio task: show the watchdog that the loop runs, and check that the watchdog
        thread does (:meth:`check_thread`)."""
        while True:
            self.beats += 1
            self.check_thread(time.monotonic())
            await trio.sleep(self.interval / 2)

    def start(self) -> None:
        self.sampled_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lockfs-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def check_thread(self, now: float) -> None:
        """From the trio side: fail closed if the watchdog thread ended or has not sampled for
        ``hang_timeout`` + two intervals (time this check itself came late is not counted:
        nothing in the process ran)."""
        thread = self._thread
        if thread is None or self._stop.is_set() or self._firing:
            return
        if self._checked_at is not None:
            lost = now - self._checked_at - self.interval / 2
            if lost > 0:
                self._excused += lost
        self._checked_at = now
        if self.sampled_at != self._sample_seen:  # it sampled since: nothing to excuse
            self._sample_seen, self._excused = self.sampled_at, 0.0
        silent = now - self.sampled_at - self._excused
        if not thread.is_alive():
            self._firing = True
            self.fail_closed("the hang watchdog thread has ended (see the error logged before)")
        elif silent >= self.timeout + 2 * self.interval:
            self._firing = True
            self.fail_closed(
                f"the hang watchdog thread has not run for {silent:.1f} s "
                f"(hang_timeout={self.timeout:g})"
            )

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                if self._fault is not None:
                    self._fault()
                now = time.monotonic()
                self.sampled_at = now
                progress = self.beats + self._progress()
                stall = self.detector.observe(now, progress, self.requests.serving_args)
                if stall is not None and not self._stop.is_set():
                    self._firing = True
                    self.fail_closed(self.message(stall))
                    return
        except BaseException:
            log.exception("internal error in the hang watchdog thread; it has ended")

    def message(self, stall: Stall) -> str:
        """Why the daemon fails closed: the stuck request with its arguments, or the loop."""
        if stall.args is not None:
            request = describe_request(self.requests, self.requests.serving_name, stall.args)
            what = f"request {request} has been in service for {stall.seconds:.1f} s"
        else:
            what = f"the event loop has made no progress for {stall.seconds:.1f} s"
        return f"daemon hung: {what} (hang_timeout={self.timeout:g})"


def abort_connection(connection: str) -> bool:
    """Abort FUSE connection ``connection`` through fusectl, mounting it privately if it is
    not mounted here. Whether the abort file was written."""
    abort = os.path.join(FUSECTL, connection, "abort")
    if os.path.exists(abort):
        with contextlib.suppress(OSError), open(abort, "w") as file:
            file.write("1")
            return True
        return False
    try:
        child = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PRIVATE_ABORT, FUSECTL, connection],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=ABORT_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return child.returncode == 0
