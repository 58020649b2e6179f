"""The invalidation thread: sends what it is given in order, never blocks the submitter, and
ends at stop() even while the kernel keeps it waiting."""

from __future__ import annotations

import sys
import threading
import time

from support import wait_for

from lockfs.invalidator import SWITCH_INTERVAL, EntryInvalidator


def test_entries_are_sent_in_order_and_enoent_is_ignored() -> None:
    sent: list[tuple[int, bytes]] = []

    def notify(parent: int, name: bytes) -> None:
        if name == b"gone":
            raise FileNotFoundError  # the kernel had dropped it already
        sent.append((parent, name))

    invalidator = EntryInvalidator(notify)
    invalidator.start()
    invalidator.submit([(1, b"a"), (1, b"gone"), (2, b"b")])
    invalidator.submit([(3, b"c")])
    wait_for(lambda: len(sent) == 3, 5, "three invalidations sent")
    assert sent == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert invalidator.stop(timeout=5)


def test_a_blocked_notification_blocks_neither_submit_nor_stop() -> None:
    """The kernel may hold a notification until a request in the same directory is answered:
    the submitter keeps going, and stop() gives up waiting after its timeout."""
    entered, release = threading.Event(), threading.Event()
    sent: list[bytes] = []

    def notify(parent: int, name: bytes) -> None:
        entered.set()
        release.wait()
        sent.append(name)

    invalidator = EntryInvalidator(notify)
    invalidator.start()
    invalidator.submit([(1, b"blocked")])
    assert entered.wait(5)
    start = time.monotonic()
    for i in range(1000):
        invalidator.submit([(1, b"%d" % i)])
    assert time.monotonic() - start < 1.0
    assert invalidator.stop(timeout=0.1) is False
    release.set()
    wait_for(lambda: not invalidator._thread.is_alive(), 5, "the thread to end")
    assert sent == [b"blocked"], "entries queued before stop() were sent after it"


def test_switch_interval_is_short_while_the_thread_runs() -> None:
    """The thread must get the GIL within SWITCH_INTERVAL under load (a busy trio thread
    hardly blocks), so start() shortens the interpreter's switch interval and stop() puts the
    previous one back."""
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL
    invalidator = EntryInvalidator(notify=lambda parent, name: None)
    invalidator.start()
    try:
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    finally:
        assert invalidator.stop(timeout=5)
    assert sys.getswitchinterval() == before
