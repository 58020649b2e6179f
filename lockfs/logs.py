"""Where the daemon's log lines go, so that none of them is ever silently lost.

A daemon in the foreground (``-f``) logs to stderr. A detached daemon has no terminal: each
record goes to the first of these destinations that takes it, tried again for every record:

1. syslog: the datagram socket ``/dev/log`` (journald's or rsyslog's), through the standard
   library's ``SysLogHandler``;
2. the journal's native socket ``/run/systemd/journal/socket`` (when ``/dev/log`` is missing,
   e.g. in a container or early at boot): :class:`Journal`, the same handler sending the
   native protocol's fields instead of a syslog line;
3. a file, ``/run/lockfs/<escaped mountpoint>.log`` (directory 0700, file 0600: root only),
   the standard library's ``RotatingFileHandler`` opening and rotating only through the
   directory's descriptor (lockfs.rootfiles): at :data:`MAX_FILE_BYTES` it becomes ``.log.1``
   (replacing the older copy).

Because the order is tried per record, a syslog that goes away later (a stopped journal, a
restarted rsyslog) costs no line: it lands in the next destination, and once syslog answers
again it is used again. Every destination has written a record before ``emit`` returns (nothing
stays buffered in the process: the hang watchdog relies on that before it ends the process),
and a send to a congested socket gives up after :data:`SEND_TIMEOUT`. Emitting never raises: a
destination that fails passes the record on, and a bad log call (``log.info("%d", "x")``) is
logged as such instead of raising into the code that made it. :func:`destination` says where
the next record goes, for ``lockfs status``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import logging.handlers
import os
import socket
import struct
import sys
from typing import Protocol, TextIO

from . import control, rootfiles

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
_STAMPED = "%(asctime)s lockfs[%(process)d] %(levelname)s: %(message)s"


def log_path(mountpoint: str) -> str:
    """The fallback log file of the mount at ``mountpoint`` (a resolved absolute path)."""
    name = control.escape_path(mountpoint)
    if len(os.fsencode(name)) > 200:  # keep a readable prefix within NAME_MAX
        digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
        name = os.fsencode(name)[:180].decode(errors="ignore") + "-" + digest
    return os.path.join(control.RUN_DIR, name + ".log")


class _Formatter(logging.Formatter):
    """Text every destination takes: valid UTF-8 (what cannot be encoded, such as undecodable
    bytes of a path, as backslash escapes) of at most :data:`MAX_MESSAGE_BYTES`."""

    def format(self, record: logging.LogRecord) -> str:
        data = super().format(record).encode(errors="backslashreplace")
        if len(data) > MAX_MESSAGE_BYTES:
            data = data[:MAX_MESSAGE_BYTES] + b"\n[cut: record too long]"
        return data.decode(errors="ignore")


class Destination(Protocol):
    """One place log records can go: a handler whose ``emit`` raises when it cannot take one."""

    #: How ``lockfs status`` names it.
    description: str

    def emit(self, record: logging.LogRecord) -> None: ...

    def available(self) -> bool: ...

    def close(self) -> None: ...


class _Raising(logging.Handler):
    """A standard handler whose failures reach the fallback chain: the standard ``emit``
    catches every error and calls ``handleError``, which here raises it again (instead of
    printing it to stderr, which a detached daemon does not have)."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # the error ``emit`` is handling


class _Datagrams(_Raising, logging.handlers.SysLogHandler):
    """The standard syslog handler on a local datagram socket whose sends time out after
    :data:`SEND_TIMEOUT` (it connects lazily and reconnects once when a send fails)."""

    append_nul = False
    #: Set by the standard handler (not in its type stubs); None only once closed.
    socket: socket.socket

    def __init__(self, path: str, description: str) -> None:
        super().__init__(path, facility=self.LOG_DAEMON, socktype=socket.SOCK_DGRAM)
        self.description = description

    def _connect_unixsocket(self, address: str) -> None:
        super()._connect_unixsocket(address)  # type: ignore[misc]  # not in the type stubs
        self.socket.settimeout(SEND_TIMEOUT)

    def available(self) -> bool:
        if self.socket is None or self.socket.fileno() < 0:
            try:
                self._connect_unixsocket(self.address)  # type: ignore[arg-type]
            except OSError:
                return False
        return True


class Syslog(_Datagrams):
    """RFC 3164 lines (``<PRI>lockfs[PID]: message``) to the syslog socket; the receiver adds
    the time and host."""

    def __init__(self, path: str = SYSLOG_SOCKET) -> None:
        super().__init__(path, f"syslog ({path})")
        self.ident = IDENTIFIER
        self.setFormatter(_Formatter("[%(process)d]: %(message)s"))


