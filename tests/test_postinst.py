"""What the package's postinst tells an administrator about the daemons it leaves running,
without installing anything: the script runs with stand-ins for systemctl, dpkg-query and
readlink first on PATH, and a real process plays a running packaged daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

POSTINST = REPO / "debian" / "lockfs.postinst"
NEW_VERSION = "0.2.0"


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[dict[str, str]]:
    """PATH with the stand-ins, and a process whose script "is" /usr/sbin/lockfs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    daemon_script = tmp_path / "packaged-lockfs"
    daemon_script.write_text("import sys\nsys.stdin.read()\n")
    scripts = {
        "systemctl": "exit 0\n",
        "dpkg-query": f"echo {NEW_VERSION}\n",
        # `readlink -f -- SCRIPT`: only the stand-in daemon's script is the packaged lockfs.
        "readlink": f'for last; do :; done\n[ "$last" = {daemon_script} ] && '
        "echo /usr/sbin/lockfs || echo /nonexistent\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    daemon = subprocess.Popen([sys.executable, str(daemon_script)], stdin=subprocess.PIPE)
    try:
        yield {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "DAEMON_PID": str(daemon.pid)}
    finally:
        daemon.kill()
        daemon.wait()


def postinst(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["sh", str(POSTINST), *args], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("old_version", "said"),
    [
        ("0.1.0", "lockfs: upgraded from 0.1.0."),
        (NEW_VERSION, f"lockfs: reinstalled {NEW_VERSION}."),
        ("0.3.0", "lockfs: downgraded from 0.3.0."),
    ],
    ids=["upgrade", "reinstall", "downgrade"],
)
def test_the_change_is_named_as_it_is(
    stand_ins: dict[str, str], old_version: str, said: str
) -> None:
    out = postinst(stand_ins, "configure", old_version)
    assert out.startswith(said + " Running lockfs daemons were left alone"), out
    assert f"\n  pid {stand_ins['DAEMON_PID']} " in out, out
    assert ("upgraded" in out) == (old_version == "0.1.0"), out


def test_a_first_install_says_nothing(stand_ins: dict[str, str]) -> None:
    assert postinst(stand_ins, "configure", "") == ""
