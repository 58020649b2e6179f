"""``lockfs switch-over``: what can be checked on this host without mounting.

The switch-over mounts through mount(8), which runs the installed /usr/sbin/lockfs, so the
switch-over itself (carrying move-journal, its refusals, its roll-back, and switching PBS's lock
directory over through the mount unit) runs in Debian 12 and 13 containers:
tests/test_system_package.py and tests/test_system_pbs_host.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_users_are_found_by_inode_after_a_rename(tmp_path: Path) -> None:
    """The check after moving the directory aside sees a file opened before the move."""
    old = tmp_path / "locks"
    (old / "store1").mkdir(parents=True)
    (old / "store1" / "vm-100").touch()
    fd = os.open(old / "store1" / "vm-100", os.O_RDONLY)
    try:
        os.rename(old, tmp_path / "aside")
        # This process is skipped by design (it runs the switch-over): ask from a child.
        found = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, sys; from lockfs.switchover import scan, users_of; "
                "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
                "print('\\n'.join(users_of(scan(fd, sys.argv[1]))))",
                str(tmp_path / "aside"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert f"pid {os.getpid()} " in found.stdout, found.stderr
        assert found.stdout.strip().endswith("/aside/store1/vm-100")
    finally:
        os.close(fd)
