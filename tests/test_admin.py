"""The admin commands' one error boundary: a clear message and a documented exit status, never
a traceback, whatever the control socket does.

A real mount's control socket is replaced by a test double of the daemon's socket: a real UNIX
socket served by a thread that misbehaves in one way (never answers, hangs up, sends garbage).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Daemons, Mount, run_lockfs

from lockfs.control import RUN_DIR, run_dir_locked, socket_path

COMMANDS = ("status", "locks", "metrics")
TIMEOUT = "0.5"


@contextlib.contextmanager
def daemon_socket_aside(mnt: Mount) -> Iterator[str]:
    """Move the daemon's control socket out of the way (its path is free for the test) and
    put it back afterwards, so that the teardown check can still read the daemon's status."""
    path = socket_path(str(mnt.path))
    os.rename(path, path + ".aside")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rename(path + ".aside", path)


class FakeDaemonSocket:
    """A listening socket at a mount's control socket path whose every connection is handled
    by ``behave(conn)`` in a thread; ``stop`` ends the threads and removes the socket."""

    def __init__(self, path: str, behave: Callable[[socket.socket, threading.Event], None]):
        self.path = path
        self.behave = behave
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(4096)  # the command line
                self.behave(conn, self.stopping)

    def stop(self) -> None:
        self.stopping.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def never_answers(conn: socket.socket, stopping: threading.Event) -> None:
    stopping.wait(30)


def hangs_up(conn: socket.socket, stopping: threading.Event) -> None:
    pass


def sender(data: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def send(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(data)

    return send


@pytest.fixture
def fake_socket(mnt: Mount) -> Iterator[Callable[..., FakeDaemonSocket]]:
    """Replace ``mnt``'s control socket with a fake (the daemon keeps serving the mount; its
    own socket is put back afterwards)."""
    fakes: list[FakeDaemonSocket] = []

    def install(behave: Callable[[socket.socket, threading.Event], None]) -> FakeDaemonSocket:
        fake = FakeDaemonSocket(path, behave)
        fakes.append(fake)
        return fake

    with daemon_socket_aside(mnt) as path:
        yield install
        for fake in fakes:
            fake.stop()


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith("lockfs: "), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("behave", "message"),
    [
        (never_answers, "did not answer within 0.5s: it may be stuck"),
        (hangs_up, "sent an empty reply"),
        (sender(b'{"ok": true, "result": {"mountpoint"'), "sent a truncated reply"),
        (sender(b"<html>no</html>\n"), "sent a reply that is not JSON"),
        (sender(b'["ok"]\n'), "without the protocol's ok field"),
        (sender(b'{"ok": true}\n'), "a reply without a result"),
    ],
    ids=["timeout", "empty", "truncated", "not-json", "not-a-reply", "no-result"],
)
def test_no_proper_answer_is_exit_status_3(
    mnt: Mount,
    fake_socket: Callable[..., FakeDaemonSocket],
    behave: Callable[[socket.socket, threading.Event], None],
    message: str,
) -> None:
    fake_socket(behave)
    for command in COMMANDS:
        result = run_lockfs(command, mnt, "--timeout", TIMEOUT)
        assert_clean_failure(result, 3, message)


def test_a_bad_status_or_node_list_is_exit_status_3(
    mnt: Mount, fake_socket: Callable[..., FakeDaemonSocket]
) -> None:
    fake_socket(sender(b'{"ok": true, "result": [1, 2]}\n'))
    for command in ("status", "metrics"):
        result = run_lockfs(command, mnt, "--timeout", TIMEOUT)
        assert_clean_failure(result, 3, "sent a bad status: a status must be a JSON object")
    assert_clean_failure(run_lockfs("locks", mnt, "--timeout", TIMEOUT), 3, "sent bad node info")


def test_a_refused_command_is_exit_status_1(
    mnt: Mount, fake_socket: Callable[..., FakeDaemonSocket]
) -> None:
    fake_socket(sender(b'{"ok": false, "error": "unknown command"}\n'))
    for command in COMMANDS:
        result = run_lockfs(command, mnt, "--timeout", TIMEOUT)
        assert_clean_failure(result, 1, "refused: unknown command")


def test_missing_or_refusing_socket_is_exit_status_1(mnt: Mount) -> None:
    with daemon_socket_aside(mnt) as path:
        for command in COMMANDS:
            result = run_lockfs(command, mnt, "--timeout", TIMEOUT)
            assert_clean_failure(result, 1, f"no lockfs daemon answers for {mnt.path}")
            assert "No such file or directory" in result.stderr
        # A socket file nobody listens on: connect is refused. The socket directory's lock
        # keeps a daemon that starts meanwhile from removing it as stale.
        with (
            run_dir_locked(RUN_DIR),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound,
        ):
            bound.bind(path)
            for command in COMMANDS:
                result = run_lockfs(command, mnt, "--timeout", TIMEOUT)
                assert_clean_failure(result, 1, "Connection refused")


def test_a_dead_mount_and_a_plain_directory(daemons: Daemons, tmp_path: Path) -> None:
    dead = daemons.dead_mountpoint()
    for command in COMMANDS:
        result = run_lockfs(command, dead, "--timeout", TIMEOUT)
        assert_clean_failure(result, 1, "the mount answers ENOTCONN until an administrator")
    for command in COMMANDS:
        result = run_lockfs(command, tmp_path, "--timeout", TIMEOUT)
        assert_clean_failure(result, 1, f"{tmp_path} is not a lockfs mount")


def test_a_directory_inside_a_mount_names_the_mount(mnt: Mount) -> None:
    """An administrator who points a command at a directory of the lock tree is told which
    mount it belongs to and what to run instead, not that it "is not a lockfs mount"."""
    (mnt / "store1/ns").mkdir(parents=True)
    inside = mnt / "store1/ns"
    for command, instead in (
        ("status", f"lockfs status {mnt.path}"),
        ("metrics", f"lockfs metrics {mnt.path}"),
        ("locks", f"lockfs locks {mnt.path} store1/ns"),
    ):
        result = run_lockfs(command, inside, "--timeout", TIMEOUT)
        assert_clean_failure(
            result, 1, f"{inside} is inside the lockfs mount at {mnt.path}: run `{instead}`"
        )
