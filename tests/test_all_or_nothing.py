"""All or nothing (issue 17.1), in-process: an exception injected at every line the table code
executes for a request makes the adapter fail the mount closed, never answer.

Each case sets up a table, then sends one request through the adapter (lockfs.fuse_ops) with
the ``raise-at`` test hook (lockfs.testing_hooks.LineFault) raising at line 1, 2, ... of the
table code (testing_hooks.TABLE_FILES: nodes.py and every module it builds on) it executes,
until a run executes fewer lines than asked (no fault). Every fault must reach the fail-closed
path exactly once, with the request's name and arguments and the injected exception, and the
handler must not answer (no reply, no FUSE error); the run without a fault completes the
change, and the table passes its consistency check. Nothing of this needs a mount: the
real-mount version, with held locks and the ENOTCONN that follows, is tests/test_fail_closed.py.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import pyfuse3
import pytest
from support import FakeClock, FakeWallClock

from lockfs.fuse_ops import LockOperations
from lockfs.nodes import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, NodeTable, ReclaimPolicy
from lockfs.testing_hooks import ARM_NAME, LineFault

CTX = pyfuse3.RequestContext()
#: Reclaim delay of the table: the forget cases advance the clock past it.
DELAY = 1.0


class FailedClosed(Exception):
    """What the stand-in fail-closed path raises (the daemon's exits instead)."""


@dataclass
class World:
    """A table with a directory ``d`` holding a closed file ``a``, an open file ``b`` (a
    process holds it), a file ``data`` with bytes, an empty directory ``sub`` and an empty
    directory ``sub2``; and a directory ``e`` holding a file ``x``."""

    ops: LockOperations
    clock: FakeClock
    ino: dict[str, int]

    @property
    def table(self) -> NodeTable:
        return self.ops.table


def make_world() -> World:
    clock = FakeClock(start=100.0)
    table = NodeTable(
        policy=ReclaimPolicy(file_delay=DELAY, dir_grace=DELAY),
        clock=clock,
        wall_clock_ns=FakeWallClock(),
    )
    ino = {}
    d = table.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    e = table.mkdir(ROOT_INO, b"e", 0o755, 0, 0)
    ino["d"], ino["e"] = d.ino, e.ino
    for parent, name in (("d", "a"), ("d", "b"), ("d", "data"), ("e", "x")):
        node = table.create(ino[parent], name.encode(), 0o644, 0, 0)
        ino[name] = node.ino
        if name == "data":
            table.write(node.ino, 0, b"journal")
        if name != "b":
            table.release(node.ino)
    for name in ("sub", "sub2"):
        ino[name] = table.mkdir(d.ino, name.encode(), 0o755, 0, 0).ino
    return World(LockOperations(table), clock, ino)


def setattr_fields(**update: bool) -> pyfuse3.SetattrFields:
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    fields = {f"update_{name}": update.get(name, False) for name in names}
    return cast(pyfuse3.SetattrFields, SimpleNamespace(**fields))


def truncate(w: World) -> Coroutine[Any, Any, Any]:
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 0
    attr.st_mode = stat.S_IFREG | 0o600
    return w.ops.setattr(w.ino["data"], attr, setattr_fields(size=True, mode=True), None, CTX)


def forget_due(w: World) -> Coroutine[Any, Any, Any]:
    """The kernel's FORGET after the reclaimer asked it to drop ``a``: the node goes."""
    w.clock.advance(DELAY)
    assert b"a" in [node.name for node in w.table.due()]
    return w.ops.forget([(w.ino["a"], 1)])


def forget_unlinked(w: World) -> Coroutine[Any, Any, Any]:
    w.table.unlink(w.ino["d"], b"a")
    return w.ops.forget([(w.ino["a"], 1)])


def release_unlinked(w: World) -> Coroutine[Any, Any, Any]:
    w.table.unlink(w.ino["d"], b"b")
    w.table.forget(w.ino["b"], 1)
    return w.ops.release(w.ino["b"])


#: Each case: the handler it sends, and a function that makes the request (after any set-up
#: of its own) and returns the handler's coroutine.
CASES: dict[str, tuple[str, Callable[[World], Coroutine[Any, Any, Any]]]] = {
    "rename": ("rename", lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["d"], b"new", 0, CTX)),
    "rename to another directory": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["e"], b"new", 0, CTX),
    ),
    "rename over an open file": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["d"], b"b", 0, CTX),
    ),
    "rename over a file in another directory": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"b", w.ino["e"], b"x", 0, CTX),
    ),
    "rename a directory over an empty one": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"sub", w.ino["d"], b"sub2", 0, CTX),
    ),
    "rename noreplace": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["e"], b"new", RENAME_NOREPLACE, CTX),
    ),
    "rename noreplace onto an existing name": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["d"], b"b", RENAME_NOREPLACE, CTX),
    ),
    "rename exchange": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"b", w.ino["e"], b"x", RENAME_EXCHANGE, CTX),
    ),
    "rename exchange in one directory": (
        "rename",
        lambda w: w.ops.rename(w.ino["d"], b"a", w.ino["d"], b"sub", RENAME_EXCHANGE, CTX),
    ),
    "unlink": ("unlink", lambda w: w.ops.unlink(w.ino["d"], b"a", CTX)),
    "unlink an open file": ("unlink", lambda w: w.ops.unlink(w.ino["d"], b"b", CTX)),
    "rmdir": ("rmdir", lambda w: w.ops.rmdir(w.ino["d"], b"sub", CTX)),
    "create": ("create", lambda w: w.ops.create(w.ino["d"], b"c", 0o644, os.O_RDWR, CTX)),
    "mkdir": ("mkdir", lambda w: w.ops.mkdir(w.ino["d"], b"m", 0o755, CTX)),
    "setattr truncate": ("setattr", truncate),
    "release": ("release", lambda w: w.ops.release(w.ino["b"])),
    "release of an unlinked file": ("release", release_unlinked),
    "forget of a due file": ("forget", forget_due),
    "forget of an unlinked file": ("forget", forget_unlinked),
}


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a handler's coroutine to its end (handlers never wait)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("a handler waited")


