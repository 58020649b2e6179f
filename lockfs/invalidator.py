"""The thread that asks the kernel to drop directory entries, a list at a time, and its keeper.

The kernel carries out an entry invalidation only once it holds the parent directory's inode
lock, which a request in flight in that directory (LOOKUP, CREATE, RENAME, ...) holds until the
daemon has answered it. So the notification must never be sent from the trio thread that
answers requests: it would wait for itself. One thread of this module sends them with
pyfuse3's synchronous ``invalidate_entry`` (which releases the GIL while the kernel works),
and the trio thread hands it one list per reclaim pass with a non-blocking queue put, instead
of one queue item, thread wake-up and GIL round trip per entry as ``invalidate_entry_async``
costs.

The trio thread never waits for this thread, and checks it every :data:`CHECK_INTERVAL`
(:meth:`EntryInvalidator.watch`), so that reclaim never stops silently:

* **A stuck invalidation.** Anyone who can list a directory can hold its lock for as long as
  they like (a ``getdents`` into a page of their own FUSE file that never answers), and an
  invalidation in that directory then waits in the kernel, uninterruptibly. One that has not
  returned after :data:`STUCK_AFTER` seconds is logged once with its directory, shown in the
  status, and left behind: a fresh thread takes over the rest of the queue, and entries of that
  directory are held back (not sent) until the stuck one returns, when they are queued again.
  At most :data:`MAX_STUCK` threads are left stuck at once; one more fails the mount closed.
* **A dead thread.** Any exception that ends the thread (a bug: the kernel's errors are
  OSError, logged per entry) is logged with its traceback by the thread itself; the keeper
  starts a new thread for the rest of the queue, at most :data:`MAX_RESTARTS` times within
  :data:`RESTART_WINDOW`, after which it fails the mount closed.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyfuse3
import trio

from .health import FailureBudget

log = logging.getLogger(__name__)

Entry = tuple[int, bytes]

#: The interpreter's switch interval while the thread runs (seconds; CPython's default is
#: 5 ms). A thread waiting for the GIL gets it when the holder blocks, or after this interval.
#: Under full load the trio thread hardly blocks, and each notification hands the GIL back:
#: at 5 ms this thread sent a few hundred notifications a second while four callers made
#: 5,000 entries a second to invalidate, so the node table grew for as long as the load lasted
#: (75,000 nodes after 100 s). At 0.5 ms it keeps up (about 32,000 nodes throughout: what the
#: reclaim delays keep). The interval only matters while some thread waits for the GIL.
SWITCH_INTERVAL = 0.0005
#: An invalidation that has not returned after this many seconds is stuck. A request in its
#: directory holds the lock only while the daemon serves it (microseconds), so seconds mean
#: something outside the daemon holds the directory.
STUCK_AFTER = 5.0
#: Threads left stuck in the kernel at once, at most; one more fails the mount closed.
MAX_STUCK = 4
#: Deaths of the thread that are restarted within :data:`RESTART_WINDOW` seconds, at most.
MAX_RESTARTS = 3
RESTART_WINDOW = 600.0
#: How often the trio side checks the thread (seconds).
CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class StuckInvalidation:
    """An invalidation left behind: its directory (a path, as when it got stuck), the entry,
    and since when (monotonic seconds)."""

    directory: str
    name: bytes
    since: float


def _stack_of(thread: threading.Thread) -> str:
    """The thread's stack, innermost call last (where it waits)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return f"(no stack: thread {thread.name} has ended)"
    stack = "".join(traceback.format_stack(frame)).rstrip("\n")
    return f"stack of that thread, innermost call last:\n{stack}"


