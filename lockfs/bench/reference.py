"""Reference servers of ``lockfs-bench``: what the hot and cold cycles cost below lockfs.

The bench runs the hot and cold workloads on tmpfs, on these servers and on lockfs, in the same
run with the same workers, and reports lockfs / server beside lockfs / tmpfs:

* **minimal**: :mod:`lockfs.bench.minimal`, a pyfuse3 + trio server with lockfs's mount
  options and cache timeouts and nothing else: the limit of the framework lockfs runs on;
* **libfuse**: ``libfuse.c`` (package data of :mod:`lockfs.bench`), the same in C on
  libfuse3's low-level API, one thread: the floor of FUSE itself on this machine. The bench
  compiles it when gcc and libfuse3's headers (``pkg-config fuse3``) are there, and leaves it
  out otherwise.

This module holds what the bench needs to know about them: how to start one, which keys of a
run are compared, and the table of its requests by type. The servers are started and measured
by :mod:`lockfs.bench.environment` like its own lockfs daemon.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ..mounts import mounts_at
from .minimal import SUBTYPE

MINIMAL = "minimal"
LIBFUSE = "libfuse"
#: Every reference the bench knows, in the order its columns are printed (cheapest first).
REFERENCES = (LIBFUSE, MINIMAL)
#: The C server's source, installed with the package (pyproject.toml: package data).
LIBFUSE_SOURCE = importlib.resources.files(__package__ or "lockfs.bench") / "libfuse.c"
LIBFUSE_SUBTYPE = "lockfs-libfuse"
#: The request counters the C server keeps in its counts file, in its order (uint64 each).
LIBFUSE_COUNTERS = (
    "lookup", "forget", "getattr", "setattr", "mkdir", "create", "open", "flush", "release",
    "rename", "unlink", "rmdir", "other",
)  # fmt: skip
#: Keys compared as lockfs / reference: the run's times and CPU, and the daemon's figures
#: (lockfs's including its reclaim, which the reference servers do not do).
RATIO_KEYS = (
    "us_per_cycle",
    "latency_us",
    "cycles_per_s",
    "total_cpu_us_per_cycle",
    "daemon_cpu_us_per_cycle",
    "requests_total_per_cycle",
    "daemon_cpu_us_per_request",
)
DAEMON_KEYS = {"daemon_cpu_us_per_cycle", "requests_total_per_cycle", "daemon_cpu_us_per_request"}


def minimal_command(mountpoint: str, dir_grace: float) -> list[str]:
    """The command line of a minimal server with lockfs's directory entry timeout."""
    return [
        sys.executable,
        "-m",
        "lockfs.bench.minimal",
        mountpoint,
        "--dir-entry-timeout",
        str(dir_grace / 2),
    ]


def is_minimal_mounted(path: str) -> bool:
    types = mounts_at(path)
    return bool(types) and types[-1] == f"fuse.{SUBTYPE}"


def build_libfuse(directory: str) -> tuple[str | None, str]:
    """Compile the C server into ``directory``: ``(binary, "")``, or ``(None, why not)``."""
    if not LIBFUSE_SOURCE.is_file():
        return None, f"{LIBFUSE_SOURCE.name} is not installed with this copy of lockfs"
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        return None, "gcc or pkg-config is missing"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        return None, "libfuse3's headers are missing (apt-get install libfuse3-dev)"
    binary = os.path.join(directory, "bench-libfuse")
    with importlib.resources.as_file(LIBFUSE_SOURCE) as source:
        cmd = ["gcc", "-O2", "-o", binary, str(source), *flags.stdout.split()]
        built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        return None, f"compiling {LIBFUSE_SOURCE.name} failed: {built.stderr.strip()[-500:]}"
    return binary, ""


def libfuse_command(binary: str, mountpoint: str, dir_grace: float, counts: str) -> list[str]:
    """The command line of the C server with lockfs's directory entry timeout."""
    return [binary, mountpoint, str(dir_grace / 2), counts]


def is_libfuse_mounted(path: str) -> bool:
    types = mounts_at(path)
    return bool(types) and types[-1] == f"fuse.{LIBFUSE_SUBTYPE}"


def libfuse_status(counts: str, pid: int) -> dict[str, Any]:
    """The C server's counters, read from its counts file, with the keys of lockfs's status
    that the bench uses (the server keeps no table: zeros)."""
    with open(counts, "rb") as f:
        data = f.read(8 * len(LIBFUSE_COUNTERS))
    if len(data) < 8 * len(LIBFUSE_COUNTERS):
        raise OSError(f"{counts}: the C server has not started")
    values = struct.unpack(f"={len(LIBFUSE_COUNTERS)}Q", data)
    requests = {name: n for name, n in zip(LIBFUSE_COUNTERS, values, strict=True) if n}
    table = dict.fromkeys(("nodes", "files", "dirs", "open", "created", "reclaimed"), 0)
    return {"pid": pid, "requests": requests, **table, "invalidations": 0, "rss_bytes": 0}


def daemon_view(figures: dict[str, Any]) -> dict[str, Any]:
    """A run's figures with the daemon's taken from ``with_reclaim`` where there is one."""
    return {**figures, **figures.get("with_reclaim", {})}


def reference_ratios(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{"ratio_<reference>": {key: lockfs / reference}}`` for every reference in ``run``."""
    lockfs = daemon_view(run["lockfs"])
    out = {}
    for name in REFERENCES:
        if name not in run:
            continue
        reference = daemon_view(run[name])
        ratios: dict[str, float | None] = {}
        for key in RATIO_KEYS:
            a, b = reference.get(key), lockfs.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a:
                ratios[key] = b / a
            else:
                ratios[key] = None
        out[f"ratio_{name}"] = ratios
    return out


def request_columns(results: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) of every hot and cold run of reference ``name``."""
    cols = []
    for section in ("hot", "cold"):
        for run in results.get(section, {}).get("runs", []):
            if name in run:
                cols.append((f"{section} {run['procs']}p", run[name]))
    return cols


def columns_of(run: dict[str, Any]) -> Sequence[str]:
    """The reference servers measured in ``run``."""
    return [name for name in REFERENCES if name in run]
