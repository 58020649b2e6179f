"""The invalidation thread: sends what it is given in order, never blocks the submitter, ends
at stop() even while the kernel keeps it waiting; its keeper moves on from a stuck
invalidation and restarts a thread that died, within bounds, else fails closed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import HELPERS, Mount, wait_for

from lockfs import invalidator as invalidator_module
from lockfs.invalidator import (
    MAX_RESTARTS,
    MAX_STUCK,
    STUCK_AFTER,
    SWITCH_INTERVAL,
    EntryInvalidator,
)
from lockfs.metrics import prometheus_text
from lockfs.status import format_text


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
    wait_for(lambda: not invalidator._worker.thread.is_alive(), 5, "the thread to end")
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


class Clock:
    """Monotonic time that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Kernel:
    """Stands in for the kernel: records what was sent; entries named ``stuck*`` block until
    released, entries named ``bug`` raise (a bug in the thread, not an OSError)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.entered: list[bytes] = []
        self.release = threading.Event()

    def notify(self, parent: int, name: bytes) -> None:
        self.entered.append(name)
        if name.startswith(b"stuck"):
            self.release.wait()
        if name == b"bug":
            raise RuntimeError("a bug")
        self.sent.append((parent, name))

    def has_entered(self, count: int) -> Callable[[], bool]:
        """A condition: ``count`` notifications have begun."""
        return lambda: len(self.entered) >= count


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    k.release.set()


def keeper(kernel: Kernel, clock: Clock, failures: list[str]) -> EntryInvalidator:
    invalidator = EntryInvalidator(
        kernel.notify,
        path_of=lambda ino: f"/locks/dir{ino}",
        fail_closed=failures.append,
        clock=clock,
    )
    invalidator.start()
    return invalidator


def test_a_stuck_invalidation_is_left_behind_and_its_directory_waits(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    """Stuck for STUCK_AFTER in directory 7: logged once with the directory, listed as stuck;
    a new thread sends the rest (other directories at once, directory 7 held back), and when
    the stuck one returns, what was held back is sent."""
    clock, failures = Clock(), list[str]()
    invalidator = keeper(kernel, clock, failures)
    invalidator.submit([(7, b"stuck"), (7, b"same-dir"), (8, b"other-dir")])
    wait_for(lambda: kernel.entered == [b"stuck"], 5, "the notification to block")
    clock.now += STUCK_AFTER - 0.1
    invalidator.check()
    assert invalidator.stuck() == []  # not yet
    clock.now += 0.1
    with caplog.at_level(logging.ERROR):
        invalidator.check()
        invalidator.check()  # logged once
    (line,) = [r.getMessage() for r in caplog.records if r.name == "lockfs.invalidator"]
    assert line.startswith(
        "entry invalidation of b'stuck' in /locks/dir7 has not returned for 5.0 s"
    )
    assert "stack of that thread" in line and "in notify" in line
    assert [(s.directory, s.name) for s in invalidator.stuck()] == [("/locks/dir7", b"stuck")]
    assert invalidator.stuck_total == 1
    wait_for(lambda: (8, b"other-dir") in kernel.sent, 5, "the other directory's entry")
    invalidator.submit([(7, b"later"), (9, b"elsewhere")])
    wait_for(lambda: (9, b"elsewhere") in kernel.sent, 5, "another directory's entry")
    assert not any(parent == 7 for parent, _ in kernel.sent), "directory 7 was not held back"
    kernel.release.set()  # the kernel lets the stuck one go
    wait_for(lambda: invalidator.stuck() == [], 5, "the stuck invalidation to return")
    wait_for(
        lambda: (
            [e for e in kernel.sent if e[0] == 7]
            == [(7, b"stuck"), (7, b"same-dir"), (7, b"later")]
        ),
        5,
        "directory 7's entries, in order, once it returned",
    )
    assert failures == []
    assert invalidator.stop(timeout=5)


def test_more_stuck_threads_than_allowed_fail_closed(kernel: Kernel) -> None:
    clock, failures = Clock(), list[str]()
    invalidator = keeper(kernel, clock, failures)
    for n in range(MAX_STUCK + 1):
        invalidator.submit([(n, b"stuck%d" % n)])
        wait_for(kernel.has_entered(n + 1), 5, f"notification {n} to block")
        clock.now += STUCK_AFTER
        invalidator.check()
        assert len(failures) == (n == MAX_STUCK)
    assert failures[0].startswith(f"{MAX_STUCK + 1} entry invalidations are stuck in the kernel")
    assert invalidator.stop(timeout=0.1) is False  # threads are still inside notifications
    kernel.release.set()


def test_a_dead_thread_is_logged_and_restarted_for_the_rest(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception ends the thread: logged with its traceback; the keeper counts it and
    starts a new thread, which sends what was queued, the rest of the list included."""
    clock, failures = Clock(), list[str]()
    invalidator = keeper(kernel, clock, failures)
    first = invalidator._worker.thread
    with caplog.at_level(logging.WARNING):
        invalidator.submit([(1, b"a"), (1, b"bug"), (1, b"b")])
        invalidator.submit([(2, b"c")])
        wait_for(lambda: not first.is_alive(), 5, "the thread to die")
        invalidator.check()
    assert invalidator.faults == 1
    wait_for(lambda: sorted(kernel.sent) == [(1, b"a"), (1, b"b"), (2, b"c")], 5, "the rest")
    died = [r for r in caplog.records if r.getMessage().startswith("internal error in the inv")]
    assert len(died) == 1 and died[0].exc_info is not None
    assert any("invalidation thread restarted (1 of 3" in r.getMessage() for r in caplog.records)
    assert failures == []
    assert invalidator.stop(timeout=5)


