"""The thread that asks the kernel to drop directory entries, a list at a time.

The kernel carries out an entry invalidation only once it holds the parent directory's inode
lock, which a request in flight in that directory (LOOKUP, CREATE, RENAME, ...) holds until the
daemon has answered it. So the notification must never be sent from the trio thread that
answers requests: it would wait for itself. One thread of this module sends them with
pyfuse3's synchronous ``invalidate_entry`` (which releases the GIL while the kernel works),
and the trio thread hands it one list per reclaim pass with a non-blocking queue put, instead
of one queue item, thread wake-up and GIL round trip per entry as ``invalidate_entry_async``
costs.

The trio thread never waits for this thread, so a notification blocked in the kernel only
delays the ones queued behind it until the request holding the lock has been answered.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable, Sequence

import pyfuse3

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


class EntryInvalidator:
    """A worker thread sending entry invalidations in the order they were submitted."""

    def __init__(self, notify: Callable[[int, bytes], None] = pyfuse3.invalidate_entry) -> None:
        self._notify = notify
        self._queue: queue.SimpleQueue[Sequence[Entry] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lockfs-invalidate", daemon=True)
        self._stopping = False
        self._previous_switch_interval: float | None = None

    def start(self) -> None:
        """Start the thread, and shorten the interpreter's switch interval (see
        :data:`SWITCH_INTERVAL`) until :meth:`stop`."""
        self._previous_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread.start()

    def submit(self, entries: Sequence[Entry]) -> None:
        """Queue ``(parent inode, name)`` entries for invalidation; never blocks."""
        self._queue.put(entries)

    def stop(self, timeout: float) -> bool:
        """Drop what is still queued, end the thread; whether it ended within ``timeout``.

        Called once the FUSE session is over. A thread still blocked in the kernel (waiting
        for a request nobody answers any more) is a daemon thread: it cannot keep the process
        from exiting, and process exit closes /dev/fuse, which releases it.
        """
        self._stopping = True
        if self._previous_switch_interval is not None:
            sys.setswitchinterval(self._previous_switch_interval)
            self._previous_switch_interval = None
        if not self._thread.is_alive():
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        notify = self._notify
        while (entries := self._queue.get()) is not None:
            for parent, name in entries:
                if self._stopping:
                    break
                try:
                    notify(parent, name)
                except FileNotFoundError:
                    pass  # the kernel has no such entry (any more): nothing to drop
                except OSError as exc:
                    log.error("cannot invalidate entry %r in inode %d: %s", name, parent, exc)
