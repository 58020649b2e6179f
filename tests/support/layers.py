"""The test layers, as markers set at collection (tests/conftest.py), selected with ``-m``:

``fuse``
    the test mounts real filesystems (needs root and /dev/fuse): it uses the ``fuse_required``
    fixture, directly or through ``make_mount``, ``mnt`` or ``daemons``;
``deploy``
    the test is about deploying lockfs: it builds the Debian package or checks the packaging,
    the systemd units and the deployment documents (a file named like one of
    :data:`DEPLOY_TESTS`), or it is a ``system`` test. Nothing of it installs anything on this
    host (build dependencies aside).
``system``
    the test boots Debian 12 and 13 with systemd in containers (a file named like one of
    :data:`SYSTEM_TESTS`; tests/support/containers.py): the package installed, PBS stand-ins,
    reboots. These need root, /dev/fuse, systemd-nspawn and, the first time, the network to
    Debian's archive; they are ``deploy`` and ``fuse`` tests too.

So ``-m "not fuse"`` is the unit layer alone (seconds), ``-m "fuse and not deploy"`` the real
mounts, ``-m "deploy and not system"`` the package build and checks on this host, ``-m system``
the containers.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

#: Test files about deploying lockfs; a new one only needs a matching name.
DEPLOY_TESTS = ("test_deploy.py", "test_package*.py", "test_switch*.py")
#: Test files that boot containers.
SYSTEM_TESTS = ("test_system*.py",)
#: The fixture every mounting fixture depends on.
FUSE_FIXTURE = "fuse_required"


def layer_markers(path: Path, fixturenames: Iterable[str]) -> list[str]:
    """The layer markers of a test in file ``path`` that uses ``fixturenames`` (all of them,
    those of its fixtures included)."""
    if any(fnmatch(path.name, pattern) for pattern in SYSTEM_TESTS):
        return ["system", "deploy", "fuse"]
    if any(fnmatch(path.name, pattern) for pattern in DEPLOY_TESTS):
        return ["deploy", "fuse"]
    return ["fuse"] if FUSE_FIXTURE in fixturenames else []
