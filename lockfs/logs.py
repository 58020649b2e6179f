"""Where the daemon's log lines go, so that none of them is ever silently lost.

A daemon in the foreground (``-f``) logs to stderr. A detached daemon has no terminal: each
record goes to the first of these destinations that takes it, tried again for every record:

1. syslog: the datagram socket ``/dev/log`` (journald's or rsyslog's);
2. the journal's native socket ``/run/systemd/journal/socket`` (when ``/dev/log`` is missing,
   e.g. in a container or early at boot);
3. a file, ``/run/lockfs/<escaped mountpoint>.log`` (directory 0700, file 0600: root only),
   rotated at :data:`MAX_FILE_BYTES` with one older copy (``.log.1``).

Because the order is tried per record, a syslog that goes away later (a stopped journal, a
restarted rsyslog) costs no line: it lands in the next destination, and once syslog answers
again it is used again. Every destination writes each record with one system call before
``emit`` returns, so a record is out of the process once it has been logged (the hang watchdog
relies on that before it ends the process). :func:`destination` says where the next record
goes, for ``lockfs status``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import struct
import sys
from typing import Protocol

from . import control

SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: The fallback file is renamed to ``.1`` (replacing the older copy) when it would grow past this.
MAX_FILE_BYTES = 1 << 20
#: A record longer than this is cut (a datagram must fit the socket's buffer).
MAX_MESSAGE_BYTES = 48 << 10
#: How long a send to a congested syslog or journal socket may take before the record goes to
#: the next destination instead.
SEND_TIMEOUT = 1.0
IDENTIFIER = "lockfs"
LOG_DAEMON = 3  # syslog facility

_SEVERITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
_PLAIN = logging.Formatter("%(message)s")
_STAMPED = logging.Formatter("%(asctime)s lockfs[%(process)d] %(levelname)s: %(message)s")


def severity(levelno: int) -> int:
    """The syslog severity of a logging level (debug 7 … critical 2)."""
    for level, value in _SEVERITY.items():
        if levelno >= level:
            return value
    return 7


def log_path(mountpoint: str) -> str:
    """The fallback log file of the mount at ``mountpoint`` (a resolved absolute path)."""
    name = control.escape_path(mountpoint)
    if len(os.fsencode(name)) > 200:  # keep a readable prefix within NAME_MAX
        digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
        name = os.fsencode(name)[:180].decode(errors="ignore") + "-" + digest
    return os.path.join(control.RUN_DIR, name + ".log")


def _cut(text: str) -> bytes:
    data = text.encode(errors="backslashreplace")
    if len(data) > MAX_MESSAGE_BYTES:
        data = data[:MAX_MESSAGE_BYTES] + b"\n[cut: record too long]"
    return data


class Destination(Protocol):
    """One place log records can go. ``send`` raises OSError when it cannot take one."""

    #: How ``lockfs status`` names it.
    description: str

    def send(self, record: logging.LogRecord) -> None: ...

    def available(self) -> bool: ...


class _UnixDatagram:
    """A lazily connected datagram socket that reconnects once when a send fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def send_bytes(self, data: bytes) -> None:
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.send(data)
                return
            except OSError as exc:  # the reader went away (or timed out): start afresh
                self.close()
                if attempt == 2 or exc.errno == errno.EMSGSIZE:
                    raise

    def available(self) -> bool:
        try:
            if self._sock is None:
                self._sock = self._connect()
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Syslog(_UnixDatagram):
    """RFC 3164 lines (``<PRI>lockfs[PID]: message``) to the syslog socket; the receiver adds
    the time and host."""

    def __init__(self, path: str = SYSLOG_SOCKET) -> None:
        super().__init__(path)
        self.description = f"syslog ({path})"

    def send(self, record: logging.LogRecord) -> None:
        priority = LOG_DAEMON * 8 + severity(record.levelno)
        head = f"<{priority}>{IDENTIFIER}[{record.process}]: "
        self.send_bytes(_cut(head + _PLAIN.format(record)))


