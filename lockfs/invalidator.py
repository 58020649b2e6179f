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
import threading
from collections.abc import Callable, Sequence

import pyfuse3

log = logging.getLogger(__name__)

Entry = tuple[int, bytes]


class EntryInvalidator:
    """A worker thread sending entry invalidations in the order they were submitted."""

    def __init__(self, notify: Callable[[int, bytes], None] = pyfuse3.invalidate_entry) -> None:
        self._notify = notify
        self._queue: queue.SimpleQueue[Sequence[Entry] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lockfs-invalidate", daemon=True)
        self._stopping = False

    def start(self) -> None:
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
