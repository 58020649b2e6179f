"""Where a daemon's log lines go: syslog, else the journal's native socket, else a root-only file
under /run/lockfs — tried per record, so no line is lost when syslog is missing or goes away,
and logging never raises into the code that logs.

The destinations are driven with real UNIX sockets standing in for syslog and journald; the
file is refused in a directory another (real) user owns; the last test runs a real detached
daemon without syslog and finds its error lines in the journal or the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Daemons, daemon_env

from lockfs import control, logs


class FakeSocket:
    """A datagram socket at ``path`` standing in for /dev/log or the journal's socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)

    def receive(self) -> bytes:
        return self.sock.recv(1 << 20)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def parse_journal(datagram: bytes) -> dict[str, bytes]:
    """Decode one native-protocol datagram (``KEY=value`` lines and binary-safe fields)."""
    fields, rest = {}, datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size]
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


def record(message: str, level: int = logging.ERROR, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("injected")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("lockfs.test", level, __file__, 42, message, (), exc_info, "fn")


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setattr(control, "RUN_DIR", str(path))
    return path


def test_syslog_lines(tmp_path: Path) -> None:
    server = FakeSocket(tmp_path / "log")
    dest = logs.Syslog(str(server.path))
    dest.emit(record("entry limit reached"))
    assert server.receive() == f"<27>lockfs[{os.getpid()}]: entry limit reached".encode()
    dest.emit(record("mounted", logging.INFO))
    assert server.receive().startswith(b"<30>lockfs[")  # daemon facility, info
    server.close()


def test_journal_fields_keep_a_traceback_in_one_entry(tmp_path: Path) -> None:
    server = FakeSocket(tmp_path / "journal")
    dest = logs.Journal(str(server.path), mountpoint="/run/proxmox-backup/locks")
    dest.emit(record("internal error in lookup(1, b'x'); failing closed", exc=True))
    fields = parse_journal(server.receive())
    assert fields["MESSAGE"].startswith(b"internal error in lookup(1, b'x'); failing closed\n")
    assert b"Traceback (most recent call last)" in fields["MESSAGE"]
    assert fields["MESSAGE"].endswith(b"RuntimeError: injected")
    assert fields["PRIORITY"] == b"3" and fields["SYSLOG_IDENTIFIER"] == b"lockfs"
    assert fields["SYSLOG_PID"] == str(os.getpid()).encode()
    assert fields["LOCKFS_MOUNTPOINT"] == b"/run/proxmox-backup/locks"
    assert fields["CODE_LINE"] == b"42" and fields["CODE_FUNC"] == b"fn"
    server.close()


def test_file_is_root_only_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "run" / "mnt.log"
    dest = logs.RotatingFile(str(path), max_bytes=400)
    for i in range(20):
        dest.emit(record(f"line {i:02d}"))
    dest.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    old = Path(f"{path}.1")
    assert path.stat().st_size <= 400 and old.stat().st_size <= 400
    lines = old.read_text().splitlines() + path.read_text().splitlines()
    assert lines[-1].endswith("ERROR: line 19") and f"lockfs[{os.getpid()}]" in lines[-1]
    numbers = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert numbers == list(range(20 - len(numbers), 20))  # the newest lines, in order


def test_file_never_follows_a_symlink(tmp_path: Path) -> None:
    """Neither the log file nor its rotated copy is ever written through a symlink: a link at
    the log's name is refused, and one at ``.1`` is replaced by the rotation."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    canary = tmp_path / "canary"
    canary.write_text("root only\n")
    (run / "mnt.log.1").symlink_to(canary)
    dest = logs.RotatingFile(str(run / "mnt.log"), max_bytes=200)
    for i in range(8):
        dest.emit(record(f"line {i}"))
    dest.close()
    assert (run / "mnt.log.1").is_file() and not (run / "mnt.log.1").is_symlink()
    (run / "mnt.log").unlink()
    (run / "mnt.log").symlink_to(canary)
    with pytest.raises(OSError, match="symbolic link"):
        dest.emit(record("through the link"))
    dest.close()
    assert canary.read_text() == "root only\n"


def test_file_is_refused_in_a_directory_another_user_owns(
    tmp_path: Path, second_user: pwd.struct_passwd
) -> None:
    """The log directory (/run/lockfs) must be root's alone: one that another user owns or
    anyone may write could have the log swapped for a link; nothing is written there."""
    for name, owner, mode in (("owned", second_user.pw_uid, 0o700), ("open", 0, 0o777)):
        run = tmp_path / name
        run.mkdir()
        os.chown(run, owner, -1)
        run.chmod(mode)
        handler = logs.FallbackHandler([logs.RotatingFile(str(run / "mnt.log"))])
        handler.handle(record("not here"))
        handler.close()
        assert list(run.iterdir()) == []
        assert handler.destination() == str(run / "mnt.log")  # it is still the one to try


@pytest.mark.parametrize("where", ["caller", "thread"])
def test_a_bad_log_call_never_raises_and_is_logged(
    fallback: tuple[logs.FallbackHandler, Path], where: str
) -> None:
    """``log.error("%d", "x")`` is a bug in the caller, but it must not end the caller (in the
    invalidation thread that would end reclaim): the handler logs what the call was."""
    handler, _ = fallback
    logger = logging.Logger("lockfs.test.bad_call")  # outside the hierarchy (and pytest's)
    logger.addHandler(handler)
    errors: list[BaseException] = []

    def bad_call() -> None:
        try:
            logger.error("entries: %d", "many")
        except BaseException as exc:
            errors.append(exc)

    if where == "thread":
        thread = threading.Thread(target=bad_call)
        thread.start()
        thread.join(10)
    else:
        bad_call()
    assert errors == []
    line = Path(logs.log_path("/mnt")).read_text().splitlines()[-1]
    assert "ERROR: bad log call 'entries: %d' % ('many',): TypeError" in line, line


def test_a_failing_destination_passes_the_record_on(
    fallback: tuple[logs.FallbackHandler, Path],
) -> None:
    """Whatever a destination raises, the record goes to the next one."""
    handler, _ = fallback

    class Broken(logs.Stderr):
        description = "broken"

        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("broken destination")

    handler.destinations.insert(0, Broken())
    handler.handle(record("passed on"))
    assert Path(logs.log_path("/mnt")).read_text().endswith("ERROR: passed on\n")


def test_a_record_with_undecodable_bytes_reaches_syslog(tmp_path: Path) -> None:
    """A path that is not UTF-8 (its bytes as surrogates) is sent with backslash escapes."""
    server = FakeSocket(tmp_path / "log")
    logs.Syslog(str(server.path)).emit(record(os.fsdecode(b"/locks/\xff")))
    assert server.receive().endswith(b": /locks/\\udcff")
    server.close()


def test_log_path_is_per_mountpoint_and_fits_a_file_name(run_dir: Path) -> None:
    assert logs.log_path("/run/proxmox-backup/locks") == str(
        run_dir / "run-proxmox\\x2dbackup-locks.log"
    )
    name_a, name_b = (os.path.basename(logs.log_path("/" + "a" * 300 + end)) for end in "xy")
    assert name_a != name_b and len(name_a) < 255 and name_a.startswith("aaaa")


@pytest.fixture
def fallback(tmp_path: Path, run_dir: Path) -> Iterator[tuple[logs.FallbackHandler, Path]]:
    handler = logs.FallbackHandler(
        [
            logs.Syslog(str(tmp_path / "log")),
            logs.Journal(str(tmp_path / "journal"), "/mnt"),
            logs.RotatingFile(logs.log_path("/mnt")),
        ]
    )
    yield handler, tmp_path
    handler.close()


def test_every_record_goes_to_the_first_destination_that_takes_it(
    fallback: tuple[logs.FallbackHandler, Path],
) -> None:
    """Syslog missing, then there, then gone (a stopped journal), then back: no record is lost,
    and the handler says where the next one goes and where earlier ones went."""
    handler, tmp_path = fallback
    file = Path(logs.log_path("/mnt"))
    handler.handle(record("one"))  # neither socket exists
    assert file.read_text().endswith("ERROR: one\n")
    assert handler.destination() == str(file)

    syslog = FakeSocket(tmp_path / "log")
    assert handler.destination() == f"syslog ({syslog.path}) (earlier lines also in {file})"
    handler.handle(record("two"))
    assert syslog.receive().endswith(b": two")

    syslog.close()  # syslog goes away while the daemon runs
    journal = FakeSocket(tmp_path / "journal")
    handler.handle(record("three"))
    assert parse_journal(journal.receive())["MESSAGE"] == b"three"
    journal.close()
    handler.handle(record("four"))
    assert file.read_text().splitlines()[-1].endswith("ERROR: four")

    syslog = FakeSocket(tmp_path / "log")  # and comes back
    handler.handle(record("five"))
    assert syslog.receive().endswith(b": five")
    syslog.close()


def test_a_congested_syslog_costs_no_line(fallback: tuple[logs.FallbackHandler, Path]) -> None:
    """A reader that stops reading fills the socket; the send times out (or the datagram is
    too big) and the record goes to the next destination."""
    handler, tmp_path = fallback
    syslog = FakeSocket(tmp_path / "log")
    syslog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    logs_sent = 0
    while True:  # fill the socket until a record is diverted
        handler.handle(record("x" * 200 + f" {logs_sent}"))
        logs_sent += 1
        file = Path(logs.log_path("/mnt"))
        if file.exists():
            break
        assert logs_sent < 10_000
    assert file.read_text().splitlines()[-1].endswith(f" {logs_sent - 1}")
    syslog.close()


def test_missing_socket_errors_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        logs.Syslog(str(tmp_path / "missing")).emit(record("x"))
    assert info.value.errno == errno.ENOENT


# --- A real detached daemon -------------------------------------------------------------------


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
@pytest.mark.parametrize("where", ["file", "journal"])
def test_detached_daemon_without_dev_log_keeps_its_error_lines(
    daemons: Daemons, tmp_path: Path, where: str
) -> None:
    """No /dev/log (as on this test machine; a test hook points it at a missing path, so the
    test means the same elsewhere): `lockfs status` says where the log goes, and an injected
    handler fault's "internal error … failing closed" line and its traceback reach the
    journal's native socket, or without one the mount's file under /run/lockfs, before the
    daemon exits."""
    path = daemons.mountpoint()
    log_file = Path(logs.log_path(str(path)))
    journal = FakeSocket(tmp_path / "journal") if where == "journal" else None
    hooks = f"fault-entry,syslog={tmp_path}/no-dev-log,journal={tmp_path}/journal"
    try:
        result = daemons.lockfs(path, LOCKFS_TEST_HOOKS=hooks)
        assert result.returncode == 0, result.stderr
        pid = daemons.daemon_pid(path)
        status = subprocess.run(
            [sys.executable, "-m", "lockfs", "status", str(path)],
            capture_output=True,
            text=True,
            env=daemon_env(),
            timeout=60,
        )
        if journal:
            places = [f"journal ({tmp_path / 'journal'})"]
        else:  # lockfs status says so while nothing was logged yet
            places = [str(log_file), f"{log_file} (nothing logged yet)"]
        assert any(f"log              {p}\n" in status.stdout for p in places), status.stdout
        with pytest.raises(OSError) as info:
            os.mkdir(path / "__lockfs_fault__")
        assert info.value.errno == errno.ECONNABORTED
        assert daemons.wait_exit(pid) == 70
        if journal is not None:
            fields = parse_journal(journal.receive())
            message = fields["MESSAGE"].decode()
            assert fields["SYSLOG_IDENTIFIER"] == b"lockfs" and fields["PRIORITY"] == b"2"
            assert fields["LOCKFS_MOUNTPOINT"] == os.fsencode(path)
        else:
            message = log_file.read_text()
            assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
        assert "internal error in lookup(parent_inode=1, name=b'__lockfs_fault__'" in message
        assert "failing closed" in message and "Traceback (most recent call last)" in message
        assert "RuntimeError: injected fault in lookup" in message
        assert daemons.run("umount", path).returncode == 0
    finally:
        if journal is not None:
            journal.close()
