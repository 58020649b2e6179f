"""lockfs.harness without FUSE: stopping a server that takes its time to exit."""

from __future__ import annotations

import sys
from pathlib import Path

from support import wait_for

from lockfs.harness import ServerProcess

#: A server that, like lockfs, handles the first SIGTERM and then takes a while to exit, with
#: SIGTERM back at its default action (a second one kills it).
SLOW_TO_EXIT = """
import signal, sys, time
stopping = []
def stop(*args):
    stopping.append(signal.signal(signal.SIGTERM, signal.SIG_DFL))
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while not stopping:
    time.sleep(0.01)
time.sleep(1.5)
sys.exit(0)
"""


def test_a_server_whose_mount_is_gone_gets_one_sigterm(tmp_path: Path) -> None:
    """SIGTERM is repeated only while the server's mount is still there (it refused to
    unmount); a server that unmounted is left to finish exiting, not killed by a repeat."""
    log = tmp_path / "server.log"
    server = ServerProcess(
        [sys.executable, "-c", SLOW_TO_EXIT], tmp_path, log, mounted=lambda path: False
    )
    try:
        wait_for(lambda: "ready" in server.log_text(), 10, "the server to start")
        assert server.terminate(10)
        assert server.proc.returncode == 0
    finally:
        server.proc.kill()
        server.proc.wait()
        server.close_log()
