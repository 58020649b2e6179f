"""The control socket: a read-only window into a running daemon, outside the lock namespace.

Each mount listens on ``/run/lockfs/<escaped mountpoint>.sock`` (directory mode 0700, socket
0600: root only). A socket can only be bound by path, so the directory must be one only root
can change (lockfs.rootfiles.private_dir): the daemon refuses to start otherwise. A client
sends one command line and reads one JSON document back; no command changes anything, so the
socket cannot be used to disturb locks.

A flood of connections never ends the daemon: it answers at most :data:`MAX_CONNECTIONS` at
once (the rest wait in the kernel's backlog), and an ``accept`` that fails (EMFILE, ENFILE,
ENOBUFS, ENOMEM or anything else) is logged once per run of failures and tried again after
:data:`ACCEPT_BACKOFF` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio

from . import rootfiles
from .mounts import is_lockfs_mounted
from .status import MountStatus

log = logging.getLogger(__name__)

RUN_DIR = "/run/lockfs"
MAX_REQUEST = 4096
#: Connections answered at once; more wait in the listen backlog until one is done.
MAX_CONNECTIONS = 64
#: Seconds to wait before accepting again after accept() failed.
ACCEPT_BACKOFF = 0.1


def escape_path(path: str) -> str:
    """systemd-style escaping of an absolute path into one file name."""
    trimmed = path.strip("/") or "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_:" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


#: sun_path holds 108 bytes; longer socket names are shortened with a hash.
MAX_SOCKET_PATH = 100


def socket_path(mountpoint: str) -> str:
    """The socket of the mount at ``mountpoint``, an absolute path without symlinks.

    The daemon must never resolve its own mountpoint (that would wait for itself), so the
    client resolves it and the daemon uses the path it resolved before mounting. Names that
    would not fit in a socket address keep a readable prefix and end in a hash of the path.
    """
    path = os.path.join(RUN_DIR, escape_path(mountpoint) + ".sock")
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    room = MAX_SOCKET_PATH - len(os.fsencode(RUN_DIR)) - len(digest) - len("/-.sock")
    prefix = escape_path(mountpoint).encode()[: max(room, 0)].decode(errors="ignore")
    return os.path.join(RUN_DIR, f"{prefix}-{digest}.sock")


Handler = Callable[[str], Any]


@contextlib.contextmanager
def run_dir_locked(run_dir: str) -> Iterator[None]:
    """An exclusive flock on the socket directory. Daemons hold it while they publish their
    socket (bind and listen) and while anyone removes sockets, so a socket that is bound but
    not yet listening (it refuses connections like a stale one) is never taken for stale."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_stale(path: str) -> bool:
    """Whether ``path`` is a socket nobody listens on: its daemon is gone (ECONNREFUSED).
    Anything else (it answers, its backlog is full, it is not a socket) is left alone."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def remove_stale(paths: Iterable[str]) -> list[str]:
    """Remove the sockets among ``paths`` whose daemon is gone (call it under
    :func:`run_dir_locked`); a live daemon's socket is never removed. Returns what was."""
    removed = []
    for path in paths:
        if _is_stale(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path)
    return removed