def attempt(case: str, line: int) -> tuple[World, list[tuple[str, Any, Exception]], LineFault]:
    """Send the case's request with a fault at ``line``: the world after it, the calls of the
    fail-closed path, and the hook (how many lines the request executed)."""
    handler, request = CASES[case]
    world = make_world()
    calls: list[tuple[str, Any, Exception]] = []

    def fail_closed(name: str, args: tuple[Any, ...], exc: Exception) -> NoReturn:
        calls.append((name, args, exc))
        raise FailedClosed

    fault = LineFault(handler, line, armed=True)
    world.ops.fail_closed = fail_closed
    world.ops.fault_hook = fault
    try:
        coroutine = request(world)
        try:
            run(coroutine)
        except FailedClosed:
            pass
        except pyfuse3.FUSEError:
            assert not calls, "a fault was answered"
    finally:
        sys.settrace(None)
    return world, calls, fault


@pytest.mark.parametrize("case", list(CASES))
def test_every_injected_fault_fails_closed(case: str) -> None:
    handler = CASES[case][0]
    line = 1
    while True:
        world, calls, fault = attempt(case, line)
        if fault.lines_seen < line:  # the request ended before the line: no fault
            assert not calls
            break
        assert len(calls) == 1, f"fault at line {line}: {calls}"
        name, _args, exc = calls[0]
        assert name == handler
        assert str(exc).startswith(f"injected fault in {handler} at ")
        assert world.ops.faults == 1
        line += 1
    assert line > 3, f"only {line - 1} lines traced: the hook does not see the table code"
    world.table.check()  # the request without a fault left a consistent table


def test_a_fault_outside_requests_is_not_injected() -> None:
    """Table code run between requests (a reclaim pass) does not count or raise."""
    world = make_world()
    fault = LineFault("rename", 1)
    world.ops.fault_hook = fault
    try:
        run(world.ops.rename(world.ino["d"], b"a", world.ino["d"], b"a2", 0, CTX))
        assert sys.gettrace() is None and fault.lines_seen == 0  # not armed yet
        fault("lookup", (ROOT_INO, ARM_NAME))  # armed by a request naming __lockfs_arm__
        fault("rename", (1, b"other"))  # a rename started (and ended) elsewhere
        world.clock.advance(DELAY)
        world.table.due()  # not inside that request's wrapper
        assert fault.lines_seen == 0
        fault("getattr", (ROOT_INO,))  # the next request stops the tracing
        assert sys.gettrace() is None
        fault("rename", (1, b"again"))  # only one request is ever traced
        assert sys.gettrace() is None
    finally:
        sys.settrace(None)