def test_too_many_deaths_within_the_window_fail_closed(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, failures = Clock(), list[str]()
    invalidator = keeper(kernel, clock, failures)
    for _ in range(MAX_RESTARTS + 1):
        thread = invalidator._worker.thread
        invalidator.submit([(1, b"bug")])
        thread.join(5)
        assert not thread.is_alive()
        clock.now += 1
        invalidator.check()
    assert failures == [
        f"the invalidation thread failed {MAX_RESTARTS + 1} times within 600 s "
        "(see the errors logged before)"
    ]
    # Deaths further apart than the window are each restarted.
    failures.clear()
    later = keeper(kernel, clock, failures)
    for _ in range(MAX_RESTARTS + 2):
        thread = later._worker.thread
        later.submit([(1, b"bug")])
        thread.join(5)
        assert not thread.is_alive()
        clock.now += invalidator_module.RESTART_WINDOW / MAX_RESTARTS + 1
        later.check()
    assert failures == [] and later.faults == MAX_RESTARTS + 2
    assert later.stop(timeout=5)


# --- Real mounts -------------------------------------------------------------------------------


def gone(path: Path) -> bool:
    return not os.path.lexists(path)


def log_records(mnt: Mount, start: str) -> list[str]:
    return [line for line in mnt.log_text().splitlines() if start in line]


def test_a_stuck_invalidation_stops_reclaim_only_in_its_directory(
    make_mount: Any, tmp_path: Path
) -> None:
    """An invalidation in stuck/ does not return (the hook stands in for the kernel waiting on
    the directory's lock): after STUCK_AFTER it is logged once with the directory and shown in
    the status and metrics; files in other/ are still reclaimed; stuck/'s wait until it
    returns, then go too."""
    block = tmp_path / "block"
    block.touch()
    mnt: Mount = make_mount(LOCKFS_TEST_HOOKS=f"stuck-invalidation={block}")
    (mnt / "stuck").mkdir()
    (mnt / "stuck" / "__lockfs_stuck__").touch()
    (mnt / "stuck" / "held").touch()
    wait_for(lambda: log_records(mnt, "has not returned for"), STUCK_AFTER + 10, "the stuck line")
    (line,) = log_records(mnt, "has not returned for")
    assert f"entry invalidation of b'__lockfs_stuck__' in {mnt.path}/stuck has not " in line
    status = mnt.status()
    assert status.invalidations_stuck == 1 and status.invalidations_stuck_total == 1
    assert list(status.stuck_directories) == [f"{mnt.path}/stuck"]
    assert status.stuck_directories[f"{mnt.path}/stuck"] >= STUCK_AFTER
    assert "stuck            1 entry invalidation: " in format_text(status)
    assert f'lockfs_invalidations_stuck{{mountpoint="{mnt.path}"}} 1' in prometheus_text(status)
    # Reclaim goes on in every other directory.
    (mnt / "other").mkdir()
    for name in ("a", "b", "c"):
        (mnt / "other" / name).touch()
    wait_for(lambda: all(gone(mnt / "other" / n) for n in "abc"), 10, "other/ to be reclaimed")
    assert not gone(mnt / "stuck" / "held")
    # The kernel lets go: the directory's entries are sent, and it is reclaimed too.
    block.unlink()
    wait_for(lambda: log_records(mnt, "returned after"), 10, "the stuck one to return")
    wait_for(lambda: mnt.status().invalidations_stuck == 0, 5, "no stuck invalidation left")
    wait_for(lambda: gone(mnt / "stuck" / "held"), 10, "stuck/held to be reclaimed")
    assert len(log_records(mnt, "has not returned for")) == 1


@pytest.mark.injects_faults  # the invalidation thread's injected exception is logged
def test_a_dead_invalidation_thread_is_logged_counted_and_restarted(make_mount: Any) -> None:
    """An exception (not an OSError) in the invalidation thread: logged with its traceback,
    counted in the status, the thread restarted, and reclaim goes on."""
    mnt: Mount = make_mount(LOCKFS_TEST_HOOKS="invalidation-fault")
    (mnt / "store").mkdir()
    (mnt / "store" / "__lockfs_fault__").touch()
    wait_for(lambda: "thread restarted" in mnt.log_text(), 10, "the thread to be restarted")
    text = mnt.log_text()
    assert "ERROR: internal error in the invalidation thread; it has ended" in text
    assert "RuntimeError: injected fault in invalidation" in text
    assert "invalidation thread restarted (1 of 3 restarts allowed" in text
    assert mnt.status().thread_faults == 1
    assert "thread faults    1 (" in format_text(mnt.status())
    for name in ("a", "b"):
        (mnt / "store" / name).touch()
    wait_for(lambda: gone(mnt / "store" / "a") and gone(mnt / "store" / "b"), 10, "reclaim")
    assert mnt.proc.poll() is None


#: Lists directory argv[2] with one getdents64 whose buffer is a private writable mapping of
#: file argv[1], never touched before: copying the first entry faults the page in, and the
#: process stops there, holding the directory's inode lock.
ATTACKER = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.open(sys.argv[1], os.O_RDONLY)
    buffer = mmap.mmap(page, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    directory = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
    print("listing", flush=True)
    SYS_getdents64 = 217  # x86_64
    print(libc.syscall(SYS_getdents64, directory, ctypes.c_void_p(address), 4096), flush=True)
    """
)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the attacker's syscall number")
def test_a_listing_stopped_in_a_silent_fuse_page_does_not_stop_reclaim(
    make_mount: Any, tmp_path: Path
) -> None:
    """The real attack: a process lists lockfs's directory into a buffer that is a page of
    its own FUSE file that never answers, and stops there holding the directory's lock; the
    invalidation in that directory waits in the kernel (D state). It is found stuck, logged and
    shown, and reclaim goes on elsewhere; ending the attacker's filesystem releases it."""
    silent_dir = tmp_path / "silent"
    silent_dir.mkdir()
    mnt: Mount = make_mount("reclaim_delay=1,dir_grace=2")
    silent = mnt.spawn(sys.executable, HELPERS / "silent_fuse.py", silent_dir)
    attacker = None
    try:
        assert silent.stdout is not None and silent.stdout.readline() == "ready\n"
        (mnt / "victim").mkdir()
        (mnt / "victim" / "lock").touch()  # its invalidation falls due in a second
        attacker = mnt.spawn(sys.executable, "-c", ATTACKER, silent_dir / "page", mnt / "victim")
        assert attacker.stdout is not None and attacker.stdout.readline() == "listing\n"
        wait_for(lambda: "filldir" in kernel_stack(attacker.pid), 5, "the listing to stop")
        wait_for(
            lambda: log_records(mnt, "has not returned for"), STUCK_AFTER + 10, "the stuck line"
        )
        (line,) = log_records(mnt, "has not returned for")
        assert f"entry invalidation of b'lock' in {mnt.path}/victim has not returned" in line
        assert list(mnt.status().stuck_directories) == [f"{mnt.path}/victim"]
        (mnt / "other").mkdir()
        (mnt / "other" / "lock").touch()
        wait_for(lambda: gone(mnt / "other" / "lock"), 10, "other/lock to be reclaimed")
    finally:
        silent.kill()  # aborts its connection: the attacker's fault fails, it lets go
        silent.wait(10)
        if attacker is not None:
            attacker.wait(10)
        subprocess.run(["umount", silent_dir], check=False)
    wait_for(lambda: mnt.status().invalidations_stuck == 0, 10, "the invalidation to return")
    wait_for(lambda: gone(mnt / "victim" / "lock"), 10, "victim/lock to be reclaimed")


def kernel_stack(pid: int) -> str:
    """Where process ``pid`` is in the kernel (root only)."""
    try:
        return Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return ""
