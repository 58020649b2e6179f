"""Fixtures, and the markers of the test layers. Everything else the tests share is in
tests/support (tests import from there, never from here).

Every mount is a real lockfs daemon, driven from real processes, stopped and unmounted in
teardown even when the test fails, and then checked: it must have run clean (support.
daemon_check; opt-outs: the ``injects_faults`` and ``kills_daemon`` markers). Tests that need
FUSE fail (never skip) when /dev/fuse or root is missing.

The test layers (``-m "not fuse"``: the unit layer alone) are markers set here at collection;
what they mean and which tests get them: support.layers.
"""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    Daemons,
    Expectations,
    MakeMount,
    Mount,
    Mounts,
    ensure_user,
    fail_on,
    require_fuse,
)
from support.layers import layer_markers

#: Fixtures of the Debian package (built, never installed on this host) and of the system
#: tests' PBS hosts in containers.
pytest_plugins = ["debian_package", "system_hosts"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the test layers (support.layers), before ``-m`` selects by them."""
    for item in items:
        for name in layer_markers(item.path, getattr(item, "fixturenames", ())):
            item.add_marker(getattr(pytest.mark, name))


@pytest.fixture
def fuse_required() -> None:
    """This machine can mount lockfs (root, /dev/fuse, fusermount3); else the test fails."""
    require_fuse()


@pytest.fixture(scope="session")
def second_user() -> pwd.struct_passwd:
    """A real unprivileged user, created with useradd if the machine lacks it."""
    return ensure_user()


@pytest.fixture
def make_mount(
    tmp_path: Path, request: pytest.FixtureRequest, fuse_required: None
) -> Iterator[MakeMount]:
    """Factory: ``make_mount(options, public=False, **env)`` mounts a fresh lockfs under
    ``tmp_path`` (``public``: in /tmp, reachable by every user); checked at teardown."""
    mounts = Mounts(tmp_path)
    yield mounts.make
    fail_on(mounts.stop_all(Expectations.of(request.node)))


@pytest.fixture
def mnt(make_mount: MakeMount) -> Mount:
    """A lockfs with short reclaim delays (0.2 s files, 1 s directories)."""
    return make_mount()


@pytest.fixture
def daemons(
    tmp_path: Path, request: pytest.FixtureRequest, fuse_required: None
) -> Iterator[Daemons]:
    """Daemonized lockfs mounts in ``tmp_path``, unmounted, reaped and checked in teardown."""
    handle = Daemons(tmp_path)
    yield handle
    handle.cleanup()
    fail_on(handle.problems(Expectations.of(request.node)))
