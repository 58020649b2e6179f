"""The lock-taking loops of ``python -m lockfs.bench``, run in forked worker processes.

Each loop does exactly what a lock caller does, with plain system calls and no extra work
inside the timed part, so that the same loop measures tmpfs and lockfs:

* **hot**: ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close`` on one path;
* **cold**: Proxmox Backup Server's chunk lock on a fresh path each time
  (``create_dir_all`` of the parent, ``open`` without O_CREAT, ``mkostemp``, ``fchmod 0660``,
  ``fchown``, ``renameat2(RENAME_NOREPLACE)``, ``flock(LOCK_EX|LOCK_NB)``, the double-stat
  check, ``close``), as described in the PBS lock protocol notes;
* **hold**: take many locks and keep them until told to let go.

Workers talk to the bench over a :mod:`multiprocessing` pipe: ``("ready", info)`` once set up,
then, after the shared *go* event, ``("done", result)``; any failure is ``("error", text)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import resource
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

AT_FDCWD = -100
RENAME_NOREPLACE = 1
PR_SET_PDEATHSIG = 1
#: Held lock files per directory in the held section.
HELD_PER_DIR = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.mkostemp.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]


def _raise_errno(what: str | bytes) -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), what)


def chunk_path(root: str, index: int) -> str:
    """The chunk lock path of chunk number ``index``: ``<root>/.chunks/<4 hex>/<64 hex>``.

    The digest is the SHA-256 of the index, so paths spread over the 65,536 prefix
    directories like real chunk digests, and the same index gives the same path everywhere.
    """
    digest = hashlib.sha256(index.to_bytes(8, "little")).hexdigest()
    return f"{root}/.chunks/{digest[:4]}/{digest}"


def held_path(root: str, index: int) -> str:
    """The path of held lock number ``index`` (1,000 per directory)."""
    return f"{root}/held/{index // HELD_PER_DIR:04d}/{index}.lck"


def create_dir_all(path: str) -> None:
    """Rust's ``std::fs::create_dir_all``, as PBS calls it before every lock.

    ``mkdir`` first; an existing directory is fine (checked with ``stat``), a missing parent
    is created recursively and the ``mkdir`` repeated.
    """
    try:
        os.mkdir(path, 0o777)
        return
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.isdir(path):
            return
        raise
    create_dir_all(os.path.dirname(path))
    try:
        os.mkdir(path, 0o777)
    except OSError:
        if not os.path.isdir(path):
            raise


def hot_cycle(path: str) -> None:
    """One hot lock cycle: ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)


def pbs_open_locked(path: str, owner: tuple[int, int]) -> int:
    """PBS's ``open_backup_lockfile`` with timeout 0: returns the locked fd."""
    create_dir_all(os.path.dirname(path))
    encoded = os.fsencode(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_APPEND)
        except FileNotFoundError:
            template = ctypes.create_string_buffer(encoded + b".tmp_XXXXXX")
            fd = _libc.mkostemp(template, os.O_CLOEXEC)
            if fd < 0:
                _raise_errno(template.value)
            tmp = template.value
            os.fchmod(fd, 0o660)
            os.fchown(fd, *owner)
            if _libc.renameat2(AT_FDCWD, tmp, AT_FDCWD, encoded, RENAME_NOREPLACE) != 0:
                code = ctypes.get_errno()
                if code == errno.EEXIST:  # another process won the race: use its file
                    os.unlink(tmp)
                    os.close(fd)
                    continue
                if code != errno.EINVAL:
                    os.close(fd)
                    raise OSError(code, os.strerror(code), path) from None
                os.link(tmp, path)
                os.unlink(tmp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd


def cold_cycle(path: str, owner: tuple[int, int]) -> None:
    """One cold lock cycle: PBS's full sequence, the double-stat check, then ``close``."""
    fd = pbs_open_locked(path, owner)
    try:
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise RuntimeError(f"double-stat check failed on {path}")
    finally:
        os.close(fd)


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


def hold_worker(conn: Connection, root: str, indices: range) -> None:
    """Take (and keep) the hot-style locks ``indices``; close them all on ``release``."""
    _child_setup()
    fds: list[int] = []
    try:
        limit = raise_nofile(len(indices) + 64)
        start = time.monotonic()
        for i in indices:
            path = held_path(root, i)
            if i == indices.start or i % HELD_PER_DIR == 0:
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