class _Worker:
    """One invalidation thread and the entry it is sending (read and changed under the
    invalidator's lock)."""

    __slots__ = ("abandoned", "batch", "index", "sending", "since", "thread")

    def __init__(self, run: Callable[[_Worker], None]) -> None:
        self.thread = threading.Thread(
            target=run, args=(self,), name="lockfs-invalidate", daemon=True
        )
        #: The list being sent and the index of the entry being sent (or last sent).
        self.batch: Sequence[Entry] = ()
        self.index = 0
        #: Whether it is inside the notification, and since when.
        self.sending = False
        self.since = 0.0
        #: Left behind stuck: once the notification returns, the thread ends.
        self.abandoned = False


class EntryInvalidator:
    """Sends entry invalidations in the order they were submitted, from one working thread at
    a time; replaces a thread that died or got stuck (see the module docstring).

    ``path_of`` names a directory inode for the log and status (called from the trio thread
    only); ``fail_closed`` ends the daemon when the bounds are exceeded.
    """

    def __init__(
        self,
        notify: Callable[[int, bytes], None] = pyfuse3.invalidate_entry,
        *,
        path_of: Callable[[int], str] = str,
        fail_closed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notify = notify
        self._path_of = path_of
        self._fail_closed = fail_closed
        self._clock = clock
        self._queue: queue.SimpleQueue[Sequence[Entry] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker = _Worker(self._run)
        #: Directory inode → the invalidation stuck in it (and the thread it holds).
        self._stuck: dict[int, tuple[StuckInvalidation, _Worker]] = {}
        #: Directory inode → entries held back while it is stuck.
        self._held: dict[int, list[Entry]] = {}
        self._restarts = FailureBudget((), limit=MAX_RESTARTS, window=RESTART_WINDOW)
        self._stopping = False
        self._previous_switch_interval: float | None = None
        #: Exceptions that ended a thread (each logged with its traceback; the working one is
        #: restarted).
        self.faults = 0
        #: Invalidations that did not return within STUCK_AFTER, since the start.
        self.stuck_total = 0

    def start(self) -> None:
        """Start the thread, and shorten the interpreter's switch interval (see
        :data:`SWITCH_INTERVAL`) until :meth:`stop`."""
        self._previous_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._worker.thread.start()

    def submit(self, entries: Sequence[Entry]) -> None:
        """Queue ``(parent inode, name)`` entries for invalidation; never blocks."""
        self._queue.put(entries)

    def stuck(self) -> list[StuckInvalidation]:
        """The invalidations stuck now, oldest first."""
        with self._lock:
            return sorted((entry for entry, _ in self._stuck.values()), key=lambda s: s.since)

    def stop(self, timeout: float) -> bool:
        """Drop what is still queued, end the thread; whether no thread is left inside a
        notification (the working one ended within ``timeout`` and none is stuck).

        Called once the FUSE session is over. A thread still blocked in the kernel (waiting
        for a request nobody answers any more) is a daemon thread: it cannot keep the process
        from exiting, and process exit closes /dev/fuse, which releases it.
        """
        self._stopping = True
        if self._previous_switch_interval is not None:
            sys.setswitchinterval(self._previous_switch_interval)
            self._previous_switch_interval = None
        thread = self._worker.thread
        if thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        with self._lock:
            stuck = [worker for _, worker in self._stuck.values() if worker.thread.is_alive()]
        return not thread.is_alive() and not stuck

    # ------------------------------------------------------------------ the thread

    def _run(self, worker: _Worker) -> None:
        try:
            while not self._stopping:
                entries = self._queue.get()
                if entries is None or not self._send(worker, entries):
                    return
        except BaseException:
            with self._lock:
                rest = worker.batch[worker.index + 1 :] if not worker.abandoned else ()
                worker.sending = False
                self.faults += 1
            if rest:
                self._queue.put(rest)
            log.exception(
                "internal error in the invalidation thread; it has ended (a new one takes "
                "over the %d entry lists queued)",
                self._queue.qsize(),
            )

    def _send(self, worker: _Worker, entries: Sequence[Entry]) -> bool:
        """Send ``entries`` in order; False once this thread was left behind stuck."""
        notify, lock, clock = self._notify, self._lock, self._clock
        for index, entry in enumerate(entries):
            if self._stopping:
                return True
            parent = entry[0]
            with lock:
                if parent in self._stuck:  # sent once the stuck one returns
                    self._held.setdefault(parent, []).append(entry)
                    continue
                worker.batch, worker.index = entries, index
                worker.since = clock()
                worker.sending = True
            abandoned = False
            try:
                notify(parent, entry[1])
            except FileNotFoundError:
                pass  # the kernel has no such entry (any more): nothing to drop
            except OSError as exc:
                log.error("cannot invalidate entry %r in inode %d: %s", entry[1], parent, exc)
            finally:
                with lock:
                    worker.sending = False
                    abandoned = worker.abandoned
                if abandoned:  # also when it raised: its directory is free again
                    self._returned(parent)
            if abandoned:
                return False
        return True

    def _returned(self, parent: int) -> None:
        """A stuck invalidation returned (in its own thread): its directory's entries held
        back meanwhile are queued again, and the thread ends."""
        with self._lock:
            stuck, _ = self._stuck.pop(parent)
            held = self._held.pop(parent, [])
        if held:
            self._queue.put(held)
        log.warning(
            "the entry invalidation in %s returned after %.1f s; reclaim goes on there "
            "(%d entries held back are sent now)",
            stuck.directory,
            self._clock() - stuck.since,
            len(held),
        )

    # ------------------------------------------------------------------ the keeper

    async def watch(self, interval: float = CHECK_INTERVAL) -> None:
        """Trio task: :meth:`check` the thread every ``interval`` seconds."""
        while True:
            await trio.sleep(interval)
            self.check()

    def check(self) -> None:
        """From the trio thread: restart a thread that died, leave behind one that is stuck;
        fail closed beyond the bounds."""
        if self._stopping:
            return
        now = self._clock()
        worker = self._worker
        if not worker.thread.is_alive():
            self._restart(now)
            return
        with self._lock:
            if not worker.sending or now - worker.since < STUCK_AFTER:
                return
            # Still inside the same notification: leave it behind.
            parent, name = worker.batch[worker.index]
            stuck = StuckInvalidation(self._path_of(parent), name, worker.since)
            worker.abandoned = True
            self._stuck[parent] = (stuck, worker)
            count = len(self._stuck)
            rest = worker.batch[worker.index + 1 :]
        self.stuck_total += 1
        if rest:
            self._queue.put(rest)
        if count > MAX_STUCK:
            self._fail(
                f"{count} entry invalidations are stuck in the kernel (the latest in "
                f"{stuck.directory}, for {now - stuck.since:.1f} s): more than {MAX_STUCK}"
            )
            return
        self._worker = _Worker(self._run)
        self._worker.thread.start()
        log.error(
            "entry invalidation of %r in %s has not returned for %.1f s: something holds that "
            "directory's lock in the kernel (a process stuck while listing it?); its entries "
            "wait until it returns, reclaim goes on elsewhere from a new thread (%d of %d "
            "stuck threads allowed)\n%s",
            name,
            stuck.directory,
            now - stuck.since,
            count,
            MAX_STUCK,
            _stack_of(worker.thread),
        )

    def _restart(self, now: float) -> None:
        allowed = self._restarts.allows(now)
        self._restarts.record(now)
        failures = len(self._restarts.failures)
        if not allowed:
            self._fail(
                f"the invalidation thread failed {failures} times within "
                f"{RESTART_WINDOW:g} s (see the errors logged before)"
            )
            return
        self._worker = _Worker(self._run)
        self._worker.thread.start()
        log.warning(
            "invalidation thread restarted (%d of %d restarts allowed within %g s)",
            failures,
            MAX_RESTARTS,
            RESTART_WINDOW,
        )

    def _fail(self, reason: str) -> None:
        if self._fail_closed is not None:
            self._fail_closed(reason)
        else:
            log.critical("%s; reclaim has stopped", reason)
