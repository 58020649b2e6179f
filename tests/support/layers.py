"""The test layers, as markers set at collection (tests/conftest.py), selected with ``-m``:

``fuse``
    the test mounts real filesystems (needs root and /dev/fuse): it uses the ``fuse_required``
    fixture, directly or through ``make_mount``, ``mnt`` or ``daemons``;
``deploy``
    the test file builds, installs or removes lockfs system-wide (the Debian package,
    /opt/lockfs, systemd units): a file named like one of :data:`DEPLOY_TESTS`. These mount
    too, so they are ``fuse`` as well.

So ``-m "not fuse"`` is the unit layer alone (seconds), ``-m "fuse and not deploy"`` the real
mounts, ``-m deploy`` the deployment tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

#: Test files that deploy lockfs on this machine; a new one only needs a matching name.
DEPLOY_TESTS = ("test_deploy.py", "test_package*.py", "test_switch*.py")
#: The fixture every mounting fixture depends on.
FUSE_FIXTURE = "fuse_required"


def layer_markers(path: Path, fixturenames: Iterable[str]) -> list[str]:
    """The layer markers of a test in file ``path`` that uses ``fixturenames`` (all of them,
    those of its fixtures included)."""
    if any(fnmatch(path.name, pattern) for pattern in DEPLOY_TESTS):
        return ["deploy", "fuse"]
    return ["fuse"] if FUSE_FIXTURE in fixturenames else []
