"""The lock-taking loops of ``python -m lockfs.bench``, run in forked worker processes.

Each loop does exactly what a lock caller does, with plain system calls and no extra work
inside the timed part, so that the same loop measures tmpfs and lockfs:

* **hot**: ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close`` on one path;
* **cold**: Proxmox Backup Server's chunk lock on a fresh path each time
  (``create_dir_all`` of the parent, ``open`` without O_CREAT, ``mkostemp``, ``fchmod 0660``,
  ``fchown``, ``renameat2(RENAME_NOREPLACE)``, ``flock(LOCK_EX|LOCK_NB)``, the double-stat
  check, ``close``): lockfs.pbs_lock, the implementation the tests' lock-taking program uses;
* **hold**: take many locks and keep them until told to let go;
* **list**: list one directory over and over until told to stop (the listing section).

Workers talk to the bench over a :mod:`multiprocessing` pipe: ``("ready", info)`` once set up,
then, after the shared *go* event, ``("done", result)``; any failure is ``("error", text)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from ..pbs_lock import chunk_path, lock_helper
from ..pbs_lock import create_dir_all as create_dir_all  # sections.py prepares its hot path with it

PR_SET_PDEATHSIG = 1
#: Held lock files per directory in the held section.
HELD_PER_DIR = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]


def held_path(root: str, index: int, per_dir: int = HELD_PER_DIR) -> str:
    """The path of held lock number ``index`` (``per_dir`` per directory, 1,000 by default)."""
    return f"{root}/held/{index // per_dir:04d}/{index}.lck"


def hot_cycle(path: str) -> None:
    """One hot lock cycle: ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)


def cold_cycle(path: str, owner: tuple[int, int]) -> None:
    """One cold lock cycle: PBS's full sequence, the double-stat check, then ``close``."""
    os.close(lock_helper(path, owner))


def _child_setup() -> None:
    """Leave Ctrl-C to the bench (it stops workers) and die with it if it is killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _prepare(kind: str, params: dict[str, Any]) -> tuple[Callable[[], None], int]:
    """The loop for ``kind`` and its number of cycles; paths are built before timing."""
    if kind == "hot":
        path, cycles = params["path"], params["cycles"]

        def hot_loop() -> None:
            for _ in range(cycles):
                hot_cycle(path)

        return hot_loop, cycles
    if kind == "cold":
        owner = (params["uid"], params["gid"])
        paths = [chunk_path(params["root"], i) for i in params["indices"]]

        def cold_loop() -> None:
            for path in paths:
                cold_cycle(path, owner)

        return cold_loop, len(paths)
    raise ValueError(f"unknown worker kind {kind!r}")


def loop_worker(conn: Connection, go: Event, kind: str, params: dict[str, Any]) -> None:
    """Run one timed loop: report ready, wait for *go*, loop, report times and CPU."""
    _child_setup()
    try:
        loop, cycles = _prepare(kind, params)
        conn.send(("ready", {"pid": os.getpid()}))
        go.wait()
        cpu0 = _cpu_seconds()
        start = time.monotonic()
        loop()
        end = time.monotonic()
        cpu1 = _cpu_seconds()
        conn.send(("done", {"cycles": cycles, "start": start, "end": end, "cpu_s": cpu1 - cpu0}))
    except BaseException as exc:
        conn.send(("error", f"{kind} worker {os.getpid()}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to at least ``needed``; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    with open("/proc/sys/fs/nr_open") as f:
        ceiling = int(f.read())
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else min(needed, ceiling)
    new_soft = min(needed, new_hard) if new_hard != resource.RLIM_INFINITY else needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
    return new_soft


def hold_worker(conn: Connection, root: str, indices: range, per_dir: int = HELD_PER_DIR) -> None:
    """Take (and keep) the hot-style locks ``indices``; close them all on ``release``."""
    _child_setup()
    fds: list[int] = []
    try:
        limit = raise_nofile(len(indices) + 64)
        start = time.monotonic()
        for i in indices:
            path = held_path(root, i, per_dir)
            if i == indices.start or i % per_dir == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        end = time.monotonic()
        conn.send(("ready", {"held": len(fds), "start": start, "end": end, "nofile": limit}))
        conn.recv()  # "release", or EOF if the bench went away
        for fd in fds:
            os.close(fd)
        fds.clear()
        conn.send(("done", {"released": len(indices)}))
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.send(("error", f"holder {os.getpid()}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def list_worker(conn: Connection, directory: str) -> None:
    """List ``directory`` (``os.listdir``: every READDIR of it) in a loop until told to stop;
    report how many listings and entries that made."""
    _child_setup()
    try:
        conn.send(("ready", {"pid": os.getpid()}))
        listings = entries = 0
        start = time.monotonic()
        while not conn.poll():
            entries += len(os.listdir(directory))
            listings += 1
        end = time.monotonic()
        conn.send(("done", {"listings": listings, "entries": entries, "start": start, "end": end}))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"lister {os.getpid()}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()