class Journal(_Datagrams):
    """systemd's native journal protocol: one datagram of ``KEY=value`` fields per record,
    multi-line values (tracebacks) as ``KEY``, newline, 64-bit little-endian length, value."""

    def __init__(self, path: str = JOURNAL_SOCKET, mountpoint: str = "") -> None:
        super().__init__(path, f"journal ({path})")
        self.mountpoint = mountpoint
        self.setFormatter(_Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = self.priority_names[self.mapPriority(record.levelname)]
            datagram = encode_journal_fields(
                {
                    "MESSAGE": self.format(record).encode(),
                    "PRIORITY": str(priority).encode(),
                    "SYSLOG_IDENTIFIER": IDENTIFIER.encode(),
                    "SYSLOG_FACILITY": str(self.facility).encode(),
                    "SYSLOG_PID": str(record.process).encode(),
                    "CODE_FILE": record.pathname.encode(errors="backslashreplace"),
                    "CODE_LINE": str(record.lineno).encode(),
                    "CODE_FUNC": record.funcName.encode(errors="backslashreplace"),
                    "LOGGER": record.name.encode(errors="backslashreplace"),
                    "LOCKFS_MOUNTPOINT": os.fsencode(self.mountpoint),
                }
            )
            if self.socket is None:
                self.createSocket()
            try:
                self.socket.send(datagram)
            except OSError:  # the journal restarted (or was not there): reconnect once
                self.socket.close()
                self._connect_unixsocket(self.address)  # type: ignore[arg-type]
                self.socket.send(datagram)
        except Exception:
            self.handleError(record)


def encode_journal_fields(fields: dict[str, bytes]) -> bytes:
    """One native-protocol datagram holding ``fields``."""
    out = []
    for key, value in fields.items():
        if b"\n" in value:
            out.append(key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(key.encode() + b"=" + value + b"\n")
    return b"".join(out)


class RotatingFile(_Raising, logging.handlers.RotatingFileHandler):
    """Timestamped lines appended to a root-only file in a root-only directory; when it would
    pass ``max_bytes`` it becomes ``PATH.1`` (replacing the older copy) and a new file is
    started. The file is opened and renamed only through the descriptor of its directory,
    which must be one only root can change (lockfs.rootfiles.private_dir), never through a
    symlink."""

    def __init__(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> None:
        super().__init__(
            path,
            maxBytes=max_bytes,
            backupCount=1,
            encoding="utf-8",
            delay=True,
            errors="backslashreplace",
        )
        self.description = path
        self.setFormatter(_Formatter(_STAMPED))

    def _open(self) -> io.TextIOWrapper:
        directory, name = os.path.split(self.baseFilename)
        dir_fd = rootfiles.private_dir(directory)
        try:
            fd = rootfiles.open_append(dir_fd, name, 0o600)
        finally:
            os.close(dir_fd)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def shouldRollover(self, record: logging.LogRecord) -> int:
        if self.stream is None:
            self.stream = self._open()
        size = os.fstat(self.stream.fileno()).st_size
        added = len(self.format(record).encode()) + len(self.terminator)
        return int(size > 0 and size + added > self.maxBytes)

    def doRollover(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        directory, name = os.path.split(self.baseFilename)
        dir_fd = rootfiles.private_dir(directory)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rename(name, name + ".1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        self.stream = self._open()

    def available(self) -> bool:
        return True


class Stderr(_Raising, logging.StreamHandler[TextIO]):
    """The foreground daemon's (or a starting daemon's) stderr."""

    description = "stderr"

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(_Formatter(_STAMPED))

    def available(self) -> bool:
        return True


def _formattable(record: logging.LogRecord) -> logging.LogRecord:
    """``record``, or if its message and arguments do not format (a bad log call), a copy
    whose message shows the call, so that the line is neither lost nor raises."""
    try:
        record.getMessage()
        return record
    except Exception as exc:
        copy = logging.makeLogRecord(record.__dict__)
        try:
            call = f"{record.msg!r} % {record.args!r}"
        except Exception:
            call = "(unprintable arguments)"
        copy.msg, copy.args = "bad log call %s: %s: %s", (call, type(exc).__name__, exc)
        return copy


class FallbackHandler(logging.Handler):
    """Hands every record to the first destination that takes it. Never raises."""

    def __init__(self, destinations: list[Destination]) -> None:
        super().__init__()
        self.destinations = destinations
        #: Descriptions of the destinations that took at least one record.
        self.used: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record = _formattable(record)
            for dest in self.destinations:
                try:
                    dest.emit(record)
                except Exception:
                    continue
                if dest.description not in self.used:
                    self.used.append(dest.description)
                return
            # Nowhere to go (not even the file under /run): there is nothing left to tell.
        except Exception:  # logging must never fail the code that logs
            return

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
            with contextlib.suppress(Exception):
                dest.close()
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