async def serve_control(
    path: str, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer commands on ``path`` until cancelled.

    Started with ``nursery.start``: it reports started once the socket listens (or binding
    failed, which is logged: the mount serves on without its control socket; a directory that
    is not root's alone is refused like that too, though the daemon checked it at start). It
    removes the sockets that killed daemons left in the directory (never a live one), and takes
    over ``path`` from an earlier daemon of the same mountpoint. On the way out the socket file
    is removed only if it is still this daemon's (a later mount at the same place may have
    taken the name).
    """
    run_dir = os.path.dirname(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.close(rootfiles.private_dir(run_dir))  # created if missing, and root's alone
        with run_dir_locked(run_dir):
            stale = remove_stale(entry.path for entry in os.scandir(run_dir))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            old_umask = os.umask(0o177)
            try:
                await listener.bind(path)
            finally:
                os.umask(old_umask)
            listener.listen(16)
        bound = os.stat(path)
    except OSError as exc:
        listener.close()
        log.error("no control socket for this mount (%s): %s", path, exc)
        task_status.started()
        return
    for removed in stale:
        log.info("removed the stale control socket %s (its daemon is gone)", removed)
    task_status.started()
    try:
        await _accept_forever(listener, path, handle)
    finally:
        listener.close()
        with contextlib.suppress(OSError), run_dir_locked(run_dir):
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(path)


async def _accept_forever(listener: trio.socket.SocketType, path: str, handle: Handler) -> None:
    """Answer each connection in a task of its own, at most MAX_CONNECTIONS at once; accept()
    errors never end this (see the module docstring)."""
    slots = trio.Semaphore(MAX_CONNECTIONS)
    failing = False
    async with trio.open_nursery() as nursery:
        while True:
            await slots.acquire()
            try:
                conn, _ = await listener.accept()
            except OSError as exc:
                slots.release()
                if not failing:
                    log.warning(
                        "control socket %s: cannot accept connections: %s; trying again every %gs",
                        path,
                        exc.strerror or exc,
                        ACCEPT_BACKOFF,
                    )
                    failing = True
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            if failing:
                log.info("control socket %s: accepting connections again", path)
                failing = False
            nursery.start_soon(_answer, conn, handle, slots)


async def _answer(conn: trio.socket.SocketType, handle: Handler, slots: trio.Semaphore) -> None:
    """Answer one connection (at most 5 s for its request), then free its slot."""
    try:
        with conn:
            try:
                with trio.fail_after(5):
                    request = b""
                    while b"\n" not in request and len(request) < MAX_REQUEST:
                        chunk = await conn.recv(MAX_REQUEST)
                        if not chunk:
                            break
                        request += chunk
                command = request.decode(errors="replace").strip()
                try:
                    reply = {"ok": True, "result": handle(command)}
                except Exception as exc:  # a bad command must not hurt the daemon
                    reply = {"ok": False, "error": str(exc)}
                payload = json.dumps(reply).encode() + b"\n"
                while payload:
                    sent = await conn.send(payload)
                    payload = payload[sent:]
            except (OSError, trio.TooSlowError) as exc:
                log.debug("control connection failed: %s", exc)
    finally:
        slots.release()


class ControlError(Exception):
    """A control command failed; the message says why, for the user.

    Raised as such when the daemon refused the command; the subclasses say whether the daemon
    could be reached at all.
    """


class DaemonUnreachable(ControlError):
    """Nothing answers on the mount's control socket: it is missing, refuses connections (its
    daemon is gone), or the caller may not open it (root only)."""


class NoProperAnswer(ControlError):
    """The daemon took the command but gave no proper answer: it timed out, or the reply was
    empty, truncated, or not the JSON document the protocol promises."""


def query(mountpoint: str, command: str, timeout: float = 10.0, *, resolve: bool = True) -> Any:
    """Send ``command`` to the daemon serving ``mountpoint`` and return its result.

    Every failure raises :class:`ControlError` (never ``OSError`` or a JSON error); the whole
    exchange, connect to last byte, takes at most ``timeout`` seconds. ``resolve=False`` takes
    ``mountpoint`` as absolute and free of symlinks already: resolving it stats the mount,
    which waits for a stuck daemon (the self-healing watcher must never wait).
    """
    resolved = os.path.realpath(mountpoint) if resolve else mountpoint
    path = socket_path(resolved)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                _connect(sock, path, deadline)
            except TimeoutError:  # its backlog stayed full: the daemon accepts no connections
                raise
            except OSError as exc:
                raise DaemonUnreachable(_unreachable(mountpoint, resolved, path, exc)) from None
            sock.sendall(command.encode() + b"\n")
            data = _read_reply(sock, deadline)
    except TimeoutError:
        raise NoProperAnswer(
            f"the lockfs daemon of {mountpoint} did not answer within {timeout:g}s: it may be "
            "stuck or overloaded"
        ) from None
    except OSError as exc:
        raise NoProperAnswer(
            f"the connection to the lockfs daemon of {mountpoint} failed: {exc.strerror}"
        ) from None
    return _result(mountpoint, data)


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """Connect ``sock`` to ``path``, waiting while the daemon's listen backlog is full (a busy
    or flooded daemon): with a timeout set, a UNIX socket's connect() then fails with EAGAIN
    instead of waiting for room. TimeoutError once ``deadline`` passes."""
    delay = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise TimeoutError from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _read_reply(sock: socket.socket, deadline: float) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 16)
        if not chunk:
            return data
        data += chunk


def _result(mountpoint: str, data: bytes) -> Any:
    """The result in a reply, which is one JSON object ending in a newline."""
    bad = f"the lockfs daemon of {mountpoint} sent"
    if not data:
        raise NoProperAnswer(f"{bad} an empty reply (it may have died while answering)")
    if not data.endswith(b"\n"):
        raise NoProperAnswer(f"{bad} a truncated reply ({len(data)} bytes, no end of line)")
    try:
        reply = json.loads(data)
    except ValueError:
        raise NoProperAnswer(f"{bad} a reply that is not JSON: {data[:60]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise NoProperAnswer(f"{bad} a reply without the protocol's ok field: {data[:60]!r}")
    if not reply["ok"]:
        raise ControlError(f"the lockfs daemon of {mountpoint} refused: {reply.get('error')}")
    if "result" not in reply:
        raise NoProperAnswer(f"{bad} a reply without a result: {data[:60]!r}")
    return reply["result"]


def _unreachable(mountpoint: str, resolved: str, path: str, exc: OSError) -> str:
    """Why nothing answers on ``path``, in the terms an administrator acts on."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: {exc.strerror} (the control socket is for root only)"
    if not is_lockfs_mounted(resolved, resolve_path=False):
        return f"{mountpoint} is not a lockfs mount (no daemon answers on {path})"
    return (
        f"no lockfs daemon answers for {mountpoint} ({path}: {exc.strerror}); if the daemon "
        "is gone, the mount answers ENOTCONN until an administrator unmounts it"
    )


def query_status(mountpoint: str, timeout: float = 10.0, *, resolve: bool = True) -> MountStatus:
    """The status of the mount at ``mountpoint`` (``resolve``: see :func:`query`)."""
    result = query(mountpoint, "status", timeout, resolve=resolve)
    try:
        return MountStatus.from_json(result)
    except ValueError as exc:
        raise NoProperAnswer(
            f"the lockfs daemon of {mountpoint} sent a bad status: {exc}"
        ) from None


#: struct ucred: pid, uid, gid (three 32-bit integers).
PEERCRED_SIZE = 12


def listener_pid(mountpoint: str) -> int | None:
    """The pid of the process listening on the control socket of ``mountpoint`` (absolute,
    without symlinks), from the kernel's credentials of the listener (``SO_PEERCRED``): known
    even while that process is stopped or stuck, as long as its backlog has room. None if
    nobody listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as sock:
        try:
            sock.connect(socket_path(mountpoint))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED_SIZE)
        except OSError:
            return None
    pid = int.from_bytes(creds[:4], sys.byteorder, signed=True)
    return pid if pid > 0 else None
