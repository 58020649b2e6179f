"""The cheaper request wait: at once when a request is queued, trio's wait otherwise, and a
pass through trio's scheduler at least every YIELD_EVERY requests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyfuse3
import pytest
import trio
import trio.testing

from lockfs import request_loop


@pytest.fixture
def shim(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """pyfuse3's ``trio`` as request_loop installs it (restored afterwards)."""
    monkeypatch.setattr(pyfuse3, "trio", vars(pyfuse3)["trio"])
    request_loop.install()
    yield vars(pyfuse3)["trio"]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_everything_else_is_trio(shim: object) -> None:
    assert shim.open_nursery is trio.open_nursery  # type: ignore[attr-defined]
    assert shim.ClosedResourceError is trio.ClosedResourceError  # type: ignore[attr-defined]
    assert shim.lowlevel.current_task is trio.lowlevel.current_task  # type: ignore[attr-defined]


async def test_readable_fd_is_served_without_scheduler_passes(
    shim: object, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a request is queued, YIELD_EVERY waits in a row return without letting another
    task run; the next one goes through trio's own wait (so other tasks and cancellation get
    their turn). Which task of a scheduler batch runs first is trio's random choice, so the
    pass through trio is observed by counting trio's waits, not by the other task's progress."""
    read_end, write_end = pipe
    os.write(write_end, b"x")
    trio_waits = 0
    trio_wait_readable = trio.lowlevel.wait_readable

    async def counted_wait_readable(fd: int) -> None:
        nonlocal trio_waits
        trio_waits += 1
        await trio_wait_readable(fd)

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counted_wait_readable)
    monkeypatch.setattr(request_loop, "YIELD_AFTER", 3600.0)  # only the count matters here
    wait_readable = shim.lowlevel.wait_readable  # type: ignore[attr-defined]
    await wait_readable(read_end)  # the first wait goes through trio: a known state
    assert trio_waits == 1
    trio_waits = 0
    ran = 0

    async def other_task() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.sleep(0)
        start = ran
        for _ in range(request_loop.YIELD_EVERY):
            await wait_readable(read_end)
        assert ran == start, "a fast wait let another task run"
        assert trio_waits == 0
        await wait_readable(read_end)
        assert trio_waits == 1, "the budget was spent but the wait did not go through trio"
        nursery.cancel_scope.cancel()


async def test_slow_requests_pass_through_trio_by_time(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that take long (a READDIR of a huge directory) reach YIELD_AFTER long before
    YIELD_EVERY: the wait then goes through trio although a request is queued. Every call is
    counted (the watchdog's sign that requests complete)."""
    read_end, write_end = pipe
    os.write(write_end, b"x")
    now = [100.0]
    monkeypatch.setattr(request_loop, "monotonic", lambda: now[0])
    trio_waits = 0
    trio_wait_readable = trio.lowlevel.wait_readable

    async def counted_wait_readable(fd: int) -> None:
        nonlocal trio_waits
        trio_waits += 1
        await trio_wait_readable(fd)

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counted_wait_readable)
    loop = request_loop.RequestLoop()
    await loop.wait_readable(read_end)  # through trio: the time window opens
    assert trio_waits == 1
    await loop.wait_readable(read_end)  # a request served at once
    assert trio_waits == 1
    now[0] += request_loop.YIELD_AFTER  # a slow request: the window is over
    await loop.wait_readable(read_end)
    assert trio_waits == 2, "a request queued after YIELD_AFTER skipped trio's scheduler"
    await loop.wait_readable(read_end)
    assert trio_waits == 2
    assert loop.passes == 4


async def test_idle_fd_waits_for_data(shim: object, pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    wait_readable = shim.lowlevel.wait_readable  # type: ignore[attr-defined]
    with trio.move_on_after(0.05) as scope:
        await wait_readable(read_end)
    assert scope.cancelled_caught, "returned although nothing was readable"

    async def write_later() -> None:
        await trio.sleep(0.01)
        os.write(write_end, b"x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_later)
        with trio.fail_after(5):
            await wait_readable(read_end)


async def test_lock_excludes_and_hands_over(shim: object) -> None:
    lock = shim.Lock()  # type: ignore[attr-defined]
    order = []

    async def holder(name: str) -> None:
        async with lock:
            order.append(f"{name} in")
            await trio.sleep(0.01)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, "a")
        nursery.start_soon(holder, "b")
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def test_lock_hands_over_in_order_and_skips_cancelled_waiters(shim: object) -> None:
    """Three waiters behind a holder get the lock in the order they came; one cancelled
    while waiting never gets it, and the lock is free again at the end."""
    lock = shim.Lock()  # type: ignore[attr-defined]
    order: list[str] = []
    release = trio.Event()

    async def holder() -> None:
        async with lock:
            order.append("holder")
            await release.wait()

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "a")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        cancel_scope = trio.CancelScope()

        async def cancellable() -> None:
            with cancel_scope:
                await waiter("b-cancelled")

        nursery.start_soon(cancellable)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "c")
        await trio.testing.wait_all_tasks_blocked()
        cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == ["holder", "a", "b", "c"]
    async with lock:  # free again: taken without waiting
        pass
