"""Fixtures of the system tests (tests/test_system_*.py): PBS hosts booted in containers.

``boot_pbs_host(release, *debs)`` boots a fresh container of ``release`` (a throwaway overlay
over the cached root, support.containers) set up as a PBS host (support.pbs_host) with the
given .deb files in /root/debs, and returns it once systemd is up and both PBS stand-ins run
on the plain lock directory. Whatever a test leaves running is killed and the overlay removed
in teardown; the end of the container's journal and console is printed there (pytest shows it
for a failed test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from debian_package import Deb
from support import require_fuse
from support.containers import Release, cached_root, remove_abandoned_overlays
from support.pbs_host import PbsHost

BootPbsHost = Callable[..., PbsHost]


@pytest.fixture(scope="session")
def container_root() -> Callable[[Release], Path]:
    """``container_root(release)``: its cached root (built on first use in the session)."""
    require_fuse()
    remove_abandoned_overlays()
    roots: dict[Release, Path] = {}

    def root(release: Release) -> Path:
        if release not in roots:
            roots[release] = cached_root(release)
        return roots[release]

    return root


@pytest.fixture
def boot_pbs_host(container_root: Callable[[Release], Path]) -> Iterator[BootPbsHost]:
    hosts: list[PbsHost] = []

    def boot(release: Release, *debs: Deb) -> PbsHost:
        host = PbsHost(release, container_root(release), f"lockfs-{release.codename}-{len(hosts)}")
        hosts.append(host)
        host.prepare([deb.path for deb in debs])
        state = host.boot()
        assert state == "running", f"{release} booted {state}: failed {host.failed_units()}"
        host.standins_started_on("tmpfs")
        return host

    yield boot
    for host in hosts:
        try:
            if host.running():
                journal = host.run("journalctl", "-b", "--no-pager", "-n", "150", check=False)
                print(f"--- the end of {host.name}'s journal:\n{journal.stdout}")
            print(f"--- the end of {host.name}'s console:\n{host.console_text()[-3000:]}")
        finally:
            host.destroy()
