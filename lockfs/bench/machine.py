"""Readings of the machine: /proc/meminfo and slabinfo, a process's CPU and peak RSS, files left
in a tree, and the facts the numbers depend on."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import pwd
import shutil
from typing import Any

from .. import __version__


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def drop_caches(enabled: bool) -> bool:
    """Write back and drop clean caches (page cache, unused dentries and inodes).

    Makes two slab readings comparable: what is left is memory that something pins, such as
    the dentries and inodes of tmpfs files, or FUSE entries the kernel still references.
    """
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def slab_caches() -> dict[str, tuple[int, int]]:
    """``name: (active objects, object size)`` from /proc/slabinfo (empty if unreadable)."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/slabinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1].isdigit():
                out[fields[0]] = (int(fields[1]), int(fields[3]))
    return out


#: Slab caches that hold a file's kernel objects: its dentry and its inode on each filesystem.
KEY_CACHES = ("dentry", "shmem_inode_cache", "fuse_inode")


def slab_reading(drop: bool) -> dict[str, Any]:
    """Slab and SUnreclaim (kB) and per-cache objects, after dropping caches when ``drop``."""
    dropped = drop_caches(drop)
    info = meminfo()
    return {
        "slab_kb": info["Slab"],
        "sunreclaim_kb": info["SUnreclaim"],
        "dropped": dropped,
        "caches": slab_caches(),
    }


def slab_growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Growth between two readings: totals, key caches' objects, top caches by bytes."""
    old, new = before["caches"], after["caches"]
    grown = {
        name: (objs - old.get(name, (0, size))[0]) * size for name, (objs, size) in new.items()
    }
    top = sorted((n for n in grown if grown[n] > 0), key=lambda n: -grown[n])[:8]
    return {
        "slab_kb": after["slab_kb"] - before["slab_kb"],
        "sunreclaim_kb": after["sunreclaim_kb"] - before["sunreclaim_kb"],
        "objects": {
            name: new.get(name, (0, 0))[0] - old.get(name, (0, 0))[0] for name in KEY_CACHES
        },
        "top_caches_kb": {name: grown[name] / 1024 for name in top},
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak(pid: int) -> int | None:
    """Peak resident set size of process ``pid`` since it started (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def count_tree(root: str) -> tuple[int, int]:
    """Files and directories below ``root`` (not counting it); ``(0, 0)`` if it is gone."""
    files = dirs = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs += 1
                stack.append(entry.path)
            else:
                files += 1
    return files, dirs


def remove_contents(root: str) -> None:
    """Delete everything below ``root`` (a tmpfs directory of the bench)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def lock_owner() -> tuple[int, int]:
    """The owner PBS gives its lock files (backup:backup), or ours if there is no such user."""
    try:
        user = pwd.getpwnam("backup")
    except KeyError:
        return os.getuid(), os.getgid()
    return user.pw_uid, user.pw_gid


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on: CPUs, kernel, memory, Python and library versions."""
    cpu = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_total_kb": meminfo()["MemTotal"],
        "python": platform.python_version(),
        "pyfuse3": package_version("pyfuse3"),
        "trio": package_version("trio"),
        "lockfs": __version__,
    }
