"""Tests whose daemons do not run clean, on purpose.

Run only by tests/test_support.py, in a pytest of their own (a normal run does not collect
this file: its name does not start with ``test_``), to prove that the teardown check fails
each unmarked one with the daemon log's tail, passes the marked ones, and unmounts everything
either way. Each test's name says whether its teardown must fail (``fails``) or pass.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from support import Daemons, MakeMount, Mount, errno_of

FAULT = "__lockfs_fault__"


def test_clean_passes(mnt: Mount) -> None:
    (mnt / "lock").touch()


def test_fault_fails(make_mount: MakeMount) -> None:
    mnt = make_mount(LOCKFS_TEST_HOOKS="fault-entry")
    assert errno_of(os.stat, mnt / FAULT) == errno.ECONNABORTED  # failed closed


@pytest.mark.injects_faults
@pytest.mark.kills_daemon
def test_marked_fault_passes(make_mount: MakeMount) -> None:
    mnt = make_mount(LOCKFS_TEST_HOOKS="fault-entry")
    assert errno_of(os.stat, mnt / FAULT) == errno.ECONNABORTED


def test_kill_fails(mnt: Mount) -> None:
    mnt.hold("plain", mnt / "lock")  # the dead mount is unmounted once teardown kills it
    mnt.proc.kill()
    mnt.proc.wait()


@pytest.mark.kills_daemon
def test_marked_kill_passes(mnt: Mount) -> None:
    mnt.hold("plain", mnt / "lock")
    mnt.proc.kill()
    mnt.proc.wait()


@pytest.mark.kills_daemon
def test_lazy_unmount_fails(mnt: Mount) -> None:
    """This process itself keeps the dead mount busy: only a lazy unmount gets rid of it."""
    os.open(mnt.path, os.O_RDONLY)  # never closed: ends with this pytest
    mnt.proc.kill()
    mnt.proc.wait()


def test_daemonized_fault_fails(daemons: Daemons) -> None:
    path = daemons.mountpoint()
    assert daemons.lockfs(path, LOCKFS_TEST_HOOKS="fault-entry").returncode == 0
    assert errno_of(os.stat, Path(path) / FAULT) == errno.ECONNABORTED
