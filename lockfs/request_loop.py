"""A cheaper wait for the next FUSE request inside pyfuse3's own main loop.

pyfuse3's request loop waits for ``/dev/fuse`` with ``trio.lowlevel.wait_readable`` under a
``trio.Lock`` before every request: two passes through trio's scheduler, an ``epoll_ctl`` and
one or two ``epoll_wait`` calls per request, even when the next request is already queued.
pyfuse3 looks both up through its module attribute ``trio`` (the seam its own asyncio mode
replaces), so :func:`install` puts a thin stand-in there that

* answers ``wait_readable`` at once when a zero-timeout ``poll`` says a request is waiting,
  and otherwise (and at least every :data:`YIELD_EVERY` requests or :data:`YIELD_AFTER`
  seconds, whichever comes first) waits the trio way, so the other tasks (reclaim, signals,
  control socket, the watchdog's heartbeat) and cancellation get their turn within a few
  milliseconds under full load, however long each request takes;
* counts its calls (:attr:`RequestLoop.passes`): pyfuse3's worker calls ``wait_readable`` once
  before reading each request, after the previous one was answered, so the count moving means
  requests complete. The hang watchdog (lockfs.watchdog) takes it as progress next to its
  heartbeat, so a flood of slow but valid requests never looks like a stopped loop;
* hands out a lock whose uncontended acquire and release are a flag (no scheduler pass, no
  ``trio.Lock`` bookkeeping).

Everything else pyfuse3 asks of ``trio`` goes to trio itself. Works with pyfuse3 3.2 to 3.5,
which use the same names.
"""

from __future__ import annotations

import select
import types
from time import monotonic
from typing import Any

import pyfuse3
import trio

#: Requests answered in a row without a pass through trio's scheduler, at most: at 10 to 50 µs
#: per request, the other tasks wait at most a few milliseconds. (16 cost measurably more CPU
#: per hot cycle: one scheduler pass costs as much as several requests.)
YIELD_EVERY = 64
#: Seconds of requests answered in a row without a pass through trio's scheduler, at most:
#: slow requests (a READDIR of a large directory) reach it long before :data:`YIELD_EVERY`.
YIELD_AFTER = 0.005


class _Lock:
    """A lock for ``async with`` whose uncontended acquire and release are a flag.

    pyfuse3 holds its read lock around every request read, so ``trio.Lock``'s checks
    (``current_task()``, KeyboardInterrupt protection, ``ParkingLot.__bool__``) cost about a
    microsecond per request although, with lockfs's one worker task, nobody ever waits.
    Contended, a task parks and the holder hands the lock over on release, as
    ``trio.Lock`` does (fair, FIFO); a waiter cancelled while parked never owns it.
    """

    def __init__(self) -> None:
        self._held = False
        #: Tasks that called ``park`` and have not returned from it (a cancelled one leaves
        #: the lot at once but counts until it runs again; release copes with that).
        self._waiting = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        self._waiting += 1
        try:
            await self._lot.park()  # returns once the holder handed the lock to this task
        finally:
            self._waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        if self._waiting and self._lot.unpark(count=1):
            return  # handed over: still held, now by the task just woken
        self._held = False


class RequestLoop:
    """``wait_readable`` that returns at once when the descriptor is readable already, and
    counts its calls."""

    def __init__(self) -> None:
        self._polls: dict[int, Any] = {}
        self._budget = YIELD_EVERY
        self._yield_at = 0.0
        #: Calls so far: one per request read (read by the watchdog's thread; one increment
        #: under the GIL per request).
        self.passes = 0

    async def wait_readable(self, fd: int) -> None:
        self.passes += 1
        poller = self._polls.get(fd)
        if poller is None:
            poller = self._polls[fd] = select.poll()
            poller.register(fd, select.POLLIN)
        if self._budget > 0 and monotonic() < self._yield_at and poller.poll(0):
            self._budget -= 1
            return
        self._budget = YIELD_EVERY
        await trio.lowlevel.wait_readable(fd)
        self._yield_at = monotonic() + YIELD_AFTER


class _Lowlevel(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class _Trio(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> RequestLoop:
    """Make pyfuse3 use the cheaper wait (call before ``pyfuse3.init``); the wait's counter."""
    loop = RequestLoop()
    pyfuse3.trio = _Trio(  # type: ignore[attr-defined]
        Lock=_Lock, lowlevel=_Lowlevel(wait_readable=loop.wait_readable)
    )
    return loop
