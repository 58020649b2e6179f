"""What the tests share, each written once (and tested in tests/test_support.py).

Tests import these from ``support``; ``conftest`` only defines fixtures (built on them), and no
test imports from it. PBS's lock sequence and chunk lock paths (lockfs.pbs_lock) and
``renameat2`` (lockfs.linux) are in the package, because lockfs-bench uses them on hosts
without tests/.

Waiting and errors (support.expect)
    :func:`wait_for` (on lockfs.harness.wait_until), :func:`errno_of`
Fake time for the node table (support.clocks)
    :class:`FakeClock`, :class:`FakeWallClock`
Processes (support.processes)
    :data:`REPO`, :data:`HELPERS`, :data:`DAEMON_PYTHON`, :func:`daemon_env`,
    :func:`lockfs_command`, :func:`run_lockfs`; :class:`Processes` (``spawn``, ``helper``,
    ``run_helper``, ``hold``, ``attempt``); :func:`release`, :func:`waiters`; the locker's exit
    statuses :data:`EXIT_BUSY`, :data:`EXIT_MODIFIED`
Users (support.users)
    :data:`SECOND_USER`, :func:`ensure_user`, :func:`as_user`
Mounts (support.mounts)
    :func:`require_fuse`, :class:`Mount` (its daemon a lockfs.harness.ServerProcess, as in
    lockfs-bench), :class:`Mounts`, :class:`MakeMount`, :class:`Daemons`
The teardown check (support.daemon_check)
    :class:`Expectations` (from the ``injects_faults`` and ``kills_daemon`` markers),
    :func:`log_problems`, :func:`report`, :func:`fail_on`
Plain lock directories as PBS leaves them (support.lock_dirs)
    :func:`~support.lock_dirs.plain_lock_dir`, :func:`~support.lock_dirs.snapshot`,
    :data:`~support.lock_dirs.JOURNAL`, :data:`~support.lock_dirs.BACKUP_ID`
The test layers (support.layers)
    ``fuse``, ``deploy`` and ``system`` markers: :func:`~support.layers.layer_markers`
Containers of the system tests (imported from their modules, not from here)
    support.containers: Debian 12 and 13 booted with systemd in systemd-nspawn;
    support.pbs_host: such a container set up as a PBS host, with stand-ins of its services
"""

from __future__ import annotations

from .clocks import FakeClock, FakeWallClock
from .daemon_check import Expectations, fail_on, log_problems, report
from .expect import errno_of, wait_for
from .mounts import Daemons, MakeMount, Mount, Mounts, require_fuse
from .processes import (
    DAEMON_PYTHON,
    EXIT_BUSY,
    EXIT_MODIFIED,
    HELPERS,
    REPO,
    Child,
    Processes,
    daemon_env,
    lockfs_command,
    release,
    run_lockfs,
    waiters,
)
from .users import SECOND_USER, as_user, ensure_user

__all__ = [
    "DAEMON_PYTHON",
    "EXIT_BUSY",
    "EXIT_MODIFIED",
    "HELPERS",
    "REPO",
    "SECOND_USER",
    "Child",
    "Daemons",
    "Expectations",
    "FakeClock",
    "FakeWallClock",
    "MakeMount",
    "Mount",
    "Mounts",
    "Processes",
    "as_user",
    "daemon_env",
    "ensure_user",
    "errno_of",
    "fail_on",
    "lockfs_command",
    "log_problems",
    "release",
    "report",
    "require_fuse",
    "run_lockfs",
    "wait_for",
    "waiters",
]
