"""Listing is linear (issue 16.4), on a real mount: a READDIR resumes from its cookie without
sorting or scanning the directory, so the daemon's CPU per listed entry does not grow with
the directory."""

from __future__ import annotations

import os
import subprocess

from support import MakeMount, Mount

SMALL, BIG = 4096, 65536
#: How much more CPU per listed entry the big directory may cost than the small one.
FLAT = 2.5
#: How long the daemon may take to exit once unmounted: the kernel forgets 70,000 inodes,
#: which takes seconds on a busy machine (longer than the fixture's own stop allows).
EXIT_TIMEOUT = 120
#: Listings of each directory measured: the same number of entries in both.
BIG_LISTINGS = 1
SMALL_LISTINGS = BIG_LISTINGS * BIG // SMALL


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of process ``pid`` (all its threads) in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


def fill(directory: str, count: int) -> None:
    os.mkdir(directory)
    for i in range(count):
        os.mknod(os.path.join(directory, f"{i:06d}.lck"), 0o644)


def cpu_per_entry(pid: int, directory: str, listings: int, expected: int) -> float:
    """Daemon CPU ticks per listed entry over ``listings`` listings of ``directory``."""
    assert len(os.listdir(directory)) == expected  # warm-up, not measured
    before = cpu_ticks(pid)
    for _ in range(listings):
        assert len(os.listdir(directory)) == expected
    return (cpu_ticks(pid) - before) / (listings * expected)


def test_cpu_per_listed_entry_is_flat(make_mount: MakeMount) -> None:
    """Daemon CPU per entry listing a directory of 65,536 entries is within 2.5 times that of
    one of 4,096 (the same number of entries listed in both). The entries stay (long delays),
    and a few older ones are renamed into the big directory, so its names are not in inode
    order. With a sort of the whole directory per READDIR it was 7 times (5.2 against 38 µs)."""
    mnt = make_mount("reclaim_delay=600,dir_grace=600")
    pid = mnt.status().pid
    small, big = str(mnt / "small"), str(mnt / "big")
    fill(os.path.join(mnt.path, "older"), 64)
    fill(small, SMALL)
    fill(big, BIG - 64)
    for name in os.listdir(mnt / "older"):
        os.rename(mnt / "older" / name, os.path.join(big, f"moved-{name}"))
    small_cost = cpu_per_entry(pid, small, SMALL_LISTINGS, SMALL)
    big_cost = cpu_per_entry(pid, big, BIG_LISTINGS, BIG)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    report = f"{small_cost * tick_us:.2f} µs vs {big_cost * tick_us:.2f} µs per entry"
    unmount(mnt)
    assert small_cost > 0, report
    assert big_cost <= FLAT * small_cost, report


def unmount(mnt: Mount) -> None:
    """Unmount and wait for the daemon to exit cleanly, with time for the forgets."""
    subprocess.run(["umount", str(mnt.path)], check=True, timeout=EXIT_TIMEOUT)
    assert mnt.proc.wait(EXIT_TIMEOUT) == 0