class Journal(_UnixDatagram):
    """systemd's native journal protocol: one datagram of ``KEY=value`` fields per record,
    multi-line values (tracebacks) as ``KEY``, newline, 64-bit little-endian length, value."""

    def __init__(self, path: str = JOURNAL_SOCKET, mountpoint: str = "") -> None:
        super().__init__(path)
        self.description = f"journal ({path})"
        self.mountpoint = mountpoint

    def send(self, record: logging.LogRecord) -> None:
        fields = {
            "MESSAGE": _cut(_PLAIN.format(record)),
            "PRIORITY": str(severity(record.levelno)).encode(),
            "SYSLOG_IDENTIFIER": IDENTIFIER.encode(),
            "SYSLOG_FACILITY": str(LOG_DAEMON).encode(),
            "SYSLOG_PID": str(record.process).encode(),
            "CODE_FILE": record.pathname.encode(errors="backslashreplace"),
            "CODE_LINE": str(record.lineno).encode(),
            "CODE_FUNC": record.funcName.encode(errors="backslashreplace"),
            "LOGGER": record.name.encode(errors="backslashreplace"),
            "LOCKFS_MOUNTPOINT": os.fsencode(self.mountpoint),
        }
        self.send_bytes(encode_journal_fields(fields))


def encode_journal_fields(fields: dict[str, bytes]) -> bytes:
    """One native-protocol datagram holding ``fields``."""
    out = []
    for key, value in fields.items():
        if b"\n" in value:
            out.append(key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(key.encode() + b"=" + value + b"\n")
    return b"".join(out)


class RotatingFile:
    """Timestamped lines appended to a root-only file; when it would pass ``max_bytes`` it
    becomes ``PATH.1`` (replacing the older copy) and a new file is started."""

    def __init__(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.description = path
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def send(self, record: logging.LogRecord) -> None:
        data = _cut(_STAMPED.format(record)) + b"\n"
        fd = self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            os.replace(self.path, self.path + ".1")
            self.close()
            fd = self._open()
        os.write(fd, data)
        self._size += len(data)

    def available(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Stderr:
    """The foreground daemon's (or a starting daemon's) stderr."""

    description = "stderr"

    def send(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        stream.write(_STAMPED.format(record) + "\n")
        stream.flush()

    def available(self) -> bool:
        return True


class FallbackHandler(logging.Handler):
    """Hands every record to the first destination that takes it."""

    def __init__(self, destinations: list[Destination]) -> None:
        super().__init__()
        self.destinations = destinations
        #: Descriptions of the destinations that took at least one record.
        self.used: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        for dest in self.destinations:
            try:
                dest.send(record)
            except (OSError, ValueError):
                continue
            if dest.description not in self.used:
                self.used.append(dest.description)
            return
        # Nowhere to go (not even the file under /run): there is nothing left to tell.

    def destination(self) -> str:
        """Where the next record goes (the first destination that is available now), and
        where earlier records went if some went elsewhere."""
        with self.lock or contextlib.nullcontext():
            current = next(
                (dest.description for dest in self.destinations if dest.available()), "nowhere"
            )
        earlier = [used for used in self.used if used != current]
        return current + (f" (earlier lines also in {', '.join(earlier)})" if earlier else "")

    def close(self) -> None:
        for dest in self.destinations:
            close = getattr(dest, "close", None)
            if close is not None:
                close()
        super().close()


_handler: FallbackHandler | None = None


def _install(handler: FallbackHandler, debug: bool, quiet: bool) -> None:
    global _handler
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    _handler = handler
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    # pyfuse3 logs every worker start at debug level; keep it quieter unless tracing.
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def to_stderr(debug: bool, quiet: bool = False) -> None:
    """Log to stderr; ``quiet`` keeps it to warnings, so a successful mount prints nothing."""
    _install(FallbackHandler([Stderr()]), debug, quiet)


def detached(
    debug: bool,
    mountpoint: str,
    *,
    syslog_socket: str = SYSLOG_SOCKET,
    journal_socket: str = JOURNAL_SOCKET,
) -> None:
    """Log to syslog, else the journal, else the mount's file under /run/lockfs (the socket
    paths are only ever changed by the tests, through lockfs.testing_hooks)."""
    destinations: list[Destination] = [
        Syslog(syslog_socket),
        Journal(journal_socket, mountpoint=mountpoint),
        RotatingFile(log_path(mountpoint)),
    ]
    _install(FallbackHandler(destinations), debug, quiet=False)


def destination() -> str:
    """Where the daemon's next log record goes (for ``lockfs status``)."""
    return _handler.destination() if _handler is not None else "stderr"


def flush() -> None:
    """Push out whatever the root logger's handlers still buffer."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
